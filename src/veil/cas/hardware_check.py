"""The hardware half of an attestation decision (docs/protocol.md): verify SEV-SNP, TDX or
SGX evidence with the collateral this CAS holds, apply the session's tolerances, and
compare the verdict with the service's attestation entries.

The CAS imports this module on its first hardware attestation only: the AMD and Intel
parsers, pyasn1 and X.509 path building it pulls in cost every sim `veil run` ~40 ms of
start-up otherwise (docs/benchmarks.md, "CLI start-up").
"""

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from veil.cas.reference_values import mismatch
from veil.errors import VeilError
from veil.policy.model import ConcreteAttestation, Security
from veil.protocol import Evidence
from veil.tee.hardware_evidence import HardwareEvidence
from veil.tee.intel import Collateral
from veil.tee.intel.collateral_store import collateral_for
from veil.tee.verdict import HARDWARE_PLATFORMS, appraise


@dataclass(frozen=True)
class HardwareCheck:
    """Refused with ``reason``, or accepted with the evidence's ``report_data``; ``facts``
    for the audit log either way."""

    reason: str | None
    facts: dict[str, object] = field(default_factory=dict)
    report_data: bytes = b""
    #: the attestation entries the evidence matched (their GPU requirements come next)
    matched: list[ConcreteAttestation] = field(default_factory=list)


def check_hardware(
    evidence: Evidence,
    workload: str,
    security: Security,
    entries: Callable[[], Sequence[ConcreteAttestation]],
    service_name: str,
    collateral_dir: Path | None,
    at: dt.datetime,
) -> HardwareCheck:
    """``entries`` is called only once the evidence verified (resolving them may refuse)."""
    platform = evidence.platform
    if platform not in HARDWARE_PLATFORMS:
        return HardwareCheck(f"unknown platform '{platform}'")
    try:
        parts = HardwareEvidence.from_evidence(evidence)
        collateral = _collateral_for(collateral_dir, platform, parts.primary)
    except VeilError as exc:
        return HardwareCheck(f"{platform} evidence does not verify: {exc}")
    appraisal = appraise(
        platform,
        parts.primary,
        security.tolerate,
        endorsement_key=parts.endorsement_key,
        collateral=collateral,
        at=at,
        event_log=parts.event_log,
        check_smt=True,
        allowed_advisories=security.allowed_advisories,
    )
    verdict = appraisal.verdict
    if verdict is None:
        return HardwareCheck(f"{platform} evidence does not verify: {appraisal.reason}")
    facts: dict[str, object] = {
        "measurement": verdict.measurement.hex(),
        "workload": workload,
        "tcb_status": verdict.status,
    }
    if appraisal.reason is not None:
        return HardwareCheck(appraisal.reason, facts)
    listed = list(entries())
    mismatches = [mismatch(e, verdict, workload) for e in listed]
    relevant = [m for e, m in zip(listed, mismatches, strict=True) if e.platform == platform]
    if None not in mismatches:
        detail = f": {relevant[0]}" if len(relevant) == 1 else ""
        return HardwareCheck(
            f"{platform} evidence matches no attestation entry of service '{service_name}'{detail}", facts
        )
    matched = [e for e, m in zip(listed, mismatches, strict=True) if m is None]
    return HardwareCheck(None, facts, verdict.report_data, matched)


def _collateral_for(collateral_dir: Path | None, platform: str, primary: bytes) -> Collateral | None:
    if platform == "sev-snp" or collateral_dir is None:
        return None
    return collateral_for(collateral_dir, platform, primary)
