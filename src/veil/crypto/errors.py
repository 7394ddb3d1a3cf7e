"""Errors of the crypto part."""

from veil.errors import VeilError


class CryptoError(VeilError):
    """A cryptographic operation failed."""


class DecryptionFailed(CryptoError):
    """Authenticated decryption failed: wrong key, or the data was modified."""


class SignatureInvalid(CryptoError):
    """A signature does not verify under the expected key."""
