"""The owner's side of CAS recovery: a recovery key pair, and restoring the master key to a
CAS in recovery mode after verifying its evidence (docs/cas-storage.md, "Recovery")."""

import os
from collections.abc import Collection
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from veil.cas.custody import (
    RECOVERY_DOMAIN,
    master_key_id,
    recovery_info,
    transfer_info,
    transfer_report_data,
)
from veil.client.http import CasConnection
from veil.client.pinning import verify_cas_evidence
from veil.crypto import (
    AeadKey,
    BundleKeyPair,
    DecryptionFailed,
    constant_time_equal,
    open_to_key,
    seal_to_key,
)
from veil.crypto.files import write_private_file
from veil.errors import VeilError
from veil.protocol import NONCE_LEN, b64, unb64


class RecoveryFailed(VeilError):
    """The CAS in recovery mode is not verified, or the recovery key does not fit."""


def raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def generate_recovery_key(path: Path) -> Path:
    """Write a new X25519 private key to ``path`` (0600) and its public key to ``path.pub``."""
    key = X25519PrivateKey.generate()
    public_path = path.with_name(path.name + ".pub")
    if public_path.exists():
        raise RecoveryFailed(f"{public_path} exists; choose another name")
    write_private_file(path, key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    public_path.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    return public_path


def load_recovery_public_key(path: Path) -> bytes:
    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise RecoveryFailed(f"{path}: not a PEM public key ({exc})") from None
    if not isinstance(key, X25519PublicKey):
        raise RecoveryFailed(f"{path}: a recovery key is an X25519 key (veil cas recovery keygen)")
    return raw_public(key)


def load_recovery_private_key(path: Path) -> X25519PrivateKey:
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise RecoveryFailed(f"{path}: not a PEM private key ({exc})") from None
    if not isinstance(key, X25519PrivateKey):
        raise RecoveryFailed(f"{path}: a recovery key is an X25519 key (veil cas recovery keygen)")
    return key


def restore(url: str, key_file: Path, tolerate: Collection[str], expected_measurement: str | None) -> str:
    """Restore the master key to the CAS at ``url``; returns the master key id."""
    private = load_recovery_private_key(key_file)
    nonce = os.urandom(NONCE_LEN)
    connection = CasConnection(url, None)  # trust comes from the evidence, not from TLS
    try:
        answer = connection.call("POST", "/v1/recovery/evidence", {"nonce": b64(nonce)})
        try:
            cas_key = unb64(answer.get("public_key"), "public_key")
            recovery = dict(answer["recovery"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RecoveryFailed(f"the CAS answer is malformed: {exc}") from None
        binding = transfer_report_data(RECOVERY_DOMAIN, nonce, cas_key)
        verify_cas_evidence(answer, binding, tolerate, expected_measurement)
        if not constant_time_equal(
            unb64(recovery.get("public_key"), "recovery.public_key"), raw_public(private.public_key())
        ):
            raise RecoveryFailed("this database's recovery key is another one than " + str(key_file))
        master_id = str(recovery["id"])
        try:
            master = AeadKey(
                open_to_key(
                    unb64(recovery.get("ciphertext"), "ciphertext"),
                    BundleKeyPair(private),
                    recovery_info(master_id),
                )
            )
        except DecryptionFailed:
            raise RecoveryFailed("the recovery copy does not open with this key") from None
        if master_key_id(master) != master_id:
            raise RecoveryFailed("the recovered key is not the one named by the database")
        sealed = seal_to_key(master.raw, cas_key, transfer_info(RECOVERY_DOMAIN, nonce))
        connection.call("POST", "/v1/recovery", {"nonce": b64(nonce), "master_key": b64(sealed)})
    finally:
        connection.close()
    return master_id
