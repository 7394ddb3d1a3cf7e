"""Single-use attestation nonces with a short lifetime, shared through the store."""

import os
import time

from veil.cas.sealing import SealedRecords
from veil.protocol import NONCE_LEN

NONCE_LIFETIME = 60
_KIND = "nonce"


_PURGE_EVERY = 256


class NonceRegistry:
    def __init__(self, records: SealedRecords) -> None:
        self._records = records
        self._issued = 0

    def issue(self) -> bytes:
        self._issued += 1
        if self._issued % _PURGE_EVERY == 0:
            self._purge_expired()
        nonce = os.urandom(NONCE_LEN)
        self._records.put(_KIND, nonce.hex(), {"expires": time.time() + NONCE_LIFETIME}, None)
        return nonce

    def consume(self, nonce: bytes) -> str | None:
        """Use a nonce up; return why it is not acceptable, or None if it was fresh."""
        with self._records.store.transaction():
            found = self._records.get(_KIND, nonce.hex())
            if found is None:
                return "nonce unknown or already used (replayed evidence?)"
            self._records.delete(_KIND, nonce.hex())
            if found[1]["expires"] < time.time():
                return f"nonce expired (nonces live {NONCE_LIFETIME} s)"
            return None

    def _purge_expired(self) -> None:
        now = time.time()
        with self._records.store.transaction():
            for key in self._records.keys(_KIND):
                found = self._records.get(_KIND, key)
                if found and found[1]["expires"] < now:
                    self._records.delete(_KIND, key)
