"""Ed25519 signing keys of sim platforms, kept in PEM files readable only by their owner."""

from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
)

from veil.crypto.encoding import sha256_hex
from veil.crypto.errors import CryptoError, SignatureInvalid
from veil.crypto.files import write_private_file


@dataclass(frozen=True)
class PlatformSigningKey:
    private_key: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> "PlatformSigningKey":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> "PlatformSigningKey":
        if path.exists():
            key = load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(key, Ed25519PrivateKey):
                raise CryptoError(f"{path}: not an Ed25519 private key")
            return cls(key)
        created = cls.generate()
        pem = created.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        write_private_file(path, pem)
        return created

    @property
    def public_bytes(self) -> bytes:
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def key_id(self) -> str:
        """The platform identity: SHA-256 of the raw public key, in hex."""
        return sha256_hex(self.public_bytes)

    def sign(self, message: bytes) -> bytes:
        return self.private_key.sign(message)


def verify_ed25519(public_key: bytes, signature: bytes, message: bytes) -> None:
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        raise SignatureInvalid("Ed25519 signature does not verify") from None


__all__ = ["PlatformSigningKey", "verify_ed25519"]
