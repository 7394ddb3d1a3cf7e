"""Sealing and opening one chunk, in either mode (docs/volume-format.md, Chunks)."""

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veil.volume.errors import IntegrityError

NONCE = 12
TAG = 16
_AAD_PREFIX = b"veil-chunk-v1"
_INDEX_LENGTH = struct.Struct(">QI")


@dataclass
class ChunkCodec:
    """The chunk codec of one file (its own key)."""

    encrypted: bool
    volume_id: bytes
    file_id: bytes
    key: bytes = field(repr=False)
    overhead: int = field(init=False)

    def __post_init__(self) -> None:
        self._aead = AESGCM(self.key) if self.encrypted else None
        self._aad_prefix = _AAD_PREFIX + self.volume_id + self.file_id
        self.overhead = NONCE + TAG if self.encrypted else TAG

    def seal(self, index: int, plaintext: bytes | bytearray) -> tuple[bytes | bytearray, bytes]:
        """(stored record, its 16-byte tag)."""
        aad = self._aad_prefix + _INDEX_LENGTH.pack(index, len(plaintext))
        if self._aead is not None:
            nonce = os.urandom(NONCE)
            sealed = self._aead.encrypt(nonce, plaintext, aad)
            return nonce + sealed, sealed[-TAG:]
        tag = hmac.new(self.key, aad + plaintext, hashlib.sha256).digest()[:TAG]
        return plaintext + tag, tag

    def seal_many(self, first: int, plaintexts: list[bytes | memoryview]) -> tuple[bytearray, bytes]:
        """Seal consecutive chunks ``first``..: (their records, their tags). The write path's
        loop, kept tight: one draw of nonces for the batch, each chunk sealed in place into
        one buffer (only the last may be short, so record i starts at i * stride)."""
        overhead = self.overhead
        records = bytearray(sum(len(plain) for plain in plaintexts) + overhead * len(plaintexts))
        out = memoryview(records)
        prefix, pack = self._aad_prefix, _INDEX_LENGTH.pack
        stride = len(plaintexts[0]) + overhead
        starts = range(0, len(records), stride)
        if self._aead is not None:
            encrypt_into = self._aead.encrypt_into
            nonces = os.urandom(NONCE * len(plaintexts))
            for index, at, plain in zip(
                range(first, first + len(plaintexts)), starts, plaintexts, strict=True
            ):
                nonce = nonces[(index - first) * NONCE : (index - first + 1) * NONCE]
                out[at : at + NONCE] = nonce
                encrypt_into(
                    nonce,
                    plain,
                    prefix + pack(index, len(plain)),
                    out[at + NONCE : at + overhead + len(plain)],
                )
        else:
            key, new, sha256 = self.key, hmac.new, hashlib.sha256
            for index, at, plain in zip(
                range(first, first + len(plaintexts)), starts, plaintexts, strict=True
            ):
                mac = new(key, prefix + pack(index, len(plain)), sha256)
                mac.update(plain)
                out[at : at + len(plain)] = plain
                out[at + len(plain) : at + len(plain) + TAG] = mac.digest()[:TAG]
        ends = [*range(stride, len(records), stride), len(records)]
        return records, b"".join([out[end - TAG : end] for end in ends])

    def open(
        self, index: int, record: bytes | memoryview, expected_tag: bytes | bytearray | memoryview, where: str
    ) -> bytes:
        length = len(record) - self.overhead
        if length < 0:
            raise IntegrityError(f"{where}: chunk {index} is truncated")
        tag = record[-TAG:]
        if not hmac.compare_digest(tag, expected_tag):
            raise IntegrityError(
                f"{where}: chunk {index} is not the current version (modified or rolled back)"
            )
        aad = self._aad_prefix + _INDEX_LENGTH.pack(index, length)
        if self._aead is not None:
            try:
                return self._aead.decrypt(record[:NONCE], record[NONCE:], aad)
            except InvalidTag:
                raise IntegrityError(f"{where}: chunk {index} fails authentication") from None
        plaintext = bytes(record[:-TAG])
        if not hmac.compare_digest(hmac.new(self.key, aad + plaintext, hashlib.sha256).digest()[:TAG], tag):
            raise IntegrityError(f"{where}: chunk {index} fails authentication")
        return plaintext

    def open_one_into(self, index: int, record: bytes, tags: bytearray, where: str, out: memoryview) -> None:
        """Open one whole chunk into ``out`` (exactly its plaintext length): the random-read
        path, which a 4 KiB read of a mounted volume takes once per request, kept short."""
        at = index * TAG
        if (
            self._aead is None
            or len(record) != len(out) + self.overhead
            or not hmac.compare_digest(record[-TAG:], tags[at : at + TAG])
        ):
            out[:] = self.open(index, record, tags[at : at + TAG], where)  # raises if stale
            return
        try:
            self._aead.decrypt_into(
                record[:NONCE],
                memoryview(record)[NONCE:],
                self._aad_prefix + _INDEX_LENGTH.pack(index, len(out)),
                out,
            )
        except InvalidTag:
            raise IntegrityError(f"{where}: chunk {index} fails authentication") from None

    def open_into(
        self,
        first: int,
        raw: bytes,
        expected: bytes,
        chunk_size: int,
        file_size: int,
        where: str,
        out: memoryview,
    ) -> None:
        """Open the consecutive chunks ``first``.. stored in ``raw`` into ``out`` (exactly
        their plaintext length); ``expected``: the tags they must carry. The read path's
        loop, kept tight: the freshness of the whole batch in one comparison, then each chunk
        decrypted in place; a failure is located afterwards, for the message."""
        view = memoryview(raw)
        overhead, stride = self.overhead, chunk_size + self.overhead
        count = -(-len(raw) // stride)
        starts = range(0, count * stride, stride)
        ends = [*range(stride, (count - 1) * stride + 1, stride), len(raw)]
        last = first + count - 1
        if ends[-1] - starts[-1] - overhead != min(chunk_size, file_size - last * chunk_size):
            raise IntegrityError(f"{where}: chunk {last} is truncated")
        stored = b"".join([view[end - TAG : end] for end in ends])
        if not hmac.compare_digest(stored, expected):
            index = next(
                (
                    i
                    for i in range(count)
                    if stored[i * TAG : i * TAG + TAG] != expected[i * TAG : i * TAG + TAG]
                ),
                count - 1,
            )
            raise IntegrityError(
                f"{where}: chunk {first + index} is not the current version"
                " (modified, truncated or rolled back)"
            )
        prefix, pack = self._aad_prefix, _INDEX_LENGTH.pack
        places = range(0, count * chunk_size, chunk_size)
        try:
            if self._aead is not None:
                decrypt_into = self._aead.decrypt_into
                for index, at, end, place in zip(range(first, last + 1), starts, ends, places, strict=True):
                    length = end - at - overhead
                    decrypt_into(
                        view[at : at + NONCE],
                        view[at + NONCE : end],
                        prefix + pack(index, length),
                        out[place : place + length],
                    )
                return
            key, new, compare, sha256 = self.key, hmac.new, hmac.compare_digest, hashlib.sha256
            for index, at, end, place in zip(range(first, last + 1), starts, ends, places, strict=True):
                body = view[at : end - TAG]
                mac = new(key, prefix + pack(index, len(body)), sha256)
                mac.update(body)
                if not compare(mac.digest()[:TAG], view[end - TAG : end]):
                    raise InvalidTag
                out[place : place + len(body)] = body
        except InvalidTag:
            for index, at, end in zip(range(first, last + 1), starts, ends, strict=True):
                self.open(index, view[at:end], view[end - TAG : end], where)
            raise IntegrityError(f"{where}: chunks {first}..{last} fail authentication") from None


def tags_root(table: bytes | bytearray) -> str:
    return hashlib.sha256(b"veil-tags-v1" + bytes(table)).hexdigest()
