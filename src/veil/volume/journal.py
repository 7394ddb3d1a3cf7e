"""The journal: sealed, hash-chained commit records after the checkpoint
(docs/volume-format.md, "The journal").

``Journal.open`` reads the records of one epoch up to the first that is incomplete or does
not authenticate, and cuts the file there, so that a later commit follows the last valid
one. ``append`` writes one record and (durably) syncs it; a failed write is cut off again.
A record is only valid at its place: its epoch, sequence number and the previous chain
value are its AAD. Chunk records a commit carries (``raw``) follow the sealed part as they
are: each is already sealed by its chunk's key and names its own tag, which the sealed part
lists; the reader of a commit checks them before applying it (``accept``).
"""

import contextlib
import json
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veil.crypto import canonical_json, sha256
from veil.volume.diskio import pwritev_all

_AAD = b"veil-journal-v1"
_CHAIN = b"veil-journal-chain-v1"
_GENESIS = b"veil-volume-genesis-v2"
_UPGRADE = b"veil-volume-upgrade-v2"
_LENGTH = struct.Struct(">I")
_FRAME = struct.Struct(">II")  # sealed length, raw length
_POSITION = struct.Struct(">QQ")
_NONCE = 12
_MAX_RECORD = 1 << 30


def genesis(volume_id: bytes) -> bytes:
    """The chain value a new volume starts from."""
    return sha256(_GENESIS + volume_id)


def upgraded(volume_id: bytes, old_tag: str) -> bytes:
    """The chain value a version 1 volume continues from after its upgrade."""
    return sha256(_UPGRADE + volume_id + bytes.fromhex(old_tag))


@dataclass(frozen=True)
class Commit:
    """One commit: its operations (JSON), their binary parts, the chunk records it carries
    (``raw``, not authenticated by the journal: see the module's text), and the chain value
    after it."""

    ops: list[dict[str, Any]]
    blob: bytes
    raw: memoryview
    chain: bytes
    time: int


def encode(ops: list[dict[str, Any]], blob: bytes | bytearray, time_ns: int, raw_length: int) -> bytes:
    header = canonical_json({"ops": ops, "raw": raw_length, "time": time_ns})
    return _LENGTH.pack(len(header)) + header + bytes(blob)


def _decode(plaintext: bytes) -> tuple[list[dict[str, Any]], bytes, int, int]:
    (length,) = _LENGTH.unpack_from(plaintext)
    header = json.loads(plaintext[4 : 4 + length])
    return list(header["ops"]), plaintext[4 + length :], int(header["time"]), int(header["raw"])


class Journal:
    """The journal file of one epoch, open for appending after the records read."""

    def __init__(
        self, path: str, key: bytes, volume_id: bytes, epoch: int, chain: bytes, readonly: bool = False
    ) -> None:
        self.path = path
        self._aead = AESGCM(key)
        self._volume_id = volume_id
        self.epoch = epoch
        self.chain = chain
        self.seq = 0
        self.end = 0
        #: what followed the last valid record when the journal was read (bytes), if anything
        self.tail = 0
        self.readonly = readonly
        try:
            self._fd = os.open(path, os.O_RDONLY if readonly else os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:  # read-only, and no journal: nothing after the checkpoint
            self._fd = os.open(os.devnull, os.O_RDONLY)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _aad(self, seq: int, previous: bytes) -> bytes:
        return _AAD + self._volume_id + _POSITION.pack(self.epoch, seq) + previous

    def read(self, accept: Callable[[Commit], bool] = lambda _: True) -> Iterator[Commit]:
        """Each valid commit of this epoch in order, ``accept`` deciding about its chunk
        records; then the file is cut after the last one (``tail``: how many bytes were
        cut). Call once, before appending."""
        data = memoryview(_read_all(self._fd))
        at = 0
        while at + _FRAME.size <= len(data):
            sealed_length, raw_length = _FRAME.unpack_from(data, at)
            start = at + _FRAME.size
            end = start + sealed_length + raw_length
            if sealed_length < _NONCE + 16 or sealed_length + raw_length > _MAX_RECORD or end > len(data):
                break
            sealed = bytes(data[start : start + sealed_length])
            try:
                plaintext = self._aead.decrypt(
                    sealed[:_NONCE], sealed[_NONCE:], self._aad(self.seq + 1, self.chain)
                )
                ops, blob, when, declared = _decode(plaintext)
            except (InvalidTag, ValueError, KeyError, struct.error):
                break
            chain = sha256(_CHAIN + self.chain + bytes(data[at:start]) + sealed)
            commit = Commit(ops, blob, data[start + sealed_length : end], chain, when)
            if declared != raw_length or not accept(commit):
                break  # a record written only in part: the commit never completed
            self.chain = chain
            self.seq += 1
            at = end
            yield commit
        self.end = at
        self.tail = len(data) - at
        if self.tail and not self.readonly:
            os.ftruncate(self._fd, at)

    def append(self, plaintext: bytes, raw: list[bytes], durable: bool) -> bytes:
        """Seal and append one commit record, followed by the chunk records ``raw``; sync
        it when ``durable``; the new chain value. On any failure the file is cut back to
        where it was and the error raised."""
        nonce = os.urandom(_NONCE)
        sealed = nonce + self._aead.encrypt(nonce, plaintext, self._aad(self.seq + 1, self.chain))
        raw_length = sum(len(part) for part in raw)
        frame = _FRAME.pack(len(sealed), raw_length)
        try:
            pwritev_all(self._fd, [frame + sealed, *raw], self.end)
            if durable:
                os.fsync(self._fd)
        except BaseException:
            # if even this fails, the record is incomplete and is cut at the next open
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self.end)
            raise
        self.chain = sha256(_CHAIN + self.chain + frame + sealed)
        self.seq += 1
        self.end += len(frame) + len(sealed) + raw_length
        return self.chain

    def sync(self) -> None:
        os.fsync(self._fd)

    def reset(self, epoch: int, chain: bytes) -> None:
        """Start the next epoch: empty the file (synced)."""
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)
        self.epoch, self.chain, self.seq, self.end, self.tail = epoch, chain, 0, 0, 0

    @property
    def size(self) -> int:
        return self.end


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    chunks = []
    at = 0
    while at < size:
        block = os.pread(fd, min(size - at, 1 << 24), at)
        if not block:
            break
        chunks.append(block)
        at += len(block)
    return b"".join(chunks)
