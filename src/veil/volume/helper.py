"""A second process that opens part of each large read (docs/volume-format.md, Mount).

The mount's loop is one Python thread: alone it cannot use a second core, and threads would
hand the GIL back and forth at every chunk. So the daemon forks a helper before it mounts.
For a large read the loop opens the first part of the request itself and the helper the
rest, which it was asked for ahead of time: a sequential reader's next request is the next
range of the same length, so after each large read the loop asks the helper to open that
range's second part while the kernel delivers the reply and sends the next request.

The loop sends the object's descriptor, where the part lies and the tags its chunks must
carry; the helper reads them, checks them and decrypts them into memory both processes
share (a memfd of two slots, each the plaintext of one range: the mount replies to the
kernel from one by splice while the helper opens the next range into the other). The
helper is a shortcut, never a judge:

- its work is used only for exactly the part asked for, with the same file size and the
  same tags as the file has now (a write since then changed a tag: the work is dropped);
- when it refuses (a chunk does not check) or is gone, the loop opens the part itself and
  reports what it finds, so an integrity error names the file and the chunk as in-process
  reads do.
"""

import contextlib
import logging
import mmap
import os
import signal
import socket
import struct
from dataclasses import dataclass

from veil.volume import spin
from veil.volume.chunks import TAG, ChunkCodec
from veil.volume.keys import VolumeKeys

log = logging.getLogger(__name__)
# job, file id, first chunk, position of its record in the object, bytes to read, file size,
# where its plaintext goes in the shared memory
_REQUEST = struct.Struct("<Q16sQQQQQ")
_ANSWER = struct.Struct("<Q?")  # job, opened
_CODECS = 64  # codecs the helper keeps (one per file recently read)


@dataclass(frozen=True)
class Part:
    """Chunks ``first``..``last`` of a file of ``size`` bytes, carrying ``tags``."""

    file_id: bytes
    first: int
    last: int
    size: int
    tags: bytes


class ReadHelper:
    """The loop's side: ``submit`` a part, later ``collect`` it (one part in flight).

    ``capacity``: the largest read (bytes) whose plaintext a slot of the shared memory
    holds; ``fd`` and ``view``: that memory (two slots, at 0 and at ``slot``)."""

    def __init__(self, keys: VolumeKeys, encrypted: bool, chunk_size: int, capacity: int) -> None:
        self.capacity = capacity
        page = mmap.PAGESIZE
        self.slot = -(-(capacity + 2 * chunk_size) // page) * page  # an unaligned read's chunks
        self.fd = os.memfd_create("veil-read", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, 2 * self.slot)
        self._shared = mmap.mmap(self.fd, 2 * self.slot)  # MAP_SHARED: both processes write
        self.view = memoryview(self._shared)
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the helper (coverage does not follow forks)
            self._sock.close()
            _serve(theirs, self.view, keys, encrypted, chunk_size)
        theirs.close()
        self.alive = True
        self.jobs = 0
        self._pending: tuple[Part, int] | None = None  # the part in flight, where it goes

    def submit(self, fd: int, part: Part, at: int, span: int, where: int) -> None:
        """Ask for ``part``, stored in ``span`` bytes at ``at`` of the object open as ``fd``,
        to be opened into the shared memory at ``where``. Replaces the part in flight, if
        any (its answer is skipped)."""
        if not self.alive:
            return
        self.jobs += 1
        request = _REQUEST.pack(self.jobs, part.file_id, part.first, at, span, part.size, where)
        try:
            socket.send_fds(self._sock, [request + part.tags], [fd])
        except OSError as exc:
            self._lost(exc)
            return
        self._pending = (part, where)

    def pending_at(self, part: Part, offset: int) -> int | None:
        """Where ``part`` goes, if it is the part in flight and goes ``offset`` bytes into
        its slot (a read's plaintext starts at the start of a slot: the same part asked
        for as the end of another range lies elsewhere in its slot, and is not used)."""
        if self.alive and self._pending is not None and self._pending[0] == part:
            where = self._pending[1]
            if where - offset == (0 if where < self.slot else self.slot):
                return where
        return None

    def spare(self) -> int:
        """The start of a slot that no part in flight is opened into."""
        if self._pending is None or self._pending[1] >= self.slot:
            return 0
        return self.slot

    def other(self, where: int) -> int:
        """The start of the slot other than the one holding ``where``."""
        return 0 if where >= self.slot else self.slot

    def collect(self, part: Part) -> bool:
        """Wait for ``part``: True if it is the part in flight and the helper opened it
        (its plaintext is where it was asked to go); False otherwise (then the caller
        opens it)."""
        if not self.alive or self._pending is None or self._pending[0] != part:
            return False
        self._pending = None
        while True:
            try:
                answer = self._answer()
            except OSError as exc:
                self._lost(exc)
                return False
            if not answer:
                self._lost(None)
                return False
            job, opened = _ANSWER.unpack(answer)
            if job == self.jobs:
                return bool(opened)

    def _answer(self) -> bytes:
        """The next answer; polled for ``spin.HELPER_NS`` before sleeping (veil.volume.spin)."""

        def attempt() -> bytes | None:
            try:
                return self._sock.recv(_ANSWER.size, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None

        answer = spin.poll(attempt, spin.HELPER_NS)
        return self._sock.recv(_ANSWER.size) if answer is None else answer

    def _lost(self, exc: OSError | None) -> None:
        log.warning("read helper gone (%s): large reads are opened in one process", exc or "it exited")
        self.alive = False
        self._pending = None

    def close(self) -> None:
        self.alive = False
        self._sock.close()  # the helper reads end of file and exits
        if self.fd >= 0:  # the shared memory stays mapped until the process ends
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _serve(sock: socket.socket, out: memoryview, keys: VolumeKeys, encrypted: bool, chunk_size: int) -> None:
    """The helper's loop; exits with the process when the loop closes its end."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the daemon decides when to stop
    os.closerange(3, sock.fileno())  # nothing else of the daemon's (the volume's lock among them)
    os.closerange(sock.fileno() + 1, os.sysconf("SC_OPEN_MAX"))
    codecs: dict[bytes, ChunkCodec] = {}
    status = 0
    try:
        while True:
            message, fds, _, _ = socket.recv_fds(sock, 1 << 16, 1)
            if not message:
                break
            try:
                job, file_id, first, at, span, size, where = _REQUEST.unpack_from(message)
                codec = codecs.get(file_id)
                if codec is None:
                    if len(codecs) >= _CODECS:
                        codecs.clear()
                    codec = codecs[file_id] = keys.codec(file_id, encrypted)
                tags = message[_REQUEST.size :]
                opened = _open(codec, fds[0], first, at, span, size, tags, chunk_size, out[where:])
            finally:
                for fd in fds:
                    os.close(fd)
            sock.send(_ANSWER.pack(job, opened))
    except BaseException:  # any failure: the loop opens parts itself
        status = 1
    finally:
        os._exit(status)


def _open(
    codec: ChunkCodec,
    fd: int,
    first: int,
    at: int,
    span: int,
    size: int,
    tags: bytes,
    chunk_size: int,
    out: memoryview,
) -> bool:
    raw = os.pread(fd, span, at)
    length = min(size, (first + len(tags) // TAG) * chunk_size) - first * chunk_size
    if len(raw) != span or not 0 < length <= len(out):
        return False
    try:
        codec.open_into(first, raw, tags, chunk_size, size, "", out[:length])
    except Exception:  # the loop opens the part again and reports
        return False
    return True
