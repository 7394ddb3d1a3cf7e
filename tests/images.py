"""Small OCI images built with umoci for the image tests, and running an unpacked image
with chroot in a private mount namespace (the test's container engine)."""

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

BUSYBOX = "/usr/bin/busybox"
APPLETS = ["sh", "cat", "echo", "wc", "ls", "date", "env", "mkdir", "stat", "su", "sleep"]
#: the user a daemon drops to (nginx, PostgreSQL do): uid and gid 33, as Debian's www-data
WWW = 33
#: an owner /etc/passwd of the image does not name (the converter warns)
STRAY = 4242

RUN_SCRIPT = """#!/bin/sh
echo "secret: $(cat /app/data/secret.txt)"
echo "token: $API_TOKEN"
echo "greeting: $GREETING"
echo "pwd: $(pwd)"
echo "run" >> /app/state/runs.txt
echo "runs: $(wc -l < /app/state/runs.txt)"
echo "code: $( { echo x > /app/data/new.txt; } 2>/dev/null && echo writable || echo read-only)"
echo "through the symlink: $(cat /app/data/current)"
echo "library: $(cat /app/data/lib/libx.so) links=$(stat -c %h /app/data/lib/libx.so.1)"
echo "as www-data: $(su -s /bin/sh -c 'cat /app/data/www/index.html' www-data)"
echo "www-data and the secret: $(su -s /bin/sh -c 'cat /app/data/secret.txt 2>&1' www-data)"
echo "run" >> /var/log/app.log
echo "log lines: $(wc -l < /var/log/app.log)"
"""

MARKERS = {
    "old": b"OLD-PLAINTEXT-3f1c9e",
    "v1": b"SECRET-V1-PLAINTEXT-8a7d2b",
    "v2": b"SECRET-V2-PLAINTEXT-5e4c1a",
    "www": b"WWW-PAGE-PLAINTEXT-71b0c4",
}


def umoci(*args: str) -> None:
    result = subprocess.run(["umoci", *args], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"umoci {' '.join(args)}: {result.stderr}"


def build_app_image(root: Path) -> str:
    """``oci:DIR:app`` with three layers: busybox and data (v1, an old file, a symlink, a
    library directory with a hard link), then the
    data changed (v2, old file deleted), then the app script alone."""
    layout = root / "source"
    bundle = root / "bundle"
    umoci("init", "--layout", str(layout))
    umoci("new", "--image", f"{layout}:app")
    umoci("unpack", "--image", f"{layout}:app", str(bundle))
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir()
    shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    data = rootfs / "app" / "data"
    data.mkdir(parents=True)
    (data / "old.txt").write_bytes(MARKERS["old"] + b"\n")
    (data / "secret.txt").write_bytes(MARKERS["v1"] + b"\n")
    (data / "secret.txt").chmod(0o600)  # root's only
    (data / "current").symlink_to("secret.txt")  # a venv or a library tree has these
    (data / "lib").mkdir()
    (data / "lib" / "libx.so.1").write_bytes(b"LIBX\n")
    # a daemon's files: its user reads them through the mount, nobody else's
    (rootfs / "var" / "log").mkdir(parents=True)  # written at run time: a tmpfs by default
    (rootfs / "app" / "state").mkdir(parents=True)  # persistent data: a volume made at first use
    etc = rootfs / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(
        f"root:x:0:0:root:/root:/bin/sh\nwww-data:x:{WWW}:{WWW}:www:/var/www:/bin/sh\n"
    )
    (etc / "group").write_text(f"root:x:0:\nwww-data:x:{WWW}:\n")
    www = data / "www"
    www.mkdir(mode=0o750)
    (www / "index.html").write_bytes(MARKERS["www"] + b"\n")
    for path, mode in ((www, 0o750), (www / "index.html", 0o640)):
        os.chown(path, WWW, WWW)
        path.chmod(mode)
    (data / "stray.txt").write_bytes(b"owned by a user the image does not have\n")
    os.chown(data / "stray.txt", STRAY, STRAY)
    os.link(data / "lib" / "libx.so.1", data / "lib" / "libx.so.1.0")
    (data / "lib" / "libx.so").symlink_to("libx.so.1")
    umoci("repack", "--refresh-bundle", "--image", f"{layout}:app", str(bundle))
    (data / "old.txt").unlink()
    (data / "secret.txt").write_bytes(MARKERS["v2"] + b"\n")
    umoci("repack", "--refresh-bundle", "--image", f"{layout}:app", str(bundle))
    script = rootfs / "app" / "run.sh"
    script.write_text(RUN_SCRIPT)
    script.chmod(0o755)
    umoci("repack", "--refresh-bundle", "--image", f"{layout}:app", str(bundle))
    umoci(
        "config",
        "--image",
        f"{layout}:app",
        "--config.entrypoint",
        "/bin/sh",
        "--config.cmd",
        "/app/run.sh",
        "--config.env",
        "GREETING=hello from the image",
        "--config.workingdir",
        "/app",
    )
    shutil.rmtree(bundle)
    return f"oci:{layout}:app"


def with_entrypoint(source: str, root: Path, entrypoint: list[str]) -> str:
    """A copy of the ``oci:DIR:TAG`` image ``source`` whose entrypoint is ``entrypoint``
    (and no command): a program that lives in a path the conversion protects."""
    _, directory, tag = source.split(":")
    layout = root / "entry"
    shutil.copytree(directory, layout)
    args = [arg for item in entrypoint for arg in ("--config.entrypoint", item)]
    umoci("config", "--image", f"{layout}:{tag}", "--clear", "config.cmd", *args)
    return f"oci:{layout}:{tag}"


def blobs_text(layout: Path) -> list[bytes]:
    """Every blob of a layout, decompressed where it is gzip."""
    found = []
    for blob in sorted((layout / "blobs" / "sha256").iterdir()):
        data = blob.read_bytes()
        found.append(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
    return found


def unpack(layout: Path, tag: str, bundle: Path) -> Path:
    umoci("unpack", "--image", f"{layout}:{tag}", str(bundle))
    return bundle / "rootfs"


def _chroot_command(
    bundle: Path, env: dict[str, str], files: dict[str, bytes]
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that start the image's entrypoint (from umoci's
    config.json) chrooted into the rootfs, in a private mount namespace with /dev and
    /proc, the way an engine would; ``files`` are written into the rootfs first."""
    config = json.loads((bundle / "config.json").read_text())
    rootfs = bundle / "rootfs"
    for name, content in files.items():
        target = rootfs / name.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    process_env = dict(item.split("=", 1) for item in config["process"]["env"])
    process_env.update(env)
    script = (
        'set -e; mount --rbind /dev "$1/dev"; mount -t proc proc "$1/proc"; root="$1"; shift; '
        'exec chroot "$root" "$@"'
    )
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", str(rootfs)]
    return argv + config["process"]["args"], process_env


def run_in_chroot(
    bundle: Path, env: dict[str, str], files: dict[str, bytes]
) -> subprocess.CompletedProcess[str]:
    """Run the image to its end (see ``_chroot_command``)."""
    argv, process_env = _chroot_command(bundle, env, files)
    return subprocess.run(argv, env=process_env, capture_output=True, text=True, timeout=180, check=False)


def start_in_chroot(
    bundle: Path, env: dict[str, str], files: dict[str, bytes], log: Path
) -> "subprocess.Popen[bytes]":
    """Start the image in the background (a server), its output going to ``log``. Every
    step execs the next, so the process is the image's entrypoint: signals reach it."""
    argv, process_env = _chroot_command(bundle, env, files)
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=process_env, stdout=out, stderr=subprocess.STDOUT)


def replace_in_layer(layout: Path, tag: str, member: str, content: bytes) -> None:
    """Change one file of one layer and re-seal the image (new blob, diff id, config,
    manifest and tag): a well-formed image whose content is not what was converted."""
    index = json.loads((layout / "index.json").read_text())
    entry = next(
        m for m in index["manifests"] if m["annotations"]["org.opencontainers.image.ref.name"] == tag
    )
    blob = layout / "blobs" / "sha256"
    manifest = json.loads((blob / entry["digest"].split(":")[1]).read_bytes())
    config = json.loads((blob / manifest["config"]["digest"].split(":")[1]).read_bytes())
    for position, layer in enumerate(manifest["layers"]):
        raw = gzip.decompress((blob / layer["digest"].split(":")[1]).read_bytes())
        out = io.BytesIO()
        with tarfile.open(fileobj=io.BytesIO(raw)) as source:
            if member not in source.getnames():
                continue
            with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as target:
                for info in source.getmembers():
                    if info.name == member:
                        info.size = len(content)
                        target.addfile(info, io.BytesIO(content))
                    else:
                        target.addfile(info, source.extractfile(info) if info.isreg() else None)
        plain = out.getvalue()
        packed = gzip.compress(plain, mtime=0)
        digest = hashlib.sha256(packed).hexdigest()
        (blob / digest).write_bytes(packed)
        manifest["layers"][position] = {**layer, "digest": f"sha256:{digest}", "size": len(packed)}
        config["rootfs"]["diff_ids"][position] = "sha256:" + hashlib.sha256(plain).hexdigest()
        break
    else:
        raise AssertionError(f"no layer holds {member}")
    config_bytes = json.dumps(config).encode()
    config_digest = hashlib.sha256(config_bytes).hexdigest()
    (blob / config_digest).write_bytes(config_bytes)
    manifest["config"] = {
        **manifest["config"],
        "digest": f"sha256:{config_digest}",
        "size": len(config_bytes),
    }
    manifest_bytes = json.dumps(manifest).encode()
    manifest_digest = hashlib.sha256(manifest_bytes).hexdigest()
    (blob / manifest_digest).write_bytes(manifest_bytes)
    entry.update({"digest": f"sha256:{manifest_digest}", "size": len(manifest_bytes)})
    (layout / "index.json").write_text(json.dumps(index))


def available() -> bool:
    return all(shutil.which(tool) for tool in ("umoci", "skopeo", "patchelf", "unshare", "chroot")) and (
        os.path.exists(BUSYBOX)
    )
