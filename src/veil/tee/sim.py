"""The ``sim`` platform: evidence is a statement signed by a node's Ed25519 platform key.

It runs every protocol step that hardware does, but protects nothing against root on the
host: whoever holds the platform key (or can read the runtime's memory) can forge it.

Wire format (JSON): {"statement": base64(canonical JSON), "signature": base64(Ed25519)}
with statement {"format": "veil-sim-evidence-v1", "platform_id", "measurement",
"report_data" (hex, 64 bytes), "time" (unix seconds)}.
"""

import base64
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from veil.crypto import PlatformSigningKey, SignatureInvalid, canonical_json, verify_ed25519
from veil.crypto.encoding import sha256_hex
from veil.protocol import Evidence
from veil.tee.claims import Claims, EvidenceError

FORMAT = "veil-sim-evidence-v1"
PLATFORM = "sim"
#: how far a statement's time may be from the verifier's clock.
MAX_CLOCK_SKEW = 300


@dataclass(frozen=True)
class SimEvidenceSource:
    """Signs sim evidence with a platform key held in this process (embedded mode) or a LAS."""

    key: PlatformSigningKey

    def collect(self, report_data: bytes, measurement: str) -> Evidence:
        statement = canonical_json(
            {
                "format": FORMAT,
                "platform_id": self.key.key_id,
                "measurement": measurement,
                "report_data": report_data.hex(),
                "time": int(time.time()),
            }
        )
        wire = {
            "statement": base64.b64encode(statement).decode(),
            "signature": base64.b64encode(self.key.sign(statement)).decode(),
        }
        return Evidence(PLATFORM, canonical_json(wire))


def verify_sim_evidence(
    data: bytes,
    platform_key: Callable[[str], bytes | None],
    now: float | None = None,
) -> Claims:
    """Verify a sim statement against the registered key of the platform it names."""
    try:
        wire = json.loads(data)
        statement_bytes = base64.b64decode(wire["statement"], validate=True)
        signature = base64.b64decode(wire["signature"], validate=True)
        statement = json.loads(statement_bytes)
        platform_id = str(statement["platform_id"])
        measurement = str(statement["measurement"])
        report_data = bytes.fromhex(statement["report_data"])
        produced_at = int(statement["time"])
        fmt = statement["format"]
    except (ValueError, KeyError, TypeError) as exc:
        raise EvidenceError(f"malformed sim evidence: {exc}") from None
    if fmt != FORMAT:
        raise EvidenceError(f"unknown sim evidence format '{fmt}'")
    public_key = platform_key(platform_id)
    if public_key is None:
        raise EvidenceError(f"sim platform {platform_id[:16]}… is not registered with this CAS")
    if sha256_hex(public_key) != platform_id:
        raise EvidenceError("sim platform id does not match its registered key")
    try:
        verify_ed25519(public_key, signature, statement_bytes)
    except SignatureInvalid:
        raise EvidenceError("sim evidence signature does not verify under the platform key") from None
    if len(report_data) != 64:
        raise EvidenceError("sim evidence report_data must be 64 bytes")
    clock = time.time() if now is None else now
    if abs(clock - produced_at) > MAX_CLOCK_SKEW:
        raise EvidenceError(f"sim evidence is {int(clock - produced_at)} s old or in the future")
    return Claims(
        platform=PLATFORM,
        measurement=measurement,
        report_data=report_data,
        platform_id=platform_id,
        debug=False,
        produced_at=produced_at,
        sim=True,
    )
