"""The running replica's side of the hand-over: only an attested replica of the same
measurement, on a known platform, with a fresh nonce, receives the master key."""

from pathlib import Path

import pytest

from veil.cas import Cas
from veil.cas.custody import JOIN_DOMAIN, transfer_info, transfer_report_data
from veil.cas.replicas import JoinRequest, grant_join
from veil.crypto import BundleKeyPair, PlatformSigningKey, open_to_key
from veil.protocol import AttestationRefused
from veil.tee import SimEvidenceSource

MEASUREMENT = "sha256:" + "ab" * 32


def _request(
    cas: Cas, platform: PlatformSigningKey, measurement: str = MEASUREMENT
) -> tuple[JoinRequest, BundleKeyPair]:
    keys, nonce = BundleKeyPair.generate(), cas.new_nonce()
    evidence = SimEvidenceSource(platform).collect(
        transfer_report_data(JOIN_DOMAIN, nonce, keys.public_bytes), measurement
    )
    return JoinRequest(nonce, keys.public_bytes, evidence), keys


@pytest.fixture
def cas(tmp_path: Path) -> Cas:
    return Cas.open_embedded(tmp_path / "cas")


def test_an_attested_replica_on_a_registered_platform_receives_the_master_key(cas: Cas) -> None:
    node = PlatformSigningKey.generate()
    cas.register_sim_platform(node.public_bytes, "owner")
    request, keys = _request(cas, node)
    sealed = grant_join(cas, MEASUREMENT, None, request)
    assert open_to_key(sealed, keys, transfer_info(JOIN_DOMAIN, request.nonce)) == cas.records.master_key.raw


def test_the_replicas_own_platform_is_known_without_registration(cas: Cas) -> None:
    own = PlatformSigningKey.generate()
    request, _ = _request(cas, own)
    grant_join(cas, MEASUREMENT, own.public_bytes, request)


@pytest.mark.parametrize("case", ["unknown platform", "other measurement", "replayed nonce", "other key"])
def test_a_join_is_refused_and_audited(cas: Cas, case: str) -> None:
    node = PlatformSigningKey.generate()
    if case != "unknown platform":
        cas.register_sim_platform(node.public_bytes, "owner")
    request, _ = _request(cas, node, "sha256:" + "cd" * 32 if case == "other measurement" else MEASUREMENT)
    if case == "replayed nonce":
        grant_join(cas, MEASUREMENT, None, request)
    if case == "other key":
        request = JoinRequest(request.nonce, BundleKeyPair.generate().public_bytes, request.evidence)
    reason = {
        "unknown platform": "platform",
        "other measurement": "runs measurement",
        "replayed nonce": "used",
        "other key": "does not bind",
    }[case]
    with pytest.raises(AttestationRefused, match=reason):
        grant_join(cas, MEASUREMENT, None, request)
    last = cas.audit.entries()[-1]
    assert (last.event["event"], last.event["granted"]) == ("replica.join", False)
