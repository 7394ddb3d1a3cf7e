"""Where a runtime's evidence comes from: ``VEIL_MODE=sim|hw|auto``.

sim: the node's sim platform key. hw: the machine's TEE (configfs-tsm, /dev/sev-guest,
Gramine's /dev/attestation), refusing to fall back. auto: hw when a TEE interface exists,
otherwise sim (and says so).
"""

import os
from dataclasses import dataclass
from pathlib import Path

from veil.crypto import PlatformSigningKey
from veil.protocol import Evidence, EvidenceSource
from veil.runtime.errors import RuntimeFailure
from veil.tee import SimEvidenceSource
from veil.tee.collect import GRAMINE_ATTESTATION, SEV_GUEST, TSM_REPORT, HardwareSource, hardware_source

MODES = ("sim", "hw", "auto")


@dataclass(frozen=True)
class HardwareEvidenceSource:
    source: HardwareSource

    def collect(self, report_data: bytes, measurement: str) -> Evidence:
        # The measurement travels in the request; the TEE signs report_data, which binds it.
        return self.source.collect(report_data).to_evidence()


def detect_hardware() -> HardwareSource | None:
    """The TEE interface of this machine; paths can be moved with VEIL_TSM_ROOT,
    VEIL_SEV_GUEST and VEIL_GRAMINE_ATTESTATION (containers that mount them elsewhere)."""
    env = os.environ
    return hardware_source(
        Path(env.get("VEIL_TSM_ROOT", str(TSM_REPORT))),
        Path(env.get("VEIL_SEV_GUEST", str(SEV_GUEST))),
        Path(env.get("VEIL_GRAMINE_ATTESTATION", str(GRAMINE_ATTESTATION))),
    )


def resolve_mode(mode: str) -> str:
    """``sim`` or ``hw`` for a requested mode."""
    if mode not in MODES:
        raise RuntimeFailure(f"VEIL_MODE must be one of {', '.join(MODES)}, not '{mode}'")
    if mode == "sim":
        return "sim"
    if detect_hardware() is not None:
        return "hw"
    if mode == "hw":
        raise RuntimeFailure(
            "VEIL_MODE=hw, but this machine offers no TEE interface "
            "(no configfs-tsm report directory, no /dev/sev-guest, no Gramine /dev/attestation)"
        )
    return "sim"


def evidence_source(mode: str, platform_key: PlatformSigningKey) -> EvidenceSource:
    if resolve_mode(mode) == "sim":
        return SimEvidenceSource(platform_key)
    found = detect_hardware()
    assert found is not None
    return HardwareEvidenceSource(found)
