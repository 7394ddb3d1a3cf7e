"""AES-256-GCM sealing of records: a random 96-bit nonce per message, stored in front.

A sealed blob is ``version (1 byte) || nonce (12) || ciphertext+tag``. The associated data
binds a blob to where it belongs, so a blob moved to another record fails to open.
"""

import os
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from veil.crypto.errors import CryptoError, DecryptionFailed

_SEAL_VERSION = 1
_NONCE_LEN = 12
KEY_LEN = 32


@dataclass(frozen=True)
class AeadKey:
    """A 256-bit AES-GCM key. Its repr never shows the key."""

    raw: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.raw) != KEY_LEN:
            raise CryptoError(f"an AES-256 key has {KEY_LEN} bytes, not {len(self.raw)}")

    @classmethod
    def generate(cls) -> "AeadKey":
        return cls(AESGCM.generate_key(bit_length=256))


def seal(key: AeadKey, plaintext: bytes, associated_data: bytes) -> bytes:
    nonce = os.urandom(_NONCE_LEN)
    ciphertext = AESGCM(key.raw).encrypt(nonce, plaintext, associated_data)
    return bytes([_SEAL_VERSION]) + nonce + ciphertext


def open_sealed(key: AeadKey, blob: bytes, associated_data: bytes) -> bytes:
    if len(blob) < 1 + _NONCE_LEN + 16 or blob[0] != _SEAL_VERSION:
        raise DecryptionFailed("sealed data is truncated or of an unknown version")
    nonce = blob[1 : 1 + _NONCE_LEN]
    try:
        return AESGCM(key.raw).decrypt(nonce, blob[1 + _NONCE_LEN :], associated_data)
    except InvalidTag:
        raise DecryptionFailed("sealed data failed authentication") from None


def derive_subkey(key: AeadKey, label: bytes) -> bytes:
    """A 32-byte key for one purpose (``label``), derived from ``key`` with HKDF-SHA256."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(key.raw)
