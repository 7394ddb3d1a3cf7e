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

    def seal(self, index: int, plaintext: bytes) -> tuple[bytes, bytes]:
        """(stored record, its 16-byte tag)."""
        aad = self._aad_prefix + _INDEX_LENGTH.pack(index, len(plaintext))
        if self._aead is not None:
            nonce = os.urandom(NONCE)
            sealed = self._aead.encrypt(nonce, plaintext, aad)
            return nonce + sealed, sealed[-TAG:]
        tag = hmac.new(self.key, aad + plaintext, hashlib.sha256).digest()[:TAG]
        return plaintext + tag, tag

    def seal_many(self, first: int, plaintexts: list[bytes | memoryview]) -> tuple[bytes, bytes]:
        """Seal consecutive chunks ``first``..: (their records, their tags)."""
        records, tags = [], []
        seal = self.seal
        for offset, plaintext in enumerate(plaintexts):
            record, tag = seal(first + offset, bytes(plaintext))
            records.append(record)
            tags.append(tag)
        return b"".join(records), b"".join(tags)

    def open(
        self, index: int, record: bytes | memoryview, expected_tag: bytes | bytearray, where: str
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

    def open_many(
        self, first: int, raw: bytes, tags: bytearray, chunk_size: int, file_size: int, where: str
    ) -> bytes:
        """Open the consecutive chunks ``first``.. stored in ``raw``: the read path's loop,
        kept tight (one call per request instead of several per chunk)."""
        out: list[bytes] = []
        view = memoryview(raw)
        overhead, prefix, pack, aead = self.overhead, self._aad_prefix, _INDEX_LENGTH.pack, self._aead
        stride = chunk_size + overhead
        compare = hmac.compare_digest
        at, index = 0, first
        while at < len(raw):
            length = min(chunk_size, file_size - index * chunk_size)
            record = view[at : at + length + overhead]
            tag = record[-TAG:]
            if len(record) != length + overhead or not compare(tag, tags[index * TAG : index * TAG + TAG]):
                raise IntegrityError(
                    f"{where}: chunk {index} is not the current version (modified, truncated or rolled back)"
                )
            aad = prefix + pack(index, length)
            if aead is not None:
                try:
                    out.append(aead.decrypt(record[:NONCE], record[NONCE:], aad))
                except InvalidTag:
                    raise IntegrityError(f"{where}: chunk {index} fails authentication") from None
            else:
                plaintext = record[:-TAG]
                if not compare(hmac.new(self.key, aad + plaintext, hashlib.sha256).digest()[:TAG], tag):
                    raise IntegrityError(f"{where}: chunk {index} fails authentication")
                out.append(bytes(plaintext))
            at += stride
            index += 1
        return b"".join(out)


def tags_root(table: bytes | bytearray) -> str:
    return hashlib.sha256(b"veil-tags-v1" + bytes(table)).hexdigest()
