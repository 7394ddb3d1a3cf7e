"""The curated images: unchanged Debian packages made into OCI images the way a team would
build them (mmdebstrap for the packages, a second layer for the application, umoci for the
layout), cached between runs. docs/image.md "Curated images" gives the exact conversion of
each; tests/e2e/test_curated_images.py and bench/image.py run them.

The cache lives in ``$VEIL_TEST_CACHE`` (default ``~/.cache/veil-tests``), one layout per
image, keyed by everything that goes into it (packages, the apt sources, this file). A
fresh machine builds each in 15-30 s, downloading the packages from the host's mirror."""

import fcntl
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.images import umoci

SUITE = "bookworm"
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
MIRROR = "http://deb.debian.org/debian"
#: plaintext markers of the application layers: no blob of a converted image may hold them
MARKERS = {
    "nginx": b"NGINX-PAGE-PLAINTEXT-2b9e61",
    "python": b"PYTHON-APP-PLAINTEXT-c40f7a",
}

NGINX_PAGE = b"<html><body>" + MARKERS["nginx"] + b"</body></html>\n"

PYTHON_APP = """\
import http.server
import os
import pathlib
import sys

MESSAGE = (pathlib.Path(__file__).parent / "message.txt").read_text().strip()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"{MESSAGE} from {sys.prefix}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
print("serving on", server.server_address, flush=True)
server.serve_forever()
"""

#: PostgreSQL's entrypoint, as the official image has one: a cluster made on first start
#: in an empty data directory, then the server as the postgres user
POSTGRES_ENTRYPOINT = """\
#!/bin/sh
set -e
bin=/usr/lib/postgresql/15/bin
as_postgres="setpriv --reuid=postgres --regid=postgres --init-groups"
mkdir -p /run/postgresql "$PGDATA"
chown postgres:postgres /run/postgresql "$PGDATA"
chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  $as_postgres $bin/initdb -D "$PGDATA" -U postgres --encoding=UTF8 --locale=C.UTF-8 \\
    --auth-local=peer --auth-host=trust >/dev/null
fi
exec $as_postgres $bin/postgres -D "$PGDATA" -c listen_addresses=127.0.0.1 "$@"
"""


def _nginx_app(rootfs: Path) -> None:
    page = rootfs / "var/www/html/index.html"
    page.write_bytes(NGINX_PAGE)
    page.chmod(0o644)


def _python_app(rootfs: Path) -> None:
    _chroot(rootfs, "python3", "-m", "venv", "/app/venv")
    (rootfs / "app/app.py").write_text(PYTHON_APP)
    (rootfs / "app/message.txt").write_bytes(MARKERS["python"] + b"\n")


def _postgres_app(rootfs: Path) -> None:
    # Debian's packaging made a cluster under /var/lib/postgresql/15; the image keeps its
    # data in $PGDATA, made on first start (the official image does the same)
    shutil.rmtree(rootfs / "var/lib/postgresql/15")
    shutil.rmtree(rootfs / "etc/postgresql/15")
    data = rootfs / "var/lib/postgresql/data"
    data.mkdir(mode=0o700)
    owner = (rootfs / "var/lib/postgresql").stat()
    os.chown(data, owner.st_uid, owner.st_gid)
    script = rootfs / "usr/local/bin/docker-entrypoint.sh"
    script.write_text(POSTGRES_ENTRYPOINT)
    script.chmod(0o755)


def _chroot(rootfs: Path, *argv: str) -> None:
    result = subprocess.run(["chroot", str(rootfs), *argv], capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(argv)} in the image: {result.stderr}"


def _argv(line: str) -> tuple[str, ...]:
    return tuple(shlex.split(line))


@dataclass(frozen=True)
class Curated:
    """One curated image: its packages, its application layer and its config; ``convert``
    is the conversion docs/image.md documents for it, ``port`` where it serves."""

    name: str
    packages: tuple[str, ...]
    cmd: tuple[str, ...]
    port: int
    convert: tuple[str, ...]
    app: Callable[[Path], None] | None = None
    entrypoint: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    workdir: str = "/"


IMAGES = {
    image.name: image
    for image in (
        Curated(
            "nginx",
            ("nginx",),
            ("nginx", "-g", "daemon off;"),
            80,
            _argv("--encrypt /etc/nginx --encrypt /var/www/html --tmpfs /run --tmpfs /var/lib/nginx"),
            app=_nginx_app,
        ),
        Curated(
            "redis",
            ("redis-server",),
            _argv(
                "setpriv --reuid=redis --regid=redis --init-groups redis-server --dir /var/lib/redis"
                " --appendonly yes --appendfsync always --protected-mode no --bind 127.0.0.1"
            ),
            6379,
            ("--data", "/var/lib/redis"),
        ),
        Curated(
            "postgres",
            ("postgresql-15",),
            (),
            5432,
            ("--data", "/var/lib/postgresql/data"),
            app=_postgres_app,
            entrypoint=("/usr/local/bin/docker-entrypoint.sh",),
            env=("PGDATA=/var/lib/postgresql/data",),
        ),
        Curated(
            "python",
            ("python3", "python3-venv"),
            ("/app/venv/bin/python", "/app/app.py"),
            8000,
            ("--encrypt", "/app"),
            app=_python_app,
            env=("PORT=8000",),
            workdir="/app",
        ),
    )
}

#: bump when the way images are built changes in a way the key does not see
BUILD = "1"


def cache_dir() -> Path:
    return Path(os.environ.get("VEIL_TEST_CACHE") or Path.home() / ".cache" / "veil-tests")


def _key(image: Curated) -> str:
    sources = SOURCES.read_bytes() if SOURCES.exists() else MIRROR.encode()
    parts = [BUILD, SUITE, repr(image.packages), repr(image.cmd), repr(image.entrypoint), repr(image.env)]
    parts += [image.workdir, Path(__file__).read_text(), sources.decode()]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def build(name: str) -> str:
    """``oci:DIR:latest`` of the curated image ``name``, built once and cached."""
    image = IMAGES[name]
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    layout = cache / f"{name}-{_key(image)}"
    with open(cache / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (layout / "index.json").exists():
            for old in cache.glob(f"{name}-*"):
                shutil.rmtree(old)
            with tempfile.TemporaryDirectory(dir=cache) as work:
                _build(image, Path(work))
                (Path(work) / "layout").rename(layout)
    return f"oci:{layout}:latest"


def _build(image: Curated, work: Path) -> None:
    rootfs_tar = work / "rootfs.tar"
    mirror = str(SOURCES) if SOURCES.exists() else MIRROR
    trim = [f"path-exclude=/usr/share/{d}/*" for d in ("man", "doc", "locale")]
    made = subprocess.run(
        ["mmdebstrap", "--mode=root", "--variant=essential", f"--include={','.join(image.packages)}",
         *[f"--dpkgopt={option}" for option in trim], "--aptopt=Acquire::Retries \"3\"",
         SUITE, str(rootfs_tar), mirror],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert made.returncode == 0, f"mmdebstrap {image.name}: {made.stderr[-3000:]}"
    layout, bundle = work / "layout", work / "bundle"
    ref = f"{layout}:latest"
    umoci("init", "--layout", str(layout))
    umoci("new", "--image", ref)
    umoci("unpack", "--image", ref, str(bundle))
    rootfs = bundle / "rootfs"
    subprocess.run(["tar", "-xpf", str(rootfs_tar), "-C", str(rootfs), "--numeric-owner"], check=True)
    rootfs_tar.unlink()
    repack = ["repack", "--refresh-bundle", "--image", ref, str(bundle), "--history.created_by"]
    umoci(*repack, f"mmdebstrap {' '.join(image.packages)}")
    if image.app is not None:
        image.app(rootfs)
        umoci(*repack, f"{image.name} application")
    config = ["--clear", "config.entrypoint", "--clear", "config.cmd"]
    config += [arg for item in image.entrypoint for arg in ("--config.entrypoint", item)]
    config += [arg for item in image.cmd for arg in ("--config.cmd", item)]
    env = ("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", *image.env)
    config += [arg for item in env for arg in ("--config.env", item)]
    umoci("config", "--image", ref, "--config.workingdir", image.workdir, *config)
    umoci("gc", "--layout", str(layout))
    shutil.rmtree(bundle)


def available() -> bool:
    tools = ("mmdebstrap", "umoci", "skopeo", "patchelf", "unshare", "chroot")
    return all(shutil.which(tool) for tool in tools)
