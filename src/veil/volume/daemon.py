"""Running a volume mount in a daemon process, for the CLI and for `veil run`.

``start`` opens (or, if allowed, creates) the volume, forks a daemon that serves it, and
returns once the mount is ready; ``stop`` unmounts, waits for the daemon and returns the
final tag. The storage directory may be the mountpoint itself: the daemon reaches the
storage through a directory descriptor opened before mounting (``/proc/self/fd/N``), so
the program sees plaintext where the storage holds ciphertext.
"""

import ctypes
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from veil.volume.errors import VolumeError
from veil.volume.mount import serve, state_file
from veil.volume.volume import Volume


@dataclass(frozen=True)
class MountedVolume:
    mountpoint: Path
    pid: int
    initial_tag: str


def _storage_handle(storage: Path) -> tuple[int, Path]:
    storage.mkdir(parents=True, exist_ok=True)
    fd = os.open(storage, os.O_RDONLY | os.O_DIRECTORY)
    return fd, Path(f"/proc/self/fd/{fd}")


def start(
    storage: Path,
    mountpoint: Path,
    key: bytes,
    expected_tag: str | None,
    create_mode: str | None = None,
) -> MountedVolume:
    """Mount the volume stored in ``storage`` at ``mountpoint``.

    ``create_mode``: create a fresh volume in ``storage`` (which must be empty) instead of
    opening one. Otherwise a volume whose tag is not ``expected_tag`` is refused before
    anything is mounted.
    """
    fd, root = _storage_handle(storage)
    try:
        volume = (
            Volume.create(root, key, create_mode) if create_mode else Volume.open(root, key, expected_tag)
        )
    except BaseException:
        os.close(fd)
        raise
    mountpoint.mkdir(parents=True, exist_ok=True)
    status = state_file(mountpoint)
    log = status.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    resolved = mountpoint.resolve()
    pid = os.fork()
    if pid == 0:  # the daemon: serves until unmounted, then records the final tag
        os.setsid()
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        try:
            serve(volume, resolved)
        finally:
            os._exit(0)
    initial = volume.tag
    os.close(volume._lock_fd)  # the daemon holds the lock (same open file description)
    os.close(fd)
    deadline = time.time() + 30
    while not os.path.ismount(resolved):
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished or time.time() > deadline:
            raise VolumeError(f"mount failed: {log.read_text().strip()[-500:] or 'no reason given'}")
        time.sleep(0.02)
    return MountedVolume(resolved, pid, initial)


def stop(mountpoint: Path) -> str:
    """Flush, unmount, wait for the daemon; return the final tag."""
    status = state_file(mountpoint)
    if not status.exists():
        raise VolumeError(f"{mountpoint} is not a mounted veil volume")
    pid = int(json.loads(status.read_text())["pid"])
    deadline = time.time() + 30
    while True:
        problem = _unmount(mountpoint)
        if problem is None:
            break
        if "busy" not in problem or time.time() > deadline:
            raise VolumeError(f"cannot unmount {mountpoint}: {problem}")
        time.sleep(0.1)  # a process still has files open there
    deadline = time.time() + 60
    while Path(f"/proc/{pid}").exists() and time.time() < deadline:
        with_child = _reap(pid)
        if with_child:
            break
        time.sleep(0.02)
    final = json.loads(status.read_text())
    if not final.get("final"):
        raise VolumeError(f"the volume daemon did not finish cleanly; last tag {final.get('tag')}")
    status.unlink()
    return str(final["tag"])


def _unmount(mountpoint: Path) -> str | None:
    """Unmount once; None on success, else the reason. fusermount3 where installed; in an
    image without it (docs/image.md), the umount2 system call (the runtime is root there)."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount") or shutil.which("umount")
    if tool:
        command = [tool, "-u", str(mountpoint)] if "fusermount" in tool else [tool, str(mountpoint)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        return None if result.returncode == 0 else result.stderr.strip() or "unmount failed"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(mountpoint), 0) == 0:
        return None
    return os.strerror(ctypes.get_errno()).lower()


def _reap(pid: int) -> bool:
    """Reap the daemon if it is our child; True once it is gone."""
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return finished == pid
