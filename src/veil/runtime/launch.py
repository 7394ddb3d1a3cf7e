"""The launcher: the process that becomes the program (run as ``python -m veil.runtime.launch``).

It reads a LaunchSpec from a pipe (so no secret appears on a command line), and, when files
are to be injected or scratch directories made, enters a private mount namespace. Each
scratch directory (``tmpfs``) gets a tmpfs holding a copy of what it held (owners, modes,
links), so that what the program writes there never reaches the disk or the measured
root. Injected files are written to a tmpfs and bind-mounted each onto its target path.
Then it execve()s the program, which keeps this process's pid. All of it exists only in
memory and only in the program's mount namespace; it vanishes with it, even if the
supervisor is killed.

On any failure before exec it writes one line to the status pipe and exits 127; a
successful exec closes the (close-on-exec) status pipe with nothing written.
"""

import base64
import ctypes
import errno
import json
import os
import signal
import stat
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
        code = ctypes.get_errno()
        raise LaunchError(f"{what}: {os.strerror(code)}")


def _private_namespace() -> None:
    libc = _libc()
    try:
        _check(libc.unshare(CLONE_NEWNS), "cannot create a private mount namespace")
    except LaunchError as exc:
        raise LaunchError(
            f"{exc} (injecting files and scratch directories need root, or CAP_SYS_ADMIN)"
        ) from None
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0:
        return
    if ctypes.get_errno() != errno.EINVAL:
        _check(-1, "cannot make mounts private")
    # "/" is not a mount point: a chroot (engines pivot_root, and "/" is one). The mount
    # holding it cannot be named from here; go on only if no mount in sight propagates
    # (a chroot inside a private namespace, `unshare --propagation private`), so that no
    # tmpfs or injected file shows up in another namespace.
    with open("/proc/self/mountinfo") as table:
        shared = shared_mounts(table.read())
    if shared:
        raise LaunchError(
            "/ is not a mount point (a chroot?) and mounts here propagate to other namespaces "
            f"({', '.join(shared[:3])}): run in a private mount namespace or under an engine"
        )


def shared_mounts(mountinfo: str) -> list[str]:
    """The mount points of /proc/self/mountinfo's lines whose optional fields say
    ``shared:N`` (a mount made under them shows up in other namespaces too)."""
    return [line.split()[4] for line in mountinfo.splitlines() if "shared:" in line.split(" - ")[0]]


def _scratch(paths: list[str]) -> None:
    """A tmpfs on each existing directory of ``paths``, holding a copy of its content (read
    through a descriptor of the directory it covers; the program has not started yet)."""
    libc = _libc()
    for path in sorted(paths, key=lambda p: p.count("/")):
        try:
            covered = os.open(path, os.O_RDONLY | os.O_DIRECTORY)  # a link to one (/var/run): its target
        except FileNotFoundError:
            continue  # nothing to hide: the image has no such directory
        except NotADirectoryError:
            raise LaunchError(f"cannot make scratch space of {path}: not a directory") from None
        try:
            info = os.fstat(covered)
            options = f"mode={stat.S_IMODE(info.st_mode):o},uid={info.st_uid},gid={info.st_gid}".encode()
            _check(
                libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options),
                f"cannot mount a tmpfs on {path}",
            )
            _copy_tree(covered, path)
        finally:
            os.close(covered)


def _copy_tree(source: int, target: str) -> None:
    """What the directory open as ``source`` holds into ``target`` (a directory that
    exists), as ``cp -a`` would: directories, files, symbolic links and FIFOs with owners,
    modes and times."""
    for entry in os.scandir(source):
        name, there = entry.name, os.path.join(target, entry.name)
        info = entry.stat(follow_symlinks=False)
        if stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(name, dir_fd=source), there)
        elif stat.S_ISDIR(info.st_mode):
            os.mkdir(there, 0o700)
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=source)
            try:
                _copy_tree(inner, there)
            finally:
                os.close(inner)
        elif stat.S_ISREG(info.st_mode):
            with (
                os.fdopen(os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=source), "rb") as src,
                open(there, "xb") as dst,
            ):
                while block := src.read(1 << 20):
                    dst.write(block)
        elif stat.S_ISFIFO(info.st_mode):
            os.mkfifo(there)
        else:
            continue  # sockets and devices: a program makes its own
        os.lchown(there, info.st_uid, info.st_gid)
        if not stat.S_ISLNK(info.st_mode):
            os.chmod(there, stat.S_IMODE(info.st_mode))
        os.utime(there, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def _inject_files(files: list[dict[str, Any]], staging: str) -> None:
    libc = _libc()
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
    if spec["files"] or spec.get("tmpfs"):
        _private_namespace()
    if spec.get("tmpfs"):
        _scratch(spec["tmpfs"])
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
