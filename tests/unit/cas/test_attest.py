"""The attestation decision: every check, positive and negative, through the real protocol."""

from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import EmbeddedCas, session_yaml
from veil.client import EmbeddedCasClient
from veil.crypto import PlatformSigningKey
from veil.protocol import AttestationRefused, AttestationRequest
from veil.runtime.attest import provision
from veil.tee import SimEvidenceSource

M = "sha256:" + "ab" * 32


def make_session(embedded: EmbeddedCas, **kwargs: object) -> None:
    embedded.cas.create_session(
        session_yaml(
            measurement=M,
            command=["/bin/true", "$$VEIL::pw$$"],
            environment={"PW": "$$VEIL::pw$$"},
            files=[{"path": "/etc/x.conf", "content": "pw=$$VEIL::pw$$\n", "mode": "0400"}],
            **kwargs,  # type: ignore[arg-type]
        ),
        "local",
    )


def refusal(embedded: EmbeddedCas, source: SimEvidenceSource | None = None, measurement: str = M) -> str:
    with pytest.raises(AttestationRefused) as caught:
        provision(
            EmbeddedCasClient(embedded.cas),
            source or SimEvidenceSource(embedded.platform),
            "test/app/app",
            measurement,
        )
    return caught.value.reason


def test_an_attested_runtime_receives_its_configuration(embedded: EmbeddedCas) -> None:
    make_session(embedded)
    got = provision(EmbeddedCasClient(embedded.cas), SimEvidenceSource(embedded.platform), "test/app/app", M)
    secret = embedded.cas._secret_lookup("test/app")["pw"].decode()
    assert got.bundle.argv == ["/bin/true", secret]
    assert got.bundle.environment == {"PW": secret}
    assert got.bundle.files[0].content == f"pw={secret}\n".encode()
    assert got.bundle.files[0].mode == 0o400
    assert got.sim
    assert got.instance_certificate.issuer == got.session_ca.subject
    got.session_ca.public_key().verify(  # type: ignore[union-attr]
        got.instance_certificate.signature,
        got.instance_certificate.tbs_certificate_bytes,
        ec.ECDSA(got.instance_certificate.signature_hash_algorithm),  # type: ignore[arg-type]
    )
    assert secret not in repr(got.bundle)
    events = [e.event for e in embedded.cas.audit.entries()]
    assert events[-1]["event"] == "attest.grant" and events[-1]["sim"] is True
    assert all(secret not in str(e) for e in events)


def test_a_wrong_measurement_is_refused_with_its_reason(embedded: EmbeddedCas) -> None:
    make_session(embedded)
    other = "sha256:" + "cd" * 32
    reason = refusal(embedded, measurement=other)
    assert reason == f"measurement {other} matches no attestation entry of service 'app'"
    last = embedded.cas.audit.entries()[-1].event
    assert last["event"] == "attest.refuse" and last["reason"] == reason


def test_sim_evidence_is_refused_when_sim_is_not_tolerated(embedded: EmbeddedCas) -> None:
    make_session(embedded, tolerate=[])
    assert "does not tolerate sim evidence" in refusal(embedded)


def test_an_unregistered_sim_platform_is_refused(embedded: EmbeddedCas) -> None:
    make_session(embedded)
    assert "is not registered" in refusal(embedded, SimEvidenceSource(PlatformSigningKey.generate()))


def test_unknown_session_and_service_are_refused(embedded: EmbeddedCas) -> None:
    make_session(embedded)
    client = EmbeddedCasClient(embedded.cas)
    for config_id, expected in (
        ("nope/x/app", "unknown session 'nope/x'"),
        ("test/app/db", "has no service 'db'"),
    ):
        with pytest.raises(AttestationRefused, match=expected):
            provision(client, SimEvidenceSource(embedded.platform), config_id, M)


class _Recorder:
    """A CAS client that remembers the last request, so a test can replay or alter it."""

    def __init__(self, inner: EmbeddedCasClient) -> None:
        self.inner = inner
        self.last: AttestationRequest | None = None
        self.sim = True

    def nonce(self) -> bytes:
        return self.inner.nonce()

    def attest(self, request: AttestationRequest):  # type: ignore[no-untyped-def]
        self.last = request
        return self.inner.attest(request)


def test_a_replayed_nonce_is_refused(embedded: EmbeddedCas) -> None:
    make_session(embedded)
    recorder = _Recorder(EmbeddedCasClient(embedded.cas))
    provision(recorder, SimEvidenceSource(embedded.platform), "test/app/app", M)
    assert recorder.last is not None
    with pytest.raises(AttestationRefused, match="nonce unknown or already used"):
        embedded.cas.attest(recorder.last)


def test_a_nonce_the_cas_never_issued_is_refused(embedded: EmbeddedCas) -> None:
    make_session(embedded)
    recorder = _Recorder(EmbeddedCasClient(embedded.cas))
    provision(recorder, SimEvidenceSource(embedded.platform), "test/app/app", M)
    assert recorder.last is not None
    forged = replace(recorder.last, nonce=bytes(32))
    with pytest.raises(AttestationRefused, match="nonce unknown"):
        embedded.cas.attest(forged)


def test_an_expired_or_altered_nonce_is_refused_and_audited(embedded: EmbeddedCas) -> None:
    make_session(embedded)
    nonces = embedded.cas.nonces
    issued = nonces.issue()
    assert nonces.check(issued) is None
    altered = issued[:16] + (int.from_bytes(issued[16:24], "big") + 3600).to_bytes(8, "big") + issued[24:]
    assert nonces.check(altered) == "nonce unknown: this CAS did not issue it"  # lifetime extended
    later = nonces._now
    nonces._now = lambda: later() + 61  # type: ignore[method-assign]
    assert nonces.check(issued) == "nonce expired (nonces live 60 s)"
    nonces._now = later  # type: ignore[method-assign]
    recorder = _Recorder(EmbeddedCasClient(embedded.cas))
    provision(recorder, SimEvidenceSource(embedded.platform), "test/app/app", M)
    assert recorder.last is not None
    nonces._now = lambda: later() + 61  # type: ignore[method-assign]
    with pytest.raises(AttestationRefused, match="nonce expired"):
        embedded.cas.attest(replace(recorder.last, nonce=issued))
    assert embedded.cas.audit.entries()[-1].event["reason"] == "nonce expired (nonces live 60 s)"


def test_evidence_for_other_keys_is_refused(embedded: EmbeddedCas) -> None:
    """A man in the middle who swaps in his own bundle key cannot reuse honest evidence."""
    make_session(embedded)
    recorder = _Recorder(EmbeddedCasClient(embedded.cas))
    honest = recorder.last
    # Take evidence from an honest exchange, then submit it with a fresh nonce and other keys.
    provision(recorder, SimEvidenceSource(embedded.platform), "test/app/app", M)
    honest = recorder.last
    assert honest is not None
    swapped = replace(honest, nonce=embedded.cas.new_nonce(), bundle_public_key=bytes(range(32)))
    with pytest.raises(AttestationRefused, match="report_data does not bind"):
        embedded.cas.attest(swapped)
