"""Canonical encodings and hashes used wherever bytes are signed, hashed or compared."""

import hashlib
import hmac
import json
from typing import Any


def canonical_json(value: Any) -> bytes:
    """The one canonical JSON encoding veil signs and hashes.

    Keys sorted, no insignificant whitespace, UTF-8 without escaping. Values are limited to
    what JSON can carry exactly (veil never puts floats into signed structures).
    """
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha512(data: bytes) -> bytes:
    return hashlib.sha512(data).digest()


def constant_time_equal(a: bytes | str, b: bytes | str) -> bool:
    """Compare two secrets or digests without leaking where they differ."""
    if isinstance(a, str):
        a = a.encode("utf-8")
    if isinstance(b, str):
        b = b.encode("utf-8")
    return hmac.compare_digest(a, b)
