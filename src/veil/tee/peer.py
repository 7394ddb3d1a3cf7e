"""Verifying the evidence of a peer (a CAS, a CAS replica, a CAS in recovery): any platform,
no session policy; the caller compares the measurement and the report data."""

import datetime as dt
from collections.abc import Callable, Collection

from veil.crypto import constant_time_equal
from veil.protocol import Evidence
from veil.tee.claims import EvidenceError
from veil.tee.hardware_evidence import HardwareEvidence
from veil.tee.sim import verify_sim_evidence
from veil.tee.verdict import HARDWARE_PLATFORMS, NO_TCB_CHECK, appraise


def same_measurement(a: str, b: str) -> bool:
    """Two measurements are the same digest, with or without the ``sha256:`` prefix."""
    return constant_time_equal(a.removeprefix("sha256:"), b.removeprefix("sha256:"))


def verify_peer_evidence(
    evidence: Evidence, sim_platform: Callable[[str], bytes | None], tolerate: Collection[str]
) -> tuple[bytes, str]:
    """(report data, measurement) of verified evidence; ``sim_platform`` finds the public
    key of a sim platform id (None: unknown). Raises EvidenceError with the reason."""
    if evidence.platform == "sim":
        if "sim" not in tolerate:
            raise EvidenceError("sim evidence proves nothing about the machine and is not tolerated here")
        claims = verify_sim_evidence(evidence.data, sim_platform)
        return claims.report_data, claims.measurement
    if evidence.platform not in HARDWARE_PLATFORMS:
        raise EvidenceError(f"unknown platform '{evidence.platform}'")
    hardware = HardwareEvidence.from_evidence(evidence)
    # A peer's Intel TCB status is not evaluated: clients and replicas hold no collateral
    # yet (docs/attestation.md, "Verifying a CAS"). Said here, not silently.
    appraisal = appraise(
        evidence.platform,
        hardware.primary,
        {*tolerate, NO_TCB_CHECK},
        endorsement_key=hardware.endorsement_key,
        at=dt.datetime.now(dt.UTC),
        event_log=hardware.event_log,
    )
    if appraisal.verdict is None or appraisal.reason is not None:
        raise EvidenceError(appraisal.reason or "the evidence does not verify")
    return appraisal.verdict.report_data, appraisal.verdict.measurement.hex()
