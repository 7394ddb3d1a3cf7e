"""Verifying the evidence of a peer (a CAS, a CAS replica, a CAS in recovery): any platform,
no session policy; the caller compares the measurement and the report data.

An Intel peer's TCB status is evaluated when the verifier holds a collateral store (`veil cas
attest --collateral`, `veil cas serve --collateral`: then the store must hold the peer's
FMSPC); without one it is not evaluated, and the result says so (docs/attestation.md,
"Verifying a CAS")."""

import datetime as dt
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from veil.crypto import constant_time_equal
from veil.errors import VeilError
from veil.protocol import Evidence
from veil.tee.claims import EvidenceError
from veil.tee.hardware_evidence import HardwareEvidence
from veil.tee.intel.collateral_store import collateral_for
from veil.tee.sim import verify_sim_evidence
from veil.tee.verdict import HARDWARE_PLATFORMS, NO_TCB_CHECK, appraise


def same_measurement(a: str, b: str) -> bool:
    """Two measurements are the same digest, with or without the ``sha256:`` prefix."""
    return constant_time_equal(a.removeprefix("sha256:"), b.removeprefix("sha256:"))


@dataclass(frozen=True)
class PeerEvidence:
    platform: str
    report_data: bytes
    measurement: str
    #: the Intel TCB status from the verifier's collateral; "not evaluated (no collateral)"
    #: without any; None for other platforms (SNP's TCB is in its VCEK, always checked)
    tcb_status: str | None = None

    @property
    def sim(self) -> bool:
        return self.platform == "sim"


NOT_EVALUATED = "not evaluated (no collateral)"


def verify_peer_evidence(
    evidence: Evidence,
    sim_platform: Callable[[str], bytes | None],
    tolerate: Collection[str],
    collateral_dir: Path | None = None,
    at: dt.datetime | None = None,
) -> PeerEvidence:
    """The verified evidence; ``sim_platform`` finds the public key of a sim platform id
    (None: unknown). Raises EvidenceError with the reason."""
    if evidence.platform == "sim":
        if "sim" not in tolerate:
            raise EvidenceError("sim evidence proves nothing about the machine and is not tolerated here")
        claims = verify_sim_evidence(evidence.data, sim_platform)
        return PeerEvidence("sim", claims.report_data, claims.measurement)
    if evidence.platform not in HARDWARE_PLATFORMS:
        raise EvidenceError(f"unknown platform '{evidence.platform}'")
    hardware = HardwareEvidence.from_evidence(evidence)
    intel = evidence.platform in ("tdx", "sgx")
    collateral = None
    if intel and collateral_dir is not None:
        try:
            collateral = collateral_for(collateral_dir, evidence.platform, hardware.primary)
        except VeilError as exc:
            raise EvidenceError(f"the peer's TCB cannot be evaluated: {exc}") from None
    appraisal = appraise(
        evidence.platform,
        hardware.primary,
        {*tolerate, NO_TCB_CHECK} if collateral is None else tolerate,
        endorsement_key=hardware.endorsement_key,
        collateral=collateral,
        at=at or dt.datetime.now(dt.UTC),
        event_log=hardware.event_log,
    )
    if appraisal.verdict is None or appraisal.reason is not None:
        raise EvidenceError(appraisal.reason or "the evidence does not verify")
    status = (appraisal.verdict.status or NOT_EVALUATED) if intel else None
    return PeerEvidence(
        evidence.platform, appraisal.verdict.report_data, appraisal.verdict.measurement.hex(), status
    )
