"""The FUSE mount: serves a Volume to unmodified programs (mfusepy over libfuse3).

Every operation runs under one lock; IntegrityError becomes EIO (and a log line naming the
file); OSError keeps its errno. The volume commits on fsync (of a file or a directory),
every ``flush_interval`` seconds when something changed, and at unmount (with a
checkpoint); the current tag is kept in a state file so that ``veil volume unmount`` can
print the final one. Owners, modes and link counts are the volume's; with
``default_permissions`` the kernel enforces them.
"""

import ctypes
import ctypes.util
import errno
import json
import logging
import os
import stat as stat_module
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from veil.volume import session
from veil.volume.errors import IntegrityError
from veil.volume.helper import ReadHelper
from veil.volume.inodes import NAME_MAX, TYPE_OF_MODE
from veil.volume.libfuse import fuse
from veil.volume.reporting import ReportRefused
from veil.volume.status import state_file
from veil.volume.volume import Volume, VolumeFile

log = logging.getLogger(__name__)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h
_FUSE_CAP_SPLICE_WRITE, _FUSE_CAP_WRITEBACK_CACHE = 1 << 7, 1 << 16  # fuse_common.h (libfuse 3)
_FUSE_BUF_IS_FD, _FUSE_BUF_FD_SEEK = 1 << 1, 1 << 2  # fuse_common.h, enum fuse_buf_flags
_FALLOC_FL_KEEP_SIZE = 1  # linux/falloc.h
_UTIME_NOW, _UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2  # sys/stat.h
# The largest read request the mount negotiates (max_read, max_readahead): 252 pages, so that
# a reply with its header fits a pipe of 1 MiB (/proc/sys/fs/pipe-max-size's default, which
# only CAP_SYS_RESOURCE may exceed) and libfuse can splice it (libfuse's rule: the reply
# plus three pages).
_READ_AHEAD_KIB = 1008
P = ParamSpec("P")
R = TypeVar("R")


class VolumeFS(fuse.Operations):  # type: ignore[misc]
    use_ns = True

    def __init__(
        self,
        volume: Volume,
        mountpoint: Path,
        flush_interval: float = 2.0,
        reporter: Callable[[str | None, str], None] | None = None,
    ) -> None:
        self.volume = volume
        #: freshness fsync: every commit's tag goes to the runtime (and the CAS) first
        self.reporter = reporter
        self.reported = volume.base
        self.mountpoint = mountpoint
        self._mutex = threading.RLock()
        self.handles: dict[int, VolumeFile] = {}
        self.next_handle = 1
        self.flush_interval = flush_interval
        self.final_tag: str | None = None
        #: reads and writes refused because the stored data failed authentication: a run
        #: that met one has read tampered data (the runtime then records no new tag)
        self.integrity_errors = 0
        # Computed now: inside the daemon, touching the mountpoint would call into this very
        # filesystem before it answers, and deadlock.
        self.state_path = state_file(mountpoint)
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, daemon=True)
        self._encoding = "utf-8"

    # -- lifecycle --------------------------------------------------------------------

    def init_with_config(self, conn: Any, config: Any) -> None:
        """Negotiate large reads and let the kernel cache data and attributes: every change
        goes through this filesystem (a volume has one writer), so its caches stay right.
        Writes are cached too (write-back): the kernel gathers small writes into large ones
        and sends them before fsync, close and unmount return, so a program's write()
        does not wait for encryption (random 4 KiB writes: 3.5x)."""
        if conn is not None:
            conn.max_readahead = conn.max_read = _READ_AHEAD_KIB << 10
            conn.max_write = 1 << 20
            if conn.capable & _FUSE_CAP_WRITEBACK_CACHE:
                conn.want |= _FUSE_CAP_WRITEBACK_CACHE
            if conn.capable & _FUSE_CAP_SPLICE_WRITE:  # replies from the helper's memory
                conn.want |= _FUSE_CAP_SPLICE_WRITE
        if config is not None:
            config.kernel_cache = 1
            # A read-only volume never changes while mounted: the kernel may keep names,
            # attributes and misses for the whole mount (a Python program's start looks up
            # hundreds of names that do not exist in its venv).
            forever = 86400.0
            config.attr_timeout = forever if self.volume.readonly else 1.0
            config.entry_timeout = forever if self.volume.readonly else 1.0
            config.negative_timeout = forever if self.volume.readonly else 0.0
        self.init("/")

    def init(self, path: str) -> None:
        _read_ahead(self.mountpoint, _READ_AHEAD_KIB)
        self._record(self.volume.tag)
        self._flusher.start()

    def destroy(self, path: str) -> None:
        """Unmounted: close every handle and the volume, record the final tag. A failure is
        written to the log (libfuse would swallow it) and the tag is not marked final."""
        self._stop.set()
        try:
            with self._mutex:
                for handle in list(self.handles.values()):
                    handle.close()
                self.handles.clear()
                self.final_tag = self.volume.close()
                if self.volume.helper is not None:
                    self.volume.helper.close()
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
            raise
        self._record(self.final_tag, final=True)

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.flush_interval):
            with self._mutex:
                if self.volume.dirty and not self.volume.readonly:
                    try:
                        self._commit(durable=False)
                    except OSError as exc:  # a full disk: the next fsync reports it to the program
                        log.warning("periodic commit failed: %s", exc)

    def _commit(self, durable: bool = True) -> str:
        """Commit; with a reporter, have the CAS take the new tag before anyone is told it
        is durable. A refusal stops all writing (EROFS from then on) and is EIO now. A lazy
        commit's tag (the periodic ones) is neither reported nor recorded: it is not durable
        until the next durable commit."""
        tag = self.volume.flush(durable)
        if self.volume.lazy:
            return tag
        if self.reporter is not None and tag != self.reported:
            try:
                self.reporter(self.reported, tag)
            except ReportRefused as exc:
                log.error("the CAS did not take tag %s…: %s; the volume takes no more writes", tag[:16], exc)
                self.volume.readonly = True
                raise OSError(errno.EIO, f"the CAS did not take the volume's new tag: {exc}") from None
            self.reported = self.volume.base = tag
        self._record(tag)
        return tag

    def _record(self, tag: str, final: bool = False) -> None:
        target = self.state_path
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = target.with_suffix(".tmp")
        temporary.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "volume": str(self.volume.root),
                    "tag": tag,
                    "final": final,
                    "mountpoint": str(self.mountpoint),
                    "integrity_errors": self.integrity_errors,
                }
            )
        )
        temporary.replace(target)

    # -- helpers ----------------------------------------------------------------------

    def _call(self, work: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        with self._mutex:
            try:
                return work(*args, **kwargs)
            except (IntegrityError, OSError) as exc:
                raise self._refuse(exc) from None

    def _refuse(self, exc: IntegrityError | OSError) -> Exception:
        if isinstance(exc, IntegrityError):
            self.integrity_errors += 1
        return _fuse_error(exc)

    def _changed(self, path: str | None, inode: Any = None) -> None:
        """A file with several names changed through ``path``: the kernel caches each name
        apart (libfuse's high-level API gives every path its own node), so the other names'
        attributes and pages are dropped."""
        try:
            if inode is None:
                if path is None:
                    return
                inode = self.volume.tree.lookup(path)
        except OSError:
            return
        if inode.is_dir or (inode.nlink < 2 and path is not None):
            return
        context = fuse._libfuse.fuse_get_context()
        handle = context.contents.fuse if context else None
        if not handle:
            return
        for other in self.volume.names_of(inode):
            if other != path:
                _invalidate_path(handle, other.encode(self._encoding, "surrogateescape"))

    def _attrs(self, path: str | None, fh: int | None) -> dict[str, Any]:
        if path is None:  # an open file, whatever its names now (it may have none)
            handle = self.handles.get(fh) if fh is not None else None
            if handle is None:
                raise fuse.FuseOSError(errno.EBADF)
            st = self.volume.stat_inode(handle.inode)
        else:
            st = self.volume.stat(path)
        return {
            "st_ino": st.ino,
            "st_mode": st.st_mode,
            "st_nlink": st.nlink,
            "st_size": st.size,
            "st_uid": st.uid,
            "st_gid": st.gid,
            "st_rdev": st.rdev,
            "st_atime": st.atime_ns,
            "st_mtime": st.mtime_ns,
            "st_ctime": st.ctime_ns,
            "st_blocks": st.blocks,
            "st_blksize": 4096,
        }

    def _new_handle(self, handle: VolumeFile) -> int:
        number = self.next_handle
        self.next_handle += 1
        self.handles[number] = handle
        return number

    # -- operations -------------------------------------------------------------------

    def _path(self, path: str | None, fh: int | None) -> str:
        """FUSE 3 passes no path for calls on an open file (fgetattr, ftruncate)."""
        if path is None:
            if fh is None or fh not in self.handles:
                raise fuse.FuseOSError(errno.EBADF)
            return self.handles[fh].path
        return path

    def getattr(self, path: str | None, fh: int | None = None) -> dict[str, Any]:
        return self._call(self._attrs, path, fh)

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        """Names with their inode numbers (use_ino: a zero d_ino hides an entry from readdir(3))."""
        rows = self._call(self.volume.entries, path)
        return [(name, {"st_ino": ino, "st_mode": mode}, 0) for name, ino, mode in rows]

    def open(self, path: str, flags: int) -> int:
        def work() -> int:
            access = flags & os.O_ACCMODE
            mode = "r" if access == os.O_RDONLY else "r+"
            handle = self.volume.open_file(path, mode)
            if flags & os.O_TRUNC and access != os.O_RDONLY:
                handle.truncate(0)
            return self._new_handle(handle)

        return self._call(work)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        uid, gid, _ = fuse.fuse_get_context()
        return self._call(
            lambda: self._new_handle(self.volume.open_file(path, "x+", mode & 0o7777, uid, gid))
        )

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        # mfusepy registers its read callback because this exists, but libfuse calls
        # read_buf instead when a file system has both: this serves plain mfusepy users only.
        return self._call(lambda: self.handles[fh].pread(size, offset))

    def read_buf(self, path: str | None, bufpp: Any, size: int, offset: int, fh: int) -> int:
        """Answer a read with a buffer that libfuse sends and then frees (``*bufpp``): the
        plaintext stays in the read helper's shared memory, and libfuse splices a large
        reply from there to the kernel (no copy in this process) and copies a small one."""
        helper = self.volume.helper
        if helper is None or size > helper.capacity:  # serve() forks it; max_read bounds size
            log.error("read of %d bytes: no read helper, or more than the mount negotiated", size)
            raise fuse.FuseOSError(errno.EIO)
        with self._mutex:  # _call inlined: this runs once per read request
            try:
                handle = self.handles[fh]
                at, count = handle.pread_shared(size, offset)
            except (IntegrityError, OSError) as exc:
                raise self._refuse(exc) from None
            self.volume.touch_atime(handle.inode)
        ctypes.c_void_p.from_address(ctypes.addressof(bufpp.contents)).value = _bufvec(helper.fd, at, count)
        return 0

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        # Like read: _Fuse calls write_from instead; this serves plain mfusepy users.
        return self._call(lambda: self.handles[fh].pwrite(data, offset))

    def write_from(self, fh: int, address: int, size: int, offset: int) -> int:
        """``write`` without a copy: seal straight from libfuse's request buffer."""
        handle = self.handles.get(fh)
        if handle is None:
            raise fuse.FuseOSError(errno.EBADF)
        written = self._call(handle.pwrite, _buffer(address, size), offset)
        if handle.inode.nlink > 1:
            self._changed(handle.path, handle.inode)
        return written

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        def work() -> int:
            if fh is not None and fh in self.handles:
                self.handles[fh].truncate(length)
            else:
                self.volume.truncate(self._path(path, fh), length)
            return 0

        result = self._call(work)
        self._changed(path)
        return result

    def release(self, path: str, fh: int) -> int:
        def work() -> int:
            handle = self.handles.pop(fh, None)
            if handle is not None:
                handle.close()
            return 0

        return self._call(work)

    def flush(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        """fsync and fdatasync commit everything: one journal for the whole volume."""

        def work() -> int:
            self._commit()
            return 0

        return self._call(work)

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        return self.fsync(path, datasync, fh)

    def mkdir(self, path: str, mode: int) -> int:
        uid, gid, _ = fuse.fuse_get_context()
        self._call(self.volume.mkdir, path, mode & 0o7777, uid, gid)
        return 0

    def symlink(self, path: str, target: str) -> int:
        uid, gid, _ = fuse.fuse_get_context()
        self._call(self.volume.symlink, target, path, uid, gid)
        return 0

    def readlink(self, path: str) -> str:
        return self._call(self.volume.readlink, path)

    def link(self, path: str, existing: str) -> int:
        self._call(self.volume.link, existing, path)
        self._changed(path)
        return 0

    def mknod(self, path: str, mode: int, dev: int) -> int:
        kind = TYPE_OF_MODE.get(stat_module.S_IFMT(mode) or stat_module.S_IFREG)
        if kind is None or kind in ("dir", "symlink"):
            raise fuse.FuseOSError(errno.EINVAL)
        uid, gid, _ = fuse.fuse_get_context()
        self._call(self.volume.mknod, path, kind, mode & 0o7777, dev, uid, gid)
        return 0

    def rmdir(self, path: str) -> int:
        self._call(self.volume.rmdir, path)
        return 0

    def unlink(self, path: str) -> int:
        inode = self._call(self.volume.tree.lookup, path)
        self._call(self.volume.unlink, path)
        if inode.nlink >= 1:
            self._changed(None, inode)
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        self._call(self.volume.rename, old, new, flags)
        return 0

    def chmod(self, path: str, mode: int) -> int:
        self._call(self.volume.chmod, path, mode)
        self._changed(path)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        self._call(self.volume.chown, path, uid, gid)
        self._changed(path)
        return 0

    def utimens(self, path: str, times: tuple[int | None, int | None] | None = None) -> int:
        """Times in ns; None for one kept (UTIME_OMIT); both now without ``times``."""
        if times is None:
            now = time.time_ns()
            times = (now, now)
        self._call(self.volume.utimens, path, times[0], times[1])
        self._changed(path)
        return 0

    def fallocate(self, path: str | None, mode: int, offset: int, size: int, fh: int) -> int:
        """Modes 0 and FALLOC_FL_KEEP_SIZE; punching holes and the rest: EOPNOTSUPP."""
        if mode & ~_FALLOC_FL_KEEP_SIZE:
            raise fuse.FuseOSError(errno.EOPNOTSUPP)
        handle = self.handles.get(fh)
        if handle is None:
            raise fuse.FuseOSError(errno.EBADF)
        self._call(handle.allocate, offset, size, bool(mode & _FALLOC_FL_KEEP_SIZE))
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        """The storage's, less the volume's reserve; names of 255 bytes at most."""
        st = os.statvfs(self.volume.root)
        reserved = self.volume.reserve_size // max(st.f_frsize, 1)
        return {
            "f_bsize": st.f_bsize,
            "f_frsize": st.f_frsize,
            "f_blocks": st.f_blocks,
            "f_bfree": max(0, st.f_bfree - reserved),
            "f_bavail": max(0, st.f_bavail - reserved),
            "f_files": st.f_files,
            "f_ffree": st.f_ffree,
            "f_favail": st.f_favail,
            "f_namemax": NAME_MAX,
        }


def _fuse_error(exc: IntegrityError | OSError) -> Exception:
    """What FUSE answers for a failed operation: EIO for an integrity failure (logged with
    the file's name), the errno of an OSError."""
    if isinstance(exc, IntegrityError):
        log.error("integrity: %s", exc)
    code = errno.EIO if isinstance(exc, IntegrityError) else exc.errno or errno.EIO
    error: Exception = fuse.FuseOSError(code)
    return error


def _buffer(address: int, size: int) -> memoryview:
    """libfuse's buffer at ``address`` as bytes, valid only during the callback that got it."""
    return memoryview((ctypes.c_char * size).from_address(address)).cast("B")


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
_libc.malloc.restype, _libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
# struct fuse_bufvec (fuse_common.h, libfuse 3) with its one struct fuse_buf in place, in the
# native layout: count, idx, off; size, flags, mem, fd, pos; then zeroes for any field a later
# libfuse adds
_BUFVEC = struct.Struct("NNNNiPiq64x")
_BUFVEC_BYTES = ctypes.c_char * _BUFVEC.size


def _bufvec(fd: int, position: int, size: int) -> int:
    """A one-buffer fuse_bufvec, from malloc (libfuse frees it): ``size`` bytes at
    ``position`` of the file ``fd`` (libfuse does not close it)."""
    address = _libc.malloc(_BUFVEC.size)
    if not address:
        raise fuse.FuseOSError(errno.ENOMEM)
    flags = _FUSE_BUF_IS_FD | _FUSE_BUF_FD_SEEK if size else 0
    _BUFVEC_BYTES.from_address(address).raw = _BUFVEC.pack(1, 0, 0, size, flags, 0, fd, position)
    return int(address)


class _Fuse(fuse.FUSE):  # type: ignore[misc]
    """mfusepy's FUSE, whose read and write callbacks avoid copies: reads answer with a
    buffer of veil's choosing (read_buf, above) rather than a returned bytes object, and
    writes are sealed straight from libfuse's request buffer rather than a new bytes
    object; and whose create callback is shorter."""

    def read_buf(self, path: bytes | None, bufpp: Any, size: int, offset: int, fip: Any) -> int:
        return int(self.operations.read_buf(None, bufpp, size, offset, fip.contents.fh))

    def write(self, path: bytes | None, buf: Any, size: int, offset: int, fip: Any) -> int:
        return int(self.operations.write_from(fip.contents.fh, ctypes.addressof(buf.contents), size, offset))

    def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:
        # mfusepy drops renameat2's flags: RENAME_EXCHANGE then became a plain rename that
        # lost the target's data (issue #26)
        decode = self.encoding, self.errors
        return int(self.operations.rename(old.decode(*decode), new.decode(*decode), flags))

    def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
        # mfusepy turns UTIME_NOW and UTIME_OMIT into times far in the future
        times = None
        if buf:
            times = (_nanoseconds(buf.contents.actime), _nanoseconds(buf.contents.modtime))
        name = None if path is None else path.decode(self.encoding, self.errors)
        return int(self.operations.utimens(name, times))

    def create(self, path: bytes, mode: int, fip: Any) -> int:
        # mfusepy's version inspects the signature of operations.create on every call (5% of the
        # time creating small files)
        fip.contents.fh = self.operations.create(path.decode(self.encoding, self.errors), mode)
        return 0


_lib3 = ctypes.CDLL(os.environ["FUSE_LIBRARY_PATH"])
_lib3.fuse_invalidate_path.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_lib3.fuse_invalidate_path.restype = ctypes.c_int


def _invalidate_path(fuse_handle: int, path: bytes) -> None:
    """Drop the kernel's cached attributes and pages of ``path`` (libfuse 3.1)."""
    result = _lib3.fuse_invalidate_path(fuse_handle, path)
    if result not in (0, -errno.ENOENT):
        log.debug("invalidating %r: %s", path, os.strerror(-result))


def _nanoseconds(spec: Any) -> int | None:
    """A struct timespec of utimensat(2): nanoseconds, now for UTIME_NOW, None for UTIME_OMIT."""
    if spec.tv_nsec == _UTIME_OMIT:
        return None
    if spec.tv_nsec == _UTIME_NOW:
        return time.time_ns()
    return int(spec.tv_sec) * 1_000_000_000 + int(spec.tv_nsec)


def _read_ahead(mountpoint: Path, kib: int) -> None:
    """Let the kernel read ahead ``kib`` on this mount: its default (128 KiB) caps read
    requests at 128 KiB, and each request costs the loop as much as decrypting 100 KiB.
    Root only (the knob is in sysfs); otherwise the default stays. Uses mountinfo, not stat:
    stat of the mountpoint would call into this filesystem before it answers."""
    escaped = str(mountpoint).translate({ord(c): f"\\{ord(c):03o}" for c in " \t\n\\"})
    device = None
    try:
        mounts = Path("/proc/self/mountinfo").read_text()
    except OSError:  # no /proc (a bare chroot): the default stays
        return
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == escaped:
            device = fields[2]  # the most recent mount on that path wins
    if device is None:
        return
    try:
        Path(f"/sys/class/bdi/{device}/read_ahead_kb").write_text(str(kib))
    except OSError as exc:
        log.info("read-ahead stays at the kernel default: %s", exc.strerror)


def _keep_large_buffers() -> None:
    """Keep freed megabyte buffers in the heap (glibc). Each request allocates a few 1 MiB
    buffers; by default glibc maps and unmaps each one, and touching fresh pages halved the
    read throughput (measured: 250 against 540 MB/s for 1 MiB reads)."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return
    libc = ctypes.CDLL(libc_name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is not None:
        mallopt(_M_MMAP_THRESHOLD, 32 << 20)
        mallopt(_M_TRIM_THRESHOLD, 128 << 20)


def serve(
    volume: Volume,
    mountpoint: Path,
    foreground_ready: Any = None,
    options: dict[str, Any] | None = None,
    reporter: Callable[[str | None, str], None] | None = None,
) -> str:
    """Mount and serve until unmounted; return the final tag."""
    _keep_large_buffers()
    # Forked now, before libfuse and the flusher start threads: see veil.volume.helper.
    volume.helper = ReadHelper(
        volume.keys, volume.mode == "encrypted", volume.chunk_size, _READ_AHEAD_KIB << 10
    )
    operations = VolumeFS(volume, mountpoint, reporter=reporter)
    # One thread: operations are serialised by the volume lock anyway, and a single-threaded
    # loop avoids GIL and lock hand-offs (measured: 18 us per request against 57 us). The
    # loop is veil.volume.session's, which polls before it sleeps.
    standard, fuse.fuse_main_real = fuse.fuse_main_real, session.main
    try:
        _Fuse(
            operations,
            str(mountpoint),
            foreground=True,
            nothreads=True,
            fsname="veil",
            max_read=_READ_AHEAD_KIB << 10,
            use_ino=True,
            default_permissions=True,
            **({"allow_other": True} if os.getuid() == 0 else {}),
            **(options or {}),
        )
    finally:
        fuse.fuse_main_real = standard
    return operations.final_tag or volume.tag
