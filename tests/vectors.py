"""The real-hardware vectors in ../shared/vectors (see its README); tests read them as data."""

import datetime as dt
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "shared" / "vectors"

requires_vectors = pytest.mark.skipif(not ROOT.is_dir(), reason="shared/vectors is not beside the checkout")


def vector(path: str) -> bytes:
    return (ROOT / path).read_bytes()


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


# Verification times inside each case's window (vectors README, section 3).
T_A = at("2025-07-19T10:01:17Z")
T_B = at("2025-07-19T10:00:34Z")
T_C = at("2023-07-01T01:00:00Z")
T_D = at("2025-01-01T00:00:00Z")
T_E = at("2025-01-01T00:00:00Z")
T_SNP = at("2025-01-01T00:00:00Z")
