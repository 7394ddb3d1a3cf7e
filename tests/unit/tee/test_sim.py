"""sim evidence: signed by a registered platform key, fresh, and unforgeable without it."""

import base64
import json
import time

import pytest

from veil.crypto import PlatformSigningKey
from veil.tee import EvidenceError, SimEvidenceSource, verify_sim_evidence

REPORT_DATA = bytes(range(64))
MEASUREMENT = "sha256:" + "11" * 32


@pytest.fixture
def platform() -> PlatformSigningKey:
    return PlatformSigningKey.generate()


def registry(*keys: PlatformSigningKey):  # type: ignore[no-untyped-def]
    known = {k.key_id: k.public_bytes for k in keys}
    return known.get


def test_valid_evidence_gives_its_claims(platform: PlatformSigningKey) -> None:
    evidence = SimEvidenceSource(platform).collect(REPORT_DATA, MEASUREMENT)
    claims = verify_sim_evidence(evidence.data, registry(platform))
    assert claims.sim and claims.platform == "sim"
    assert claims.measurement == MEASUREMENT
    assert claims.report_data == REPORT_DATA
    assert claims.platform_id == platform.key_id


def test_unregistered_platform_is_refused(platform: PlatformSigningKey) -> None:
    evidence = SimEvidenceSource(platform).collect(REPORT_DATA, MEASUREMENT)
    with pytest.raises(EvidenceError, match="not registered"):
        verify_sim_evidence(evidence.data, registry(PlatformSigningKey.generate()))


def test_a_modified_statement_is_refused(platform: PlatformSigningKey) -> None:
    evidence = SimEvidenceSource(platform).collect(REPORT_DATA, MEASUREMENT)
    wire = json.loads(evidence.data)
    statement = json.loads(base64.b64decode(wire["statement"]))
    statement["measurement"] = "sha256:" + "22" * 32
    wire["statement"] = base64.b64encode(json.dumps(statement).encode()).decode()
    with pytest.raises(EvidenceError, match="signature does not verify"):
        verify_sim_evidence(json.dumps(wire).encode(), registry(platform))


def test_evidence_signed_by_another_key_claiming_the_platform_is_refused(
    platform: PlatformSigningKey,
) -> None:
    forger = PlatformSigningKey.generate()
    evidence = SimEvidenceSource(forger).collect(REPORT_DATA, MEASUREMENT)
    wire = json.loads(evidence.data)
    statement = json.loads(base64.b64decode(wire["statement"]))
    statement["platform_id"] = platform.key_id
    raw = json.dumps(statement).encode()
    wire = {
        "statement": base64.b64encode(raw).decode(),
        "signature": base64.b64encode(forger.sign(raw)).decode(),
    }
    with pytest.raises(EvidenceError, match="signature does not verify"):
        verify_sim_evidence(json.dumps(wire).encode(), registry(platform))


def test_stale_evidence_is_refused(platform: PlatformSigningKey) -> None:
    evidence = SimEvidenceSource(platform).collect(REPORT_DATA, MEASUREMENT)
    with pytest.raises(EvidenceError, match="old"):
        verify_sim_evidence(evidence.data, registry(platform), now=time.time() + 3600)


@pytest.mark.parametrize("garbage", [b"", b"{}", b"not json", b'{"statement": "!!", "signature": ""}'])
def test_malformed_evidence_is_refused(platform: PlatformSigningKey, garbage: bytes) -> None:
    with pytest.raises(EvidenceError, match="malformed"):
        verify_sim_evidence(garbage, registry(platform))
