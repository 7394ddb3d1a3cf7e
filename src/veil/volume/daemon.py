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
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil.volume.errors import StaleVolume, VolumeError
from veil.volume.reporting import TagReporter
from veil.volume.status import state_file
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


def fuse_serve() -> Callable[..., str]:
    """veil.volume.mount.serve, loaded only to mount: importing it loads libfuse3, which no
    other command needs (a machine without it runs everything else)."""
    try:
        from veil.volume.mount import serve  # noqa: PLC0415
    except OSError as exc:
        raise VolumeError(f"mounting a volume needs libfuse3 (Debian: apt install fuse3): {exc}") from None
    return serve


def start(
    storage: Path,
    mountpoint: Path,
    key: bytes,
    expected_tag: str | None,
    create_mode: str | None = None,
    reports: socket.socket | None = None,
    readonly: bool = False,
    root_owner: tuple[int, int, int] | None = None,
) -> MountedVolume:
    """Mount the volume stored in ``storage`` at ``mountpoint``.

    ``create_mode``: create a fresh volume in ``storage`` (which must be empty) instead of
    opening one. Otherwise a volume whose history does not hold ``expected_tag`` is refused
    before anything is mounted. ``reports``: the daemon's end of veil.volume.reporting's
    pair: every commit's tag is reported there before fsync returns. ``readonly``: opened and
    mounted read-only (writes get EROFS), at exactly ``expected_tag`` (not a later state).
    ``root_owner``: (uid, gid, mode) of a created volume's root (the directory it covers).
    """
    serve = fuse_serve()
    fd, root = _storage_handle(storage)
    try:
        if create_mode:
            volume = Volume.create(root, key, create_mode)
            if root_owner is not None:
                uid, gid, mode = root_owner
                volume.chown("/", uid, gid)
                volume.chmod("/", mode)
                volume.flush()
        else:
            volume = Volume.open(root, key, expected_tag, readonly=readonly)
            if readonly and expected_tag is not None and volume.tag != expected_tag:
                volume.close()
                raise StaleVolume(
                    f"{root}: a read-only volume must be at the tag the CAS holds, {expected_tag[:16]}…, "
                    f"not {volume.tag[:16]}… (written since it was shipped)"
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
        code = 1
        try:
            serve(
                volume,
                resolved,
                options={"ro": True} if readonly else None,
                reporter=TagReporter(reports) if reports is not None else None,
            )
            code = 0
        except BaseException:
            traceback.print_exc()  # into the log, which stop() quotes
        finally:
            sys.stderr.flush()
            os._exit(code)
    initial = volume.tag
    volume._release_files()  # the daemon has its own copies of the journal's and files' descriptors
    os.close(volume._lock_fd)  # the daemon holds the lock (same open file description)
    os.close(fd)
    deadline = time.time() + 30
    pause = 0.001  # a mount is usually ready within milliseconds; every container start waits
    while not os.path.ismount(resolved):
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished or time.time() > deadline:
            raise VolumeError(f"mount failed: {log.read_text().strip()[-500:] or 'no reason given'}")
        time.sleep(pause)
        pause = min(pause * 2, 0.02)
    return MountedVolume(resolved, pid, initial)


class VolumeInUse(VolumeError):
    """A process still has files open on the mount (or its working directory there)."""


def stop(mountpoint: Path, wait: float = 0.0) -> str:
    """Flush, unmount, wait for the daemon; return the final tag. A mount in use is
    refused at once (VolumeInUse), or retried for ``wait`` seconds."""
    return stop_counting(mountpoint, wait)[0]


def stop_counting(mountpoint: Path, wait: float = 0.0) -> tuple[str, int]:
    """``stop``, and how many reads or writes met data that failed authentication while
    it was mounted (a run that met one read tampered data)."""
    final = _stop(mountpoint, wait, lazy=False)
    assert final is not None
    return str(final["tag"]), int(final.get("integrity_errors", 0))


def detach(mountpoint: Path) -> str | None:
    """Lazy unmount: detach the mount now, in use or not; the daemon flushes and records
    the final tag when the last file there is closed. The final tag, or None while in use."""
    final = _stop(mountpoint, 0.0, lazy=True)
    return None if final is None else str(final["tag"])


def _stop(mountpoint: Path, wait: float, lazy: bool) -> dict[str, Any] | None:
    status = state_file(mountpoint)
    if not status.exists():
        raise VolumeError(f"{mountpoint} is not a mounted veil volume")
    pid = int(json.loads(status.read_text())["pid"])
    deadline = time.time() + wait
    while True:
        problem = _unmount(mountpoint, lazy)
        if problem is None:
            break
        if "busy" not in problem:
            raise VolumeError(f"cannot unmount {mountpoint}: {problem}")
        if time.time() >= deadline:
            raise VolumeInUse(
                f"{mountpoint} is in use: a process has a file or its working directory there "
                f"(`fuser -vm {mountpoint}` names it); close it and unmount again, or unmount "
                "with --lazy to detach now and finish when the last file is closed"
            )
        time.sleep(0.1)
    if lazy and not _finished(status):
        return None
    deadline = time.time() + 60
    while Path(f"/proc/{pid}").exists() and time.time() < deadline:
        with_child = _reap(pid)
        if with_child:
            break
        time.sleep(0.02)
    final = json.loads(status.read_text())
    if not final.get("final"):
        log = status.with_suffix(".log")
        reason = log.read_text(errors="replace").strip()[-800:] if log.exists() else ""
        raise VolumeError(
            f"the volume daemon did not finish cleanly; last tag {final.get('tag')}"
            + (f"; its log ends with:\n{reason}" if reason else "")
        )
    status.unlink()
    return dict(final)


def _finished(status: Path, seconds: float = 5.0) -> bool:
    """Whether the daemon recorded its final tag within ``seconds`` (after a lazy unmount
    of a mount nobody uses any more it does so at once)."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if json.loads(status.read_text()).get("final"):
            return True
        time.sleep(0.05)
    return False


def _unmount(mountpoint: Path, lazy: bool = False) -> str | None:
    """Unmount once; None on success, else the reason. fusermount3 where installed; in an
    image without it (docs/image.md), the umount2 system call (the runtime is root there)."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount") or shutil.which("umount")
    if tool:
        if "fusermount" in tool:
            command = [tool, "-u", *(["-z"] if lazy else []), str(mountpoint)]
        else:
            command = [tool, *(["-l"] if lazy else []), str(mountpoint)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        return None if result.returncode == 0 else result.stderr.strip() or "unmount failed"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.umount2(os.fsencode(mountpoint), _MNT_DETACH if lazy else 0) == 0:
        return None
    return os.strerror(ctypes.get_errno()).lower()


_MNT_DETACH = 2  # sys/mount.h


def _reap(pid: int) -> bool:
    """Reap the daemon if it is our child; True once it is gone."""
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return finished == pid
