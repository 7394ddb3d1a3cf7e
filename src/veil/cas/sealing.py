"""Every record is sealed with AES-256-GCM under the CAS master key before it is stored.

The associated data names the record (kind and key), so a blob copied onto another record
fails to open. What the database operator still sees: record kinds, keys (session names)
and sizes, and the audit log, which holds no secrets. Rolling the whole database back to
an older copy is not detected by sealing alone (docs/threat-model.md).
"""

import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

from veil.cas.errors import MasterKeyError, StorageCorrupted
from veil.cas.storage import RecordStore
from veil.crypto import AeadKey, DecryptionFailed, canonical_json, open_sealed, seal
from veil.crypto.aead import derive_subkey
from veil.crypto.files import exposure_problem, write_private_file

log = logging.getLogger(__name__)

_AAD_DOMAIN = b"veil-record-v1\0"
_CACHE_SIZE = 4096


def load_or_create_master_key(path: Path) -> AeadKey:
    """The CAS master key in a 0600 file: sim mode only, and said loudly."""
    if path.exists():
        problem = exposure_problem(path)
        if problem:
            raise MasterKeyError(problem)
        raw = path.read_bytes()
        if len(raw) != 32:
            raise MasterKeyError(f"{path} does not hold a 32-byte key")
        return AeadKey(raw)
    key = AeadKey.generate()
    write_private_file(path, key.raw)
    log.warning(
        "sim mode: created the CAS master key as a plain file %s (mode 0600); anyone who can "
        "read it can read every secret of this CAS",
        path,
    )
    return key


class SealedRecords:
    """JSON records sealed under the master key, on top of any RecordStore."""

    def __init__(self, store: RecordStore, key: AeadKey) -> None:
        self.store = store
        self._key = key
        #: opened values by sealed blob: a blob is unique per write (random AEAD nonce), so
        #: a hit is exactly the stored value; the store is still read every time
        self._opened: OrderedDict[tuple[str, str, bytes], dict[str, Any]] = OrderedDict()

    @property
    def master_key(self) -> AeadKey:
        """For the hand-over to an attested replica only (veil.cas.replicas)."""
        return self._key

    def derive_key(self, label: bytes) -> bytes:
        """A key for another purpose (nonce MACs), derived from the master key."""
        return derive_subkey(self._key, label)

    @staticmethod
    def _aad(kind: str, key: str) -> bytes:
        return _AAD_DOMAIN + kind.encode() + b"\0" + key.encode()

    def get(self, kind: str, key: str) -> tuple[int, dict[str, Any]] | None:
        record = self.store.get(kind, key)
        if record is None:
            return None
        cache_key = (kind, key, record.blob)
        cached = self._opened.get(cache_key)
        if cached is not None:
            self._opened.move_to_end(cache_key)
            return record.version, dict(cached)
        try:
            plain = open_sealed(self._key, record.blob, self._aad(kind, key))
        except DecryptionFailed:
            raise StorageCorrupted(
                f"stored record {kind}/{key} failed authentication: the CAS database was "
                "modified outside the CAS (or the master key is wrong)"
            ) from None
        value: dict[str, Any] = json.loads(plain)
        self._opened[cache_key] = value
        if len(self._opened) > _CACHE_SIZE:
            self._opened.popitem(last=False)
        return record.version, dict(value)

    def put(self, kind: str, key: str, value: dict[str, Any], expected_version: int | None) -> int:
        blob = seal(self._key, canonical_json(value), self._aad(kind, key))
        return self.store.put(kind, key, blob, expected_version)

    def delete(self, kind: str, key: str) -> bool:
        return self.store.delete(kind, key)

    def keys(self, kind: str, prefix: str = "") -> list[str]:
        return self.store.keys(kind, prefix)


__all__ = ["SealedRecords", "load_or_create_master_key"]
