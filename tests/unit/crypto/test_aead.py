import pytest

from veil.crypto import AeadKey, BundleKeyPair, DecryptionFailed, open_sealed, open_to_key, seal, seal_to_key


def test_sealed_data_opens_with_the_same_key_and_context() -> None:
    key = AeadKey.generate()
    assert open_sealed(key, seal(key, b"secret", b"ctx"), b"ctx") == b"secret"


@pytest.mark.parametrize("position", [0, 1, 13, -1])
def test_any_flipped_byte_is_detected(position: int) -> None:
    key = AeadKey.generate()
    blob = bytearray(seal(key, b"secret record", b"ctx"))
    blob[position] ^= 0x01
    with pytest.raises(DecryptionFailed):
        open_sealed(key, bytes(blob), b"ctx")


def test_a_blob_moved_to_another_context_does_not_open() -> None:
    key = AeadKey.generate()
    with pytest.raises(DecryptionFailed):
        open_sealed(key, seal(key, b"secret", b"record-a"), b"record-b")


def test_the_key_never_appears_in_repr() -> None:
    key = AeadKey.generate()
    assert key.raw.hex() not in repr(key)
    assert repr(key.raw) not in repr(key)


def test_bundle_encryption_binds_the_recipient_and_info() -> None:
    keys, other = BundleKeyPair.generate(), BundleKeyPair.generate()
    ciphertext = seal_to_key(b"bundle", keys.public_bytes, b"info")
    assert open_to_key(ciphertext, keys, b"info") == b"bundle"
    with pytest.raises(DecryptionFailed):
        open_to_key(ciphertext, other, b"info")
    with pytest.raises(DecryptionFailed):
        open_to_key(ciphertext, keys, b"other info")
