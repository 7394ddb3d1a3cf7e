"""How hardware evidence travels from a runtime to the CAS (``Evidence.data`` for sev-snp,
tdx and sgx): canonical JSON with base64 members.

sev-snp: {"report": ..., "vcek": ... (DER of the VCEK or VLEK, optional if the CAS has it)}
tdx/sgx: {"quote": ..., "event_log": ... (TDX CCEL, optional)}
nvidia-gpu (a device beside the CPU TEE): {"report": SPDM request and response,
"certificates": the device certificate chain, PEM}
"""

import base64
import json
from dataclasses import dataclass

from veil.crypto import canonical_json
from veil.protocol import Evidence
from veil.tee.claims import EvidenceError


@dataclass(frozen=True)
class HardwareEvidence:
    platform: str
    primary: bytes
    endorsement_key: bytes | None = None
    event_log: bytes | None = None

    def to_evidence(self) -> Evidence:
        main, endorsement = _members(self.platform)
        wire: dict[str, str] = {main: base64.b64encode(self.primary).decode()}
        if self.endorsement_key is not None:
            wire[endorsement] = base64.b64encode(self.endorsement_key).decode()
        if self.event_log is not None:
            wire["event_log"] = base64.b64encode(self.event_log).decode()
        return Evidence(self.platform, canonical_json(wire))

    @classmethod
    def from_evidence(cls, evidence: Evidence) -> "HardwareEvidence":
        main, endorsement = _members(evidence.platform)
        try:
            wire = json.loads(evidence.data)

            def member(name: str) -> bytes | None:
                return base64.b64decode(wire[name], validate=True) if name in wire else None

            primary = member(main)
            if primary is None:
                raise KeyError(main)
            return cls(evidence.platform, primary, member(endorsement), member("event_log"))
        except (ValueError, KeyError, TypeError) as exc:
            raise EvidenceError(f"malformed {evidence.platform} evidence: {exc}") from None


def _members(platform: str) -> tuple[str, str]:
    """The names of the evidence's main member and of its endorsement."""
    if platform == "nvidia-gpu":
        return "report", "certificates"
    return ("report" if platform == "sev-snp" else "quote"), "vcek"
