"""A second process that opens and seals chunks of large reads and writes
(docs/volume-format.md, Mount).

The mount's loop is one Python thread: alone it cannot use a second core, and threads would
hand the GIL back and forth at every chunk. So the daemon forks a helper before it mounts.
For a large read the loop opens the first part of the request itself and the helper the
rest, which it was asked for ahead of time: a sequential reader's next request is the next
range of the same length, so after each large read the loop asks the helper to open that
range's second part while the kernel delivers the reply and sends the next request. For a
large write the loop copies the second part's plaintext into shared memory; the helper
seals it and writes the records while the loop seals and writes the first part, and
answers with the new tags, which the loop puts in the tag table.

The loop sends the object's descriptor, where the part lies and the tags its chunks must
carry; the helper reads them, checks them and decrypts them into memory both processes
share. The helper is a shortcut, never a judge:

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

from veil.volume.chunks import TAG, ChunkCodec
from veil.volume.keys import VolumeKeys

log = logging.getLogger(__name__)
# job, kind, file id, first chunk, position of its record in the object, bytes, file size
_REQUEST = struct.Struct("<QB16sQQQQ")
_OPEN, _SEAL = 0, 1
_ANSWER = struct.Struct("<Q?")  # job, done; a seal's answer goes on with the new tags
_CODECS = 64  # codecs the helper keeps (one per file recently used)


@dataclass(frozen=True)
class Part:
    """Chunks ``first``..``last`` of a file of ``size`` bytes, carrying ``tags``."""

    file_id: bytes
    first: int
    last: int
    size: int
    tags: bytes


class ChunkHelper:
    """The loop's side. Reads: ``submit`` a part, later ``collect`` it (the last part asked
    for is the one in flight). Writes: put the plaintext in ``plaintext``, ``submit_seal``,
    then ``collect_seal``."""

    def __init__(self, keys: VolumeKeys, encrypted: bool, chunk_size: int, capacity: int) -> None:
        self.capacity = capacity
        self._answer_size = _ANSWER.size + (capacity // chunk_size + 1) * TAG
        # MAP_SHARED, two regions: opened plaintext (helper → loop), plaintext to seal
        # (loop → helper); apart, because a part opened ahead may still be being written
        self._shared = mmap.mmap(-1, 2 * capacity)
        self._opened = memoryview(self._shared)[:capacity]
        self.plaintext = memoryview(self._shared)[capacity:]
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the helper (coverage does not follow forks)
            self._sock.close()
            _serve(theirs, self._opened, self.plaintext, keys, encrypted, chunk_size)
        theirs.close()
        self.alive = True
        self.jobs = 0
        self._pending: Part | None = None

    def _send(self, kind: int, fd: int, part: Part, at: int, length: int) -> bool:
        if not self.alive:
            return False
        self.jobs += 1
        request = _REQUEST.pack(self.jobs, kind, part.file_id, part.first, at, length, part.size)
        try:
            socket.send_fds(self._sock, [request + part.tags], [fd])
        except OSError as exc:
            self._lost(exc)
            return False
        return True

    def _answer(self) -> bytes | None:
        """The answer to the last job sent (earlier ones are skipped); None if none comes."""
        while True:
            try:
                answer = self._sock.recv(self._answer_size)
            except OSError as exc:
                self._lost(exc)
                return None
            if not answer:
                self._lost(None)
                return None
            job, done = _ANSWER.unpack_from(answer)
            if job == self.jobs:
                return answer[_ANSWER.size :] if done else None

    def submit(self, fd: int, part: Part, at: int, span: int) -> None:
        """Ask for ``part``, stored in ``span`` bytes at ``at`` of the object open as ``fd``.
        Replaces the part in flight, if any (its answer is skipped)."""
        self._pending = part if self._send(_OPEN, fd, part, at, span) else None

    def pending(self, part: Part) -> bool:
        return self.alive and self._pending == part

    def collect(self, part: Part, out: memoryview) -> bool:
        """Copy the plaintext of ``part`` into ``out`` if it is the part in flight and the
        helper opened it; False otherwise (then the caller opens it)."""
        if not self.pending(part):
            return False
        self._pending = None
        if self._answer() is None:
            return False
        out[:] = self._opened[: len(out)]
        return True

    def submit_seal(self, fd: int, file_id: bytes, first: int, at: int, length: int) -> bool:
        """Ask the helper to seal the ``length`` bytes in ``plaintext`` as chunks ``first``..
        and write the records at ``at`` of the object open as ``fd``. False if it is gone."""
        self._pending = None
        return self._send(_SEAL, fd, Part(file_id, first, first, 0, b""), at, length)

    def collect_seal(self) -> bytes | None:
        """The tags of the chunks sealed and written; None if the helper could not (then
        the caller seals and writes them)."""
        return self._answer()

    def _lost(self, exc: OSError | None) -> None:
        log.warning("chunk helper gone (%s): chunks are sealed and opened in one process", exc or "it exited")
        self.alive = False
        self._pending = None

    def close(self) -> None:
        self.alive = False
        self._sock.close()  # the helper reads end of file and exits
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


def _serve(
    sock: socket.socket,
    opened: memoryview,
    plaintext: memoryview,
    keys: VolumeKeys,
    encrypted: bool,
    chunk_size: int,
) -> None:
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
                job, kind, file_id, first, at, length, size = _REQUEST.unpack_from(message)
                codec = codecs.get(file_id)
                if codec is None:
                    if len(codecs) >= _CODECS:
                        codecs.clear()
                    codec = codecs[file_id] = ChunkCodec(
                        encrypted, keys.volume_id, file_id, keys.file_key(file_id)
                    )
                if kind == _SEAL:
                    tags = _seal(codec, fds[0], first, at, plaintext[:length], chunk_size)
                    answer = _ANSWER.pack(job, tags is not None) + (tags or b"")
                else:
                    tags = message[_REQUEST.size :]
                    done = _open(codec, fds[0], first, at, length, size, tags, chunk_size, opened)
                    answer = _ANSWER.pack(job, done)
            finally:
                for fd in fds:
                    os.close(fd)
            sock.send(answer)
    except BaseException:  # any failure: the loop does the work itself
        status = 1
    finally:
        os._exit(status)


def _seal(
    codec: ChunkCodec, fd: int, first: int, at: int, plain: memoryview, chunk_size: int
) -> bytes | None:
    pieces: list[bytes | memoryview] = [
        plain[at : at + chunk_size] for at in range(0, len(plain), chunk_size)
    ]
    records, tags = codec.seal_many(first, pieces)
    try:
        written = os.pwrite(fd, records, at)
    except OSError:  # the loop writes them again and reports the error
        return None
    return tags if written == len(records) else None


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
