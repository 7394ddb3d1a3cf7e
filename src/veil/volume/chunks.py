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


def chunk_aad(volume_id: bytes, file_id: bytes, index: int, length: int) -> bytes:
    return _AAD_PREFIX + volume_id + file_id + struct.pack(">QI", index, length)


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
        aad = chunk_aad(self.volume_id, self.file_id, index, length)
        if self._aead is not None:
            try:
                return self._aead.decrypt(record[:NONCE], record[NONCE:], aad)
            except InvalidTag:
                raise IntegrityError(f"{where}: chunk {index} fails authentication") from None
        plaintext = bytes(record[:-TAG])
        if not hmac.compare_digest(hmac.new(self.key, aad + plaintext, hashlib.sha256).digest()[:TAG], tag):
            raise IntegrityError(f"{where}: chunk {index} fails authentication")
        return plaintext


def tags_root(table: bytes | bytearray) -> str:
    return hashlib.sha256(b"veil-tags-v1" + bytes(table)).hexdigest()
