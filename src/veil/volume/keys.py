"""Volume keys: the key file, and the keys derived from it (docs/volume-format.md, Keys)."""

import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veil.crypto.files import exposure_problem, write_private_file
from veil.volume.chunks import ChunkCodec
from veil.volume.errors import VolumeError

KEY_LEN = 32


def derive(key: bytes, volume_id: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=volume_id, info=info).derive(key)


@dataclass(frozen=True)
class VolumeKeys:
    volume_id: bytes
    manifest: bytes = field(repr=False)
    check: bytes = field(repr=False)
    _root: bytes = field(repr=False)
    journal: bytes = field(repr=False, default=b"")

    @classmethod
    def derive(cls, key: bytes, volume_id: bytes) -> "VolumeKeys":
        if len(key) != KEY_LEN:
            raise VolumeError(f"a volume key has {KEY_LEN} bytes, not {len(key)}")
        return cls(
            volume_id,
            derive(key, volume_id, b"veil-volume-v1 manifest"),
            derive(key, volume_id, b"veil-volume-v1 key-check"),
            key,
            derive(key, volume_id, b"veil-volume-v2 journal"),
        )

    def file_key(self, file_id: bytes) -> bytes:
        return derive(self._root, self.volume_id, b"veil-volume-v1 file" + file_id)

    def codec(self, file_id: bytes, encrypted: bool) -> ChunkCodec:
        """The chunk codec of one file (its own derived key)."""
        return ChunkCodec(encrypted, self.volume_id, file_id, self.file_key(file_id))


def load_or_create_key_file(path: Path) -> bytes:
    """The raw 32-byte key in ``path``; a fresh random key (file mode 0600) if it is absent."""
    if not path.exists():
        key = os.urandom(KEY_LEN)
        write_private_file(path, key)
        return key
    problem = exposure_problem(path)
    if problem:
        raise VolumeError(f"key file {problem}")
    key = path.read_bytes()
    if len(key) != KEY_LEN:
        raise VolumeError(f"key file {path} must hold exactly {KEY_LEN} raw bytes, it holds {len(key)}")
    return key
