"""The sealed manifest (docs/volume-format.md, "Inodes and the manifest"): the checkpoint
of every inode, which journal it continues, and the tag the CAS was known to hold.

Version 3 is written; versions 1 and 2 (path-keyed entries of format version 1) are read,
as ``Manifest.entries``, and converted by the volume.
"""

import json
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veil.crypto import canonical_json, sha256
from veil.volume.errors import IntegrityError, VolumeError

FORMAT = "veil-volume-manifest"
VERSION = 3  # 3: inodes and a journal; 2: inline tag tables; 1: path-keyed files
_READS = (1, 2, 3)
_AAD = b"veil-manifest-v1"
_TAG_DOMAIN = b"veil-volume-tag-v1"


def legacy_tag(manifest_bytes: bytes) -> str:
    """A version 1 volume's tag: the hash of its manifest file."""
    return sha256(_TAG_DOMAIN + manifest_bytes).hex()


@dataclass
class Manifest:
    volume_id: bytes
    mode: str
    chunk_size: int
    generation: int
    version: int = VERSION
    #: version 3: every inode (as Tree.checkpoint gives them), the next inode number, the
    #: journal this checkpoint continues (epoch, start chain value) and the base tags: the
    #: tags the CAS may hold (the latest last), kept in the history however far the journal
    #: was compacted
    inodes: dict[str, Any] = field(default_factory=dict)
    next_ino: int = 2
    epoch: int = 0
    start: bytes = b""
    base: list[str] = field(default_factory=list)
    #: versions 1 and 2: path -> entry
    entries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def seal(self, key: bytes) -> bytes:
        assert self.version == VERSION, "only version 3 is written"
        plaintext = canonical_json(
            {
                "format": FORMAT,
                "version": VERSION,
                "volume_id": self.volume_id.hex(),
                "mode": self.mode,
                "chunk_size": self.chunk_size,
                "generation": self.generation,
                "next_ino": self.next_ino,
                "journal": {"epoch": self.epoch, "start": self.start.hex()},
                "base": self.base,
                "inodes": self.inodes,
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
        version = raw.get("version")
        if raw.get("format") != FORMAT or version not in _READS:
            raise VolumeError(f"manifest format {raw.get('format')} v{version} is not supported")
        manifest = cls(
            volume_id=bytes.fromhex(raw["volume_id"]),
            mode=str(raw["mode"]),
            chunk_size=int(raw["chunk_size"]),
            generation=int(raw["generation"]),
            version=int(version),
        )
        if manifest.version < VERSION:
            manifest.entries = dict(raw["entries"])
            return manifest
        manifest.inodes = dict(raw["inodes"])
        manifest.next_ino = int(raw["next_ino"])
        manifest.epoch = int(raw["journal"]["epoch"])
        manifest.start = bytes.fromhex(str(raw["journal"]["start"]))
        manifest.base = [str(tag) for tag in raw.get("base", [])]
        return manifest


__all__ = ["VERSION", "Manifest", "legacy_tag"]
