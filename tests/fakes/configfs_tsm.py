"""A fake Linux configfs-tsm ``report`` directory, as a real FUSE mount.

It behaves as the kernel does: ``mkdir NAME`` creates an entry whose attribute files exist
at once; writing ``inblob`` bumps ``generation``; ``outblob`` and ``auxblob`` return the
bytes the test gave (real vector evidence). Every inblob written is recorded.
"""

import errno
import os
import stat
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veil.volume.libfuse import fuse

_ATTRS = ("inblob", "outblob", "auxblob", "provider", "generation", "privlevel")
_WRITABLE = ("inblob", "privlevel")


@dataclass
class _Entry:
    inblob: bytes = b""
    generation: int = 0


@dataclass
class FakeTsm(fuse.Operations):  # type: ignore[misc]
    provider: str
    outblob: bytes
    auxblob: bytes = b""
    entries: dict[str, _Entry] = field(default_factory=dict)
    written: list[bytes] = field(default_factory=list)
    use_ns = True

    def _split(self, path: str) -> tuple[str, str]:
        parts = [*(p for p in path.split("/") if p), "", ""]
        return parts[0], parts[1]

    def _content(self, entry: _Entry, attr: str) -> bytes:
        return {
            "inblob": entry.inblob,
            "outblob": self.outblob,
            "auxblob": self.auxblob,
            "provider": f"{self.provider}\n".encode(),
            "generation": f"{entry.generation}\n".encode(),
            "privlevel": b"0\n",
        }[attr]

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        name, attr = self._split(path)
        now = time.time_ns()
        base = {
            "st_uid": os.getuid(),
            "st_gid": os.getgid(),
            "st_atime": now,
            "st_mtime": now,
            "st_ctime": now,
        }
        if not name:
            return {**base, "st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        entry = self.entries.get(name)
        if entry is None or (attr and attr not in _ATTRS):
            raise fuse.FuseOSError(errno.ENOENT)
        if not attr:
            return {**base, "st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2}
        mode = 0o600 if attr in _WRITABLE else 0o400
        return {
            **base,
            "st_mode": stat.S_IFREG | mode,
            "st_nlink": 1,
            "st_size": len(self._content(entry, attr)),
        }

    def readdir(self, path: str, fh: Any) -> list[str]:
        name, _ = self._split(path)
        return [".", "..", *(list(_ATTRS) if name else list(self.entries))]

    def mkdir(self, path: str, mode: int) -> int:
        name, attr = self._split(path)
        if attr or name in self.entries:
            raise fuse.FuseOSError(errno.EEXIST)
        self.entries[name] = _Entry()
        return 0

    def rmdir(self, path: str) -> int:
        name, _ = self._split(path)
        self.entries.pop(name, None)
        return 0

    def open(self, path: str, flags: int) -> int:
        return 0

    def truncate(self, path: str, length: int, fh: Any = None) -> int:
        return 0

    def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
        name, attr = self._split(path)
        return self._content(self.entries[name], attr)[offset : offset + size]

    def write(self, path: str, data: bytes, offset: int, fh: Any) -> int:
        name, attr = self._split(path)
        if attr not in _WRITABLE:
            raise fuse.FuseOSError(errno.EACCES)
        if attr == "inblob":
            entry = self.entries[name]
            entry.inblob = bytes(data)
            entry.generation += 1
            self.written.append(bytes(data))
        return len(data)


class MountedFakeTsm:
    """Mount ``FakeTsm`` at ``mountpoint`` in a thread; unmount on close."""

    def __init__(self, fake: FakeTsm, mountpoint: Path) -> None:
        self.fake, self.mountpoint = fake, mountpoint
        mountpoint.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(
            target=fuse.FUSE, args=(fake, str(mountpoint)), kwargs={"foreground": True}, daemon=True
        )
        self._thread.start()
        deadline = time.time() + 10
        while not os.path.ismount(mountpoint):
            if time.time() > deadline:
                raise RuntimeError("the fake configfs-tsm did not mount")
            time.sleep(0.02)

    def close(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.mountpoint)], check=False, capture_output=True)
        self._thread.join(timeout=10)
