"""Attestation nonces: stateless to issue, single use, valid 60 s, checked by any replica.

A nonce is ``random(16) ‖ expiry(8, big-endian unix seconds) ‖ HMAC-SHA256(k, first 24)[:8]``
with ``k`` derived from the master key, so every replica can check it without a database
read. Using one writes a "used" mark (in the transaction of the decision's audit entry); a
second use finds the mark. Marks are named by expiry first, so expired ones are dropped
without opening them.
"""

import os
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import hashes, hmac

from veil.cas.errors import Conflict
from veil.cas.sealing import SealedRecords
from veil.crypto import constant_time_equal
from veil.protocol import NONCE_LEN

NONCE_LIFETIME = 60
_USED = "nonce-used"
_PURGE_EVERY = 1024
_RANDOM, _EXPIRY, _TAG = 16, 8, 8
assert _RANDOM + _EXPIRY + _TAG == NONCE_LEN


class NonceRegistry:
    def __init__(self, records: SealedRecords, now: Callable[[], float] = time.time) -> None:
        self._records = records
        self._key = records.derive_key(b"veil-nonce-v1")
        self._now = now
        self._used = 0

    def _tag(self, body: bytes) -> bytes:
        mac = hmac.HMAC(self._key, hashes.SHA256())
        mac.update(body)
        return mac.finalize()[:_TAG]

    def issue(self) -> bytes:
        body = os.urandom(_RANDOM) + int(self._now() + NONCE_LIFETIME).to_bytes(_EXPIRY, "big")
        return body + self._tag(body)

    def check(self, nonce: bytes) -> str | None:
        """Why ``nonce`` is not acceptable (not issued here, expired), or None."""
        body, tag = nonce[: _RANDOM + _EXPIRY], nonce[_RANDOM + _EXPIRY :]
        if len(nonce) != NONCE_LEN or not constant_time_equal(tag, self._tag(body)):
            return "nonce unknown: this CAS did not issue it"
        if int.from_bytes(body[_RANDOM:], "big") < self._now():
            return f"nonce expired (nonces live {NONCE_LIFETIME} s)"
        return None

    def use(self, nonce: bytes) -> str | None:
        """Mark a checked nonce used (call inside the decision's transaction); a reason if
        it was used before."""
        expiry = int.from_bytes(nonce[_RANDOM : _RANDOM + _EXPIRY], "big")
        self._used += 1
        if self._used % _PURGE_EVERY == 0:
            self._purge_expired()
        try:
            self._records.store.put(_USED, f"{expiry:012d}-{nonce.hex()}", b"", None)
        except Conflict:
            return "nonce unknown or already used (replayed evidence?)"
        return None

    def _purge_expired(self) -> None:
        now = self._now()
        for key in self._records.store.keys(_USED):
            if int(key.split("-", 1)[0]) >= now:
                break  # keys sort by expiry
            self._records.store.delete(_USED, key)
