"""Thin, named wrappers over pyca/cryptography; veil has no primitives of its own.

Every other part uses these names instead of importing hazmat modules directly.
"""

from veil.crypto.aead import AeadKey, open_sealed, seal
from veil.crypto.encoding import canonical_json, constant_time_equal, sha256, sha256_hex, sha512
from veil.crypto.errors import CryptoError, DecryptionFailed, SignatureInvalid
from veil.crypto.hpke import BundleKeyPair, open_to_key, seal_to_key
from veil.crypto.signing import PlatformSigningKey, verify_ed25519

__all__ = [
    "AeadKey",
    "BundleKeyPair",
    "CryptoError",
    "DecryptionFailed",
    "PlatformSigningKey",
    "SignatureInvalid",
    "canonical_json",
    "constant_time_equal",
    "open_sealed",
    "open_to_key",
    "seal",
    "seal_to_key",
    "sha256",
    "sha256_hex",
    "sha512",
    "verify_ed25519",
]
