"""The mount's request loop: libfuse's, except that it polls before it sleeps.

libfuse's own loop (``fuse_main_real`` → ``fuse_loop``) blocks in ``read(/dev/fuse)`` as
soon as no request is queued. This one reads ``/dev/fuse`` without blocking and, when it
finds nothing, keeps asking for ``spin.REQUEST_NS`` before it sleeps in ``select``: a
program's next request usually comes within that window, and a sleeping vCPU would take
tens of microseconds to wake for it (why, and the knob: veil.volume.spin).

The rest is ``fuse_main_real``'s (libfuse 3, lib/helper.c): ``fuse_new``, ``fuse_mount``,
the signal handlers (SIGINT, SIGTERM and SIGHUP end the loop), then unmount and
``fuse_destroy``, which calls the file system's ``destroy``. Installed by ``serve`` in place
of mfusepy's call to ``fuse_main_real``, with the same arguments.
"""

import ctypes
import errno
import os
import select
from typing import Any

from veil.volume import spin
from veil.volume.libfuse import fuse

_SLEEP = 0.5  # seconds a sleep lasts at most: libfuse's signal handlers only flag the session


class _Args(ctypes.Structure):  # struct fuse_args (fuse_opt.h)
    _fields_ = [
        ("argc", ctypes.c_int),
        ("argv", ctypes.POINTER(ctypes.c_char_p)),
        ("allocated", ctypes.c_int),
    ]


_lib = fuse._libfuse
_lib.fuse_new_31.restype = ctypes.c_void_p
_lib.fuse_new_31.argtypes = [ctypes.POINTER(_Args), ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_lib.fuse_mount.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_lib.fuse_get_session.restype = ctypes.c_void_p
_lib.fuse_get_session.argtypes = [ctypes.c_void_p]
for _name in ("fuse_unmount", "fuse_destroy"):
    getattr(_lib, _name).argtypes = [ctypes.c_void_p]
    getattr(_lib, _name).restype = None
for _name in ("fuse_set_signal_handlers", "fuse_session_fd", "fuse_session_exited"):
    getattr(_lib, _name).argtypes = [ctypes.c_void_p]
_lib.fuse_remove_signal_handlers.argtypes = [ctypes.c_void_p]
_lib.fuse_remove_signal_handlers.restype = None
_lib.fuse_session_receive_buf.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_lib.fuse_session_process_buf.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
_lib.fuse_session_process_buf.restype = None
_lib.fuse_opt_free_args.argtypes = [ctypes.POINTER(_Args)]
_lib.fuse_opt_free_args.restype = None
_libc = ctypes.CDLL(None)
_libc.free.argtypes, _libc.free.restype = [ctypes.c_void_p], None
# struct fuse_buf (fuse_common.h): size, flags, mem, fd, pos; room for fields a later libfuse adds
_BUF_BYTES, _BUF_MEM = 128, 16


def main(argc: int, argv: Any, operations: Any, size: int, user_data: Any) -> int:
    """``fuse_main_real(argc, argv, operations, size, user_data)`` as mfusepy calls it: argv
    is the program name, the flags (``-f``, ``-s``: this loop is single-threaded and in the
    foreground anyway), ``-o`` and its options, and the mountpoint last."""
    words = [argv[i] for i in range(argc)]
    mountpoint, kept = words[-1], [w for w in words[:-1] if w not in (b"-f", b"-s")]
    args = _Args(len(kept), (ctypes.c_char_p * len(kept))(*kept), 0)
    handle = _lib.fuse_new_31(ctypes.byref(args), operations, size, user_data)
    _lib.fuse_opt_free_args(ctypes.byref(args))
    if not handle:
        return 1
    try:
        if _lib.fuse_mount(handle, mountpoint) != 0:
            return 2
        session = _lib.fuse_get_session(handle)
        if _lib.fuse_set_signal_handlers(session) != 0:
            _lib.fuse_unmount(handle)
            return 3
        try:
            _loop(session)
        finally:
            _lib.fuse_remove_signal_handlers(session)
            _lib.fuse_unmount(handle)
    finally:
        _lib.fuse_destroy(handle)
    return 0


def _loop(session: int) -> None:
    """libfuse's fuse_session_loop, polling ``spin.REQUEST_NS`` before each sleep."""
    fd = _lib.fuse_session_fd(session)
    os.set_blocking(fd, False)
    buf = ctypes.create_string_buffer(_BUF_BYTES)  # zeroed: libfuse allocates its memory
    receive, process, exited = (
        _lib.fuse_session_receive_buf,
        _lib.fuse_session_process_buf,
        _lib.fuse_session_exited,
    )

    def attempt() -> int | None:
        result: int = receive(session, buf)
        return None if result == -errno.EAGAIN else result

    try:
        while not exited(session):
            result = receive(session, buf)  # under load the next request is already queued
            if result == -errno.EAGAIN:
                result = spin.poll(attempt, spin.REQUEST_NS)
            if result is None:
                select.select([fd], [], [], _SLEEP)
            elif result > 0:
                process(session, buf)
            elif result != -errno.EINTR:  # 0: unmounted (or the session ended); else an error
                break
    finally:
        _libc.free(ctypes.c_void_p.from_buffer(buf, _BUF_MEM).value)
