"""Where the network CAS's master key lives (docs/cas-storage.md, "Master key custody").

Sealed to the node's platform identity (``DATA/master.sealed``), held by running replicas
and handed to a new one after it attests, and encrypted to the owners' recovery key in the
database. The database's ``cas-master`` records say which key seals it (``id``) and hold
the recovery copy; they are not sealed, since they are read before the key is known.
"""

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from veil.cas.errors import Conflict, MasterKeyError
from veil.cas.sealing import load_or_create_master_key
from veil.cas.storage import RecordStore
from veil.crypto import (
    AeadKey,
    DecryptionFailed,
    PlatformSigningKey,
    canonical_json,
    open_sealed,
    seal,
    seal_to_key,
)
from veil.crypto.encoding import sha256_hex, sha512
from veil.crypto.files import replace_private_file

log = logging.getLogger(__name__)

MASTER_KIND = "cas-master"
JOIN_DOMAIN = b"veil-replica-join-v1\0"
RECOVERY_DOMAIN = b"veil-recovery-v1\0"
_ID_DOMAIN = b"veil-master-id-v1\0"
_SEALED_DOMAIN = b"veil-master-v1\0"


def master_key_id(key: AeadKey) -> str:
    """Names a master key without revealing it."""
    return sha256_hex(_ID_DOMAIN + key.raw)


def transfer_report_data(domain: bytes, nonce: bytes, public_key: bytes) -> bytes:
    """What evidence binds when the master key is to be sent to ``public_key`` (64 bytes,
    the size of every platform's report data)."""
    return sha512(domain + nonce + public_key)


def transfer_info(domain: bytes, nonce: bytes) -> bytes:
    """HPKE ``info`` of a master key sent for a join or a recovery."""
    return domain + nonce


def recovery_info(master_id: str) -> bytes:
    return RECOVERY_DOMAIN + master_id.encode()


class PlatformSealer:
    """Seals the master key to the node's sim platform key (HKDF of its private bytes)."""

    def __init__(self, platform_key: PlatformSigningKey) -> None:
        raw = platform_key.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        self._key = AeadKey(
            HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"veil-master-seal-v1\0").derive(raw)
        )

    def seal(self, master: AeadKey) -> bytes:
        return seal(self._key, master.raw, _SEALED_DOMAIN + master_key_id(master).encode())

    def open(self, blob: bytes, master_id: str) -> AeadKey:
        try:
            return AeadKey(open_sealed(self._key, blob, _SEALED_DOMAIN + master_id.encode()))
        except DecryptionFailed:
            raise MasterKeyError(
                "the sealed master key (master.sealed) does not open on this node, or seals another "
                "database's key (a data directory copied from another node, or another --db): move "
                "master.sealed aside and start with --join URL of a running replica, or without it "
                "the node starts in recovery mode for `veil cas recovery restore URL --key FILE`"
            ) from None


class Custody:
    """The master-key records of one database and this node's sealed copy of the key."""

    def __init__(self, store: RecordStore, sealed_path: Path, sealer: PlatformSealer | None) -> None:
        self.store = store
        self.sealed_path = sealed_path
        self.sealer = sealer

    def _get(self, key: str) -> dict[str, Any] | None:
        record = self.store.get(MASTER_KIND, key)
        return None if record is None else dict(json.loads(record.blob))

    def stored_id(self) -> str | None:
        found = self._get("id")
        return None if found is None else str(found["id"])

    def recovery(self) -> dict[str, Any] | None:
        return self._get("recovery")

    def unseal(self) -> AeadKey | None:
        """This node's sealed copy, checked against the database; None when there is none."""
        master_id = self.stored_id()
        if self.sealer is None or master_id is None or not self.sealed_path.exists():
            return None
        return self.sealer.open(self.sealed_path.read_bytes(), master_id)

    def create(self, master: AeadKey) -> None:
        """First start: this key seals the database from now on (a replica that raced us
        and won makes this a Conflict)."""
        self.store.put(MASTER_KIND, "id", canonical_json({"id": master_key_id(master)}), None)
        self._seal_here(master)

    def adopt(self, master: AeadKey) -> AeadKey:
        """A key obtained from a replica or by recovery: it must be the database's."""
        if master_key_id(master) != self.stored_id():
            raise MasterKeyError("the master key received is not the one that seals this database")
        self._seal_here(master)
        return master

    def _seal_here(self, master: AeadKey) -> None:
        if self.sealer is None:
            log.warning("no platform sealing key on this node: the master key is kept in memory only")
            return
        replace_private_file(self.sealed_path, self.sealer.seal(master))

    def set_recovery(self, master: AeadKey, public_key: bytes) -> bool:
        """Keep a copy of ``master`` encrypted to the owners' recovery key; False when that
        key already holds the copy."""
        record = self.store.get(MASTER_KIND, "recovery")
        encoded = base64.b64encode(public_key).decode()
        if record is not None and json.loads(record.blob).get("public_key") == encoded:
            return False
        master_id = master_key_id(master)
        value = {
            "id": master_id,
            "public_key": encoded,
            "ciphertext": base64.b64encode(
                seal_to_key(master.raw, public_key, recovery_info(master_id))
            ).decode(),
        }
        self.store.put(
            MASTER_KIND, "recovery", canonical_json(value), None if record is None else record.version
        )
        return True


@dataclass(frozen=True)
class Obtained:
    """How this node got the master key: ``created``, ``unsealed``, ``joined``, or
    ``recovery`` (it has none: recovery mode)."""

    master: AeadKey | None
    how: str
    #: on a join: the identity the running replica attested
    attested_identity: str | None = None


def obtain_master_key(
    custody: Custody, data_dir: Path, join: Callable[[], tuple[AeadKey, str]] | None
) -> Obtained:
    """The start sequence of docs/cas-storage.md: first start, this node's sealed copy, an
    older data directory's plain key file (imported, then removed), a join, else recovery."""
    legacy = data_dir / "master.key"
    master = custody.unseal()
    if master is not None:
        return Obtained(master, "unsealed")
    if custody.stored_id() is None:
        master = load_or_create_master_key(legacy) if legacy.exists() else AeadKey.generate()
        try:
            custody.create(master)
        except Conflict:
            raise MasterKeyError(
                "another replica initialised this database at the same moment: start this one with --join URL"
            ) from None
        legacy.unlink(missing_ok=True)
        return Obtained(master, "created")
    if legacy.exists():
        master = custody.adopt(load_or_create_master_key(legacy))
        legacy.unlink()
        return Obtained(master, "unsealed")
    if join is not None:
        master, identity = join()
        return Obtained(master, "joined", identity)
    return Obtained(None, "recovery")
