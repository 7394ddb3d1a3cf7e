"""Encryption of a configuration bundle to a runtime's ephemeral key (HPKE, RFC 9180).

Suite: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, base mode. The ``info``
string binds the ciphertext to one protocol exchange (it includes the nonce).
"""

from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from veil.crypto.errors import CryptoError, DecryptionFailed

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


@dataclass(frozen=True)
class BundleKeyPair:
    """The runtime's ephemeral key pair for receiving its bundle; lives only in memory."""

    private_key: X25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> "BundleKeyPair":
        return cls(X25519PrivateKey.generate())

    @property
    def public_bytes(self) -> bytes:
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def seal_to_key(plaintext: bytes, public_key: bytes, info: bytes) -> bytes:
    try:
        recipient = X25519PublicKey.from_public_bytes(public_key)
    except ValueError as exc:
        raise CryptoError(f"not an X25519 public key: {exc}") from None
    return _SUITE.encrypt(plaintext, recipient, info=info)


def open_to_key(ciphertext: bytes, keys: BundleKeyPair, info: bytes) -> bytes:
    try:
        return _SUITE.decrypt(ciphertext, keys.private_key, info=info)
    except (InvalidTag, ValueError):
        raise DecryptionFailed("the configuration bundle failed to decrypt") from None
