"""What a verifier learns from evidence, independent of the platform that produced it."""

import json
from dataclasses import dataclass
from typing import Any

from veil.errors import VeilError


class EvidenceError(VeilError):
    """Evidence is malformed, not signed by a trusted key, or otherwise unacceptable."""


def json_object(data: bytes, what: str) -> dict[str, Any]:
    """``data`` as a JSON object, or an EvidenceError saying that ``what`` is not one."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise EvidenceError(f"{what} is not JSON") from None
    if not isinstance(document, dict):
        raise EvidenceError(f"{what} is not a JSON object")
    return document


@dataclass(frozen=True)
class Claims:
    platform: str
    #: "sha256:<hex>" for sim; the platform's launch measurement for hardware.
    measurement: str
    report_data: bytes
    #: which platform (sim: key id; SNP: chip id; Intel: PPID/instance id) produced it.
    platform_id: str
    debug: bool
    #: unix seconds at which the evidence was produced (sim), or 0 if the platform has none.
    produced_at: int
    #: True when the evidence offers no hardware protection at all.
    sim: bool
