"""TPM 2.0 quotes on the vector of section 9.2 of ../shared/vectors/README.md: what it says,
every way a change is refused, and the decision (an uncertified AK is not accepted silently)."""

import base64
import json
import random

import pytest

from tests.vectors import requires_vectors, vector
from veil.tee.claims import EvidenceError
from veil.tee.tpm import QuoteInfo, nonce_matches, verify_tpm_quote
from veil.tee.verdict import appraise, verify_hardware_evidence

pytestmark = requires_vectors

EVIDENCE = "trustee/tpm_evidence.json"
NONCE = bytes.fromhex(
    "a04182b506878d4f29b91ee606a71a0d3361ccf1b22db20c98adcaa537bea393ef0e41a18b3569ab678f1497fbc5c120"
)


def document() -> dict:  # type: ignore[type-arg]
    return json.loads(vector(EVIDENCE))


def encoded(doc: dict) -> bytes:  # type: ignore[type-arg]
    return json.dumps(doc).encode()


def with_message(change: "bytes") -> bytes:
    doc = document()
    doc["tpm_quote"]["message"] = base64.b64encode(change).decode()
    return encoded(doc)


def message() -> bytes:
    return base64.b64decode(document()["tpm_quote"]["message"])


def test_the_vector_verifies_with_the_readme_values() -> None:
    verified = verify_tpm_quote(vector(EVIDENCE))
    assert verified.quote.extra_data == NONCE + bytes(16)
    assert verified.quote.selection == ((0x000B, tuple(range(24))),)
    assert len(verified.pcrs) == 24
    verdict = verify_hardware_evidence("tpm", vector(EVIDENCE))
    assert verdict.claims["ak_certified"] is False and verdict.claims["signature_algorithm"] == "RSASSA"
    assert verdict.report_data == NONCE + bytes(16) and verdict.measurement == verified.quote.pcr_digest
    assert "not tied to a manufacturer" in verdict.notes[0]


def test_an_uncertified_ak_is_accepted_only_when_said_and_the_nonce_is_checked() -> None:
    refused = appraise("tpm", vector(EVIDENCE), [])
    assert refused.accepted is False and refused.verdict is not None
    assert "not tied to a manufacturer" in (refused.reason or "")
    assert appraise("tpm", vector(EVIDENCE), ["uncertified-ak"], nonce=NONCE).accepted
    other = appraise("tpm", vector(EVIDENCE), ["uncertified-ak"], nonce=b"\x00" + NONCE[1:])
    assert other.accepted is False and "does not carry the nonce" in (other.reason or "")
    assert nonce_matches(NONCE + bytes(16), NONCE) and not nonce_matches(NONCE + b"\x01", NONCE)
    assert not nonce_matches(NONCE, b"")


@pytest.mark.parametrize(
    ("change", "message_part"),
    [
        (lambda m: m[:-1], "runs past the end"),
        (lambda m: m + b"\x00", "bytes after its end"),
        (lambda m: b"\x00" + m[1:], "not TPM_GENERATED_VALUE"),
        (lambda m: m[:4] + b"\x80\x17" + m[6:], "not a quote"),
        (lambda m: m[:20] + bytes([m[20] ^ 1]) + m[21:], "signature does not verify"),
    ],
)
def test_a_changed_message_is_refused(change: object, message_part: str) -> None:
    with pytest.raises(EvidenceError, match=message_part):
        verify_tpm_quote(with_message(change(message())))  # type: ignore[operator]


def test_a_changed_pcr_or_signature_or_key_is_refused() -> None:
    doc = document()
    doc["tpm_quote"]["pcrs"][7] = "11" * 32
    with pytest.raises(EvidenceError, match="do not match the quoted PCR digest"):
        verify_tpm_quote(encoded(doc))
    doc = document()
    signature = bytearray(base64.b64decode(doc["tpm_quote"]["signature"]))
    signature[-1] ^= 1
    doc["tpm_quote"]["signature"] = base64.b64encode(bytes(signature)).decode()
    with pytest.raises(EvidenceError, match="signature does not verify"):
        verify_tpm_quote(encoded(doc))
    doc = document()
    doc["ak_public"] = "AAAA"
    with pytest.raises(EvidenceError, match="not a DER SubjectPublicKeyInfo"):
        verify_tpm_quote(encoded(doc))
    doc = document()
    doc["tpm_quote"]["pcrs"] = doc["tpm_quote"]["pcrs"][:5]
    with pytest.raises(EvidenceError, match="gives only 5 PCRs"):
        verify_tpm_quote(encoded(doc))
    with pytest.raises(EvidenceError, match="not JSON"):
        verify_tpm_quote(b"\xff\x54\x43\x47")


def test_a_thousand_random_byte_flips_are_refused_without_an_internal_error() -> None:
    rng = random.Random(20261207)
    signature = base64.b64decode(document()["tpm_quote"]["signature"])
    original = message()
    for _ in range(1000):
        doc = document()
        which = rng.choice(("message", "signature"))
        raw = bytearray(original if which == "message" else signature)
        raw[rng.randrange(len(raw))] ^= rng.randrange(1, 256)
        doc["tpm_quote"][which] = base64.b64encode(bytes(raw)).decode()
        with pytest.raises(EvidenceError):
            verify_tpm_quote(encoded(doc))


def test_quote_info_parses_on_its_own() -> None:
    info = QuoteInfo.parse(message())
    assert info.safe is True or info.safe is False
    assert len(info.qualified_signer) == 34 and len(info.pcr_digest) == 32
