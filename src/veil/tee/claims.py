"""What a verifier learns from evidence, independent of the platform that produced it."""

from dataclasses import dataclass

from veil.errors import VeilError


class EvidenceError(VeilError):
    """Evidence is malformed, not signed by a trusted key, or otherwise unacceptable."""


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
