"""The launcher: the process that becomes the program (run as ``python -m veil.runtime.launch``).

It reads a LaunchSpec from a pipe (so no secret appears on a command line), and, when files
are to be injected, enters a private mount namespace, mounts a tmpfs, writes the files
there and bind-mounts each onto its target path. Then it execve()s the program, which keeps
this process's pid. The files exist only in memory and only in the program's mount
namespace; they vanish with it, even if the supervisor is killed.

On any failure before exec it writes one line to the status pipe and exits 127; a
successful exec closes the (close-on-exec) status pipe with nothing written.
"""

import base64
import ctypes
import json
import os
import signal
import sys
from typing import Any

CLONE_NEWNS = 0x00020000
MS_NOSUID = 2
MS_NODEV = 4
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2


class LaunchError(Exception):
    pass


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise LaunchError(f"{what}: {os.strerror(errno)}")


def _inject_files(files: list[dict[str, Any]], staging: str) -> None:
    libc = _libc()
    try:
        _check(libc.unshare(CLONE_NEWNS), "cannot create a private mount namespace")
    except LaunchError as exc:
        raise LaunchError(f"{exc} (injecting files needs root, or CAP_SYS_ADMIN)") from None
    _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "cannot make mounts private")
    _check(
        libc.mount(b"tmpfs", staging.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0700"),
        f"cannot mount a tmpfs on {staging}",
    )
    for index, item in enumerate(files):
        source = os.path.join(staging, str(index))
        fd = os.open(source, os.O_WRONLY | os.O_CREAT | os.O_EXCL, item["mode"])
        try:
            os.write(fd, base64.b64decode(item["content"]))
        finally:
            os.close(fd)
        os.chmod(source, item["mode"])
        _check(
            libc.mount(source.encode(), item["path"].encode(), None, MS_BIND, None),
            f"cannot place injected file {item['path']}",
        )
    # The bind mounts keep the tmpfs alive; the staging mount itself is not needed.
    _check(libc.umount2(staging.encode(), MNT_DETACH), f"cannot detach {staging}")


def launch(spec: dict[str, Any]) -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_DFL)
    if spec["files"]:
        _inject_files(spec["files"], spec["staging"])
    try:
        os.chdir(spec["pwd"])
    except OSError as exc:
        raise LaunchError(f"cannot enter working directory {spec['pwd']}: {exc.strerror}") from None
    try:
        os.execve(spec["executable"], spec["argv"], spec["environment"])
    except OSError as exc:
        raise LaunchError(f"cannot execute {spec['executable']}: {exc.strerror}") from None


def main() -> None:
    spec_fd, status_fd = int(sys.argv[1]), int(sys.argv[2])
    os.set_inheritable(status_fd, False)
    try:
        with os.fdopen(spec_fd, "rb") as spec_pipe:
            spec = json.loads(spec_pipe.read())
        launch(spec)
    except (LaunchError, OSError, ValueError, KeyError) as exc:
        os.write(status_fd, str(exc).encode("utf-8", "replace"))
        os._exit(127)


if __name__ == "__main__":
    main()
