"""The cost of `veil remote run` (docs/remote.md) against the same work done in the clear
over the same SSH connection, in the same run: a blender render of about ten seconds, and a
program reading a 1 GiB input.

veil: encrypt code and input here, create the job's session, send the ciphertext, attest
and run on the host through its LAS (sim), fetch the output, check its tag, decrypt it.
Anchor: `tar | ssh tar x` of the plaintext, `ssh host CMD`, `ssh tar c | tar x` of the
output. Host and submitter are this machine (sshd on loopback), as in the tests.

Run (root, after `make test` installed openssh-server and blender):
  .venv/bin/python bench/remote.py [--samples 400] [--input-mib 1024] [--json]
"""

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.cas_server import Owner, las_on_socket, pinned_owner, start_cas
from tests.sshd import SshServer, start_sshd

TOP = Path(__file__).resolve().parents[1]
EXAMPLE = TOP / "examples" / "remote-blender"
VEIL = f"{sys.executable} -m veil"
HEAVY = """import bpy
scene = bpy.context.scene
scene.cycles.samples = {samples}
scene.render.resolution_x, scene.render.resolution_y = 640, 480
"""


#: ssh options of the anchor (``--plain-cipher``: the cipher veil's upload prefers)
PLAIN_OPTIONS: list[str] = []


def ssh(server: SshServer, command: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={server.known_hosts}", *PLAIN_OPTIONS,
            "-i", str(server.client_key), "-p", str(server.port), "root@127.0.0.1", command]  # fmt: skip
    return subprocess.run(argv, check=True, **kwargs)


def plain(server: SshServer, work: Path, code: Path, input_: Path | None, command: str) -> float:
    """The anchor: plaintext over the same SSH, the same command, the output back."""
    host = work / "plain-host"
    shutil.rmtree(host, ignore_errors=True)
    back = work / "plain-back"
    shutil.rmtree(back, ignore_errors=True)
    back.mkdir()
    started = time.perf_counter()
    ssh(server, f"mkdir -p {host}/output")
    names = ["code", *(["input"] if input_ else [])]
    stage = work / "plain-stage"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    for name, source in zip(names, [code, input_], strict=False):
        (stage / name).symlink_to(source)
    tar = subprocess.Popen(["tar", "-C", str(stage), "-chf", "-", *names], stdout=subprocess.PIPE)
    ssh(server, f"tar -C {host} -xf -", stdin=tar.stdout)
    tar.wait()
    for placeholder in ("code", "input", "output"):
        command = command.replace("{" + placeholder + "}", f"{host}/{placeholder}")
    ssh(server, command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fetched = ssh(server, f"tar -C {host} -cf - output", stdout=subprocess.PIPE)
    subprocess.run(["tar", "-C", str(back), "-xf", "-"], input=fetched.stdout, check=True)
    return time.perf_counter() - started


def with_veil(
    server: SshServer, alice: Owner, cas_url: str, las: Path, work: Path, code: Path, input_: Path | None,
    command: list[str], name: str,
) -> float:  # fmt: skip
    output = work / f"veil-out-{name}"
    shutil.rmtree(output, ignore_errors=True)
    argv = ["remote", "run", "--host", server.url, *server.ssh_options(), "--cas", cas_url,
            "--code", str(code), *(["--input", str(input_)] if input_ else []), "--output", str(output),
            "--name", name, "--tolerate", "sim", "--las", f"unix:{las}",
            "--remote-dir", str(work / "veil-host"), "--remote-veil", VEIL, "--", *command]  # fmt: skip
    started = time.perf_counter()
    result = alice.veil(*argv, env={"VEIL_HOME": str(alice.home / "data")})
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"veil remote run failed:\n{result.stderr}")
    return elapsed


def compare(
    runs: int, case: int, server: SshServer, alice: Owner, cas_url: str, las: Path, work: Path,
    code: Path, input_: Path | None, command: list[str],
) -> dict[str, float]:  # fmt: skip
    """The best of ``runs`` of each way, and their ratio."""
    anchor = min(plain(server, work, code, input_, shlex.join(command)) for _ in range(runs))
    veiled = min(
        with_veil(server, alice, cas_url, las, work, code, input_, command, f"b{case}-{i}")
        for i in range(runs)
    )
    return {"plain_s": round(anchor, 2), "veil_s": round(veiled, 2), "ratio": round(veiled / anchor, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--samples", type=int, default=400, help="Cycles samples of the render (~10 s at 400)"
    )
    parser.add_argument("--input-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=2, help="runs of each; the best is kept")
    parser.add_argument("--cases", default="render,input", help="which of render,input to run")
    parser.add_argument(
        "--plain-cipher",
        default=None,
        help="the anchor's ssh cipher [default: OpenSSH's choice]; e.g. aes256-gcm@openssh.com, "
        "which veil's upload prefers on a CPU with AES instructions",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.plain_cipher:
        PLAIN_OPTIONS.extend(["-c", args.plain_cipher])
    if os.geteuid() != 0 or shutil.which("blender") is None:
        raise SystemExit("run as root with blender and openssh-server installed (make test installs them)")
    with tempfile.TemporaryDirectory(prefix="veil-bench-remote-") as temporary:
        work = Path(temporary)
        cas = start_cas(work)
        server = start_sshd(work / "sshd")
        try:
            with las_on_socket(work / "las.sock", work / "node") as las_socket:
                added = cas.admin.veil("cas", "platform", "add", cas.url, "--las", f"unix:{las_socket}")
                assert added.returncode == 0, added.stderr
                alice = pinned_owner(work, cas, "alice")
                code = work / "code"
                code.mkdir()
                shutil.copy(EXAMPLE / "scene.blend", code)
                (code / "render.py").write_text(
                    (EXAMPLE / "render.py").read_text() + HEAVY.format(samples=args.samples)
                )
                render = ["/usr/bin/blender", "-b", "{code}/scene.blend", "--python", "{code}/render.py",
                          "-o", "{output}/frame_", "-F", "PNG", "-f", "1"]  # fmt: skip
                data = work / "data"
                data.mkdir()
                with open(data / "big.bin", "wb") as out:
                    for _ in range(args.input_mib):
                        out.write(os.urandom(1 << 20))
                scan = ["/bin/sh", "-c", "sha256sum {input}/big.bin > {output}/sum"]
                small = work / "small-code"
                small.mkdir()
                (small / "README").write_text("the program is /usr/bin/sha256sum\n")
                rows: dict[str, Any] = {}
                cases = {
                    "render": ("render", code, None, render),
                    "input": (f"input {args.input_mib} MiB", small, data, scan),
                }
                for label, code_dir, input_dir, command in (cases[c] for c in args.cases.split(",")):
                    rows[label] = compare(args.runs, len(rows), server, alice, cas.url, las_socket, work,
                                          code_dir, input_dir, command)  # fmt: skip
        finally:
            server.stop()
            cas.stop()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'work':<20} {'plain ssh':>10} {'veil remote':>12} {'ratio':>6}")
    for label, row in rows.items():
        print(f"{label:<20} {row['plain_s']:>9.2f}s {row['veil_s']:>11.2f}s {row['ratio']:>5.2f}x")


if __name__ == "__main__":
    main()
