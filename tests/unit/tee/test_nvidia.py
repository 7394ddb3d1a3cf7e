"""NVIDIA H100 evidence on the vectors of section 9.3 of ../shared/vectors/README.md: the
claims equal nvtrust's claims file, the negative chains are refused, the signature is found
by parsing (trailing bytes tolerated), and random byte flips are refused."""

import json
import random

import pytest

from tests.vectors import ROOT, requires_vectors
from veil.tee.claims import EvidenceError
from veil.tee.nvidia import parse_report, verify_gpu_report
from veil.tee.verdict import appraise, verify_hardware_evidence

pytestmark = requires_vectors

DIR = ROOT / "trustee" / "nvidia"
NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")


def report() -> bytes:
    return bytes.fromhex((DIR / "hopperAttestationReport.txt").read_text().strip())


def chain(case: int = 1) -> bytes:
    return (DIR / f"hopper_cert_chain_case{case}.txt").read_bytes()


def test_the_claims_are_those_of_nvtrusts_claims_file() -> None:
    expected = json.loads((DIR / "hopperAttestationReport-claims.txt").read_text())
    verdict = verify_hardware_evidence("nvidia-gpu", report(), endorsement_key=chain())
    claims = verdict.claims
    assert claims["measurements"] == expected["measurements"] and len(claims["measurements"]) == 64
    for key, value in expected["config"].items():
        assert claims[key] == value, key
    assert verdict.report_data == NONCE and claims["measurements_compared"] is False
    assert verdict.measurement.hex() == expected["config"]["fwid"]


def test_the_decision_needs_the_nonce_and_no_rim_check() -> None:
    refused = appraise("nvidia-gpu", report(), [], endorsement_key=chain(), nonce=NONCE)
    assert not refused.accepted and "no-rim-check" in (refused.reason or "")
    assert appraise("nvidia-gpu", report(), ["no-rim-check"], endorsement_key=chain(), nonce=NONCE).accepted
    other = appraise("nvidia-gpu", report(), ["no-rim-check"], endorsement_key=chain(), nonce=bytes(32))
    assert not other.accepted and "does not carry the nonce" in (other.reason or "")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (2, "at least the signing certificate and the root"),
        (3, "is not issued by"),
        (4, "signature does not verify"),
    ],
)
def test_the_negative_chains_are_refused(case: int, message: str) -> None:
    with pytest.raises(EvidenceError, match=message):
        verify_gpu_report(report(), chain(case))


def test_a_chain_to_another_root_is_refused() -> None:
    certificates = chain().split(b"-----END CERTIFICATE-----")
    without_root = b"-----END CERTIFICATE-----".join(certificates[:-2]) + b"-----END CERTIFICATE-----\n"
    with pytest.raises(EvidenceError, match="NVIDIA Device Identity CA"):
        verify_gpu_report(report(), without_root)


def test_the_signature_is_found_by_parsing_and_trailing_bytes_are_reported() -> None:
    padded = report() + b"\x00" * 17
    verified = verify_gpu_report(padded, chain())
    assert verified.report.trailing == 17
    assert len(parse_report(report()).signature) == 96


def test_a_thousand_random_byte_flips_are_refused_without_an_internal_error() -> None:
    rng = random.Random(20261207)
    original = report()
    for _ in range(1000):
        raw = bytearray(original)
        raw[rng.randrange(len(raw))] ^= rng.randrange(1, 256)
        with pytest.raises(EvidenceError):
            verify_gpu_report(bytes(raw), chain())
