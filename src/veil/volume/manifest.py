"""The sealed manifest: every path, its type, size, object id and integrity root."""

import json
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veil.crypto import canonical_json, sha256
from veil.volume.errors import IntegrityError, VolumeError

FORMAT = "veil-volume-manifest"
VERSION = 2  # 2: a file's entry may hold its tag table inline ("tags")
_READS = (1, 2)
_AAD = b"veil-manifest-v1"
_TAG_DOMAIN = b"veil-volume-tag-v1"


def volume_tag(manifest_bytes: bytes) -> str:
    return sha256(_TAG_DOMAIN + manifest_bytes).hex()


@dataclass
class Manifest:
    volume_id: bytes
    mode: str
    chunk_size: int
    generation: int
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def seal(self, key: bytes) -> bytes:
        plaintext = canonical_json(
            {
                "format": FORMAT,
                "version": VERSION,
                "volume_id": self.volume_id.hex(),
                "mode": self.mode,
                "chunk_size": self.chunk_size,
                "generation": self.generation,
                "entries": self.entries,
            }
        )
        nonce = os.urandom(12)
        return nonce + AESGCM(key).encrypt(nonce, plaintext, _AAD + self.volume_id)

    @classmethod
    def open(cls, data: bytes, key: bytes, volume_id: bytes) -> "Manifest":
        if len(data) < 28:
            raise IntegrityError("the manifest is truncated")
        try:
            plaintext = AESGCM(key).decrypt(data[:12], data[12:], _AAD + volume_id)
        except InvalidTag:
            raise IntegrityError(
                "the manifest fails authentication (modified, or not this volume's)"
            ) from None
        raw = json.loads(plaintext)
        if raw.get("format") != FORMAT or raw.get("version") not in _READS:
            raise VolumeError(f"manifest format {raw.get('format')} v{raw.get('version')} is not supported")
        return cls(
            volume_id=bytes.fromhex(raw["volume_id"]),
            mode=str(raw["mode"]),
            chunk_size=int(raw["chunk_size"]),
            generation=int(raw["generation"]),
            entries=dict(raw["entries"]),
        )
