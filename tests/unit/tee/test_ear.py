"""Attestation results (EAR) as relying parties read them: with an independent JWT library."""

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from veil.tee.ear import EAR_VALIDITY, ResultSigner, ear_status

FACTS = {
    "config_id": "team/app/web",
    "platform": "tdx",
    "session_hash": "ab" * 32,
    "measurement": "cd" * 48,
    "tcb_status": "UpToDate",
    "certificate": "ef" * 32,
}


def test_an_ear_verifies_against_the_published_key_and_carries_the_decision() -> None:
    signer = ResultSigner(ec.generate_private_key(ec.SECP256R1()), "kid-1")
    issued = int(time.time()) - EAR_VALIDITY - 60  # already expired: checked at the end
    token = signer.issue(FACTS, sim=False, nonce=b"\x01" * 32, now=issued)
    key = jwt.PyJWKSet.from_dict(signer.jwks()).keys[0]
    claims = jwt.decode(token, key=key, algorithms=["ES256"], options={"verify_exp": False})
    assert jwt.get_unverified_header(token)["kid"] == "kid-1"
    assert claims["iat"] == issued and claims["exp"] == issued + EAR_VALIDITY
    assert claims["eat_nonce"] == "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE"
    cpu = claims["submods"]["cpu"]
    assert cpu["ear.status"] == "affirming"
    assert cpu["ear.appraisal-policy-id"] == f"veil:session:team/app@{'ab' * 32}"
    assert cpu["ear.veil.claims"] == {**FACTS, "sim": False}
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(token, key=key, algorithms=["ES256"])


@pytest.mark.parametrize(
    ("platform", "sim", "status", "expected"),
    [
        ("tdx", False, "UpToDate", "affirming"),
        ("sev-snp", False, None, "affirming"),
        ("sgx", False, "SWHardeningNeeded", "warning"),
        ("tdx", False, None, "warning"),  # no-tcb-check: the TCB was not evaluated
        ("sim", True, None, "warning"),
    ],
)
def test_the_status_says_what_was_tolerated(
    platform: str, sim: bool, status: str | None, expected: str
) -> None:
    assert ear_status(platform, sim, status) == expected
