"""A session that requires an NVIDIA H100 beside the CPU TEE: the CAS releases secrets only
when the CPU evidence and the GPU's real SPDM report (vectors, section 9.3) both verify and
carry the same nonce, and the GPU is the one the entry describes.

Real GPU evidence carries the nonce of the run that made it, so the CAS of these tests is
told it issued that nonce (the one seam: its MAC check); the binding itself is not touched.
The CPU side is sim evidence over that nonce."""

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import EmbeddedCas, session_dict
from tests.vectors import ROOT, requires_vectors
from veil.cas.device_check import check_devices
from veil.client import EmbeddedCasClient
from veil.policy import parse_session, session_hash
from veil.protocol import AttestationRefused, Evidence, LaunchDescriptor, ProtocolError
from veil.runtime.attest import Provisioned, provision
from veil.tee import SimEvidenceSource
from veil.tee.ear import ResultSigner
from veil.tee.hardware_evidence import HardwareEvidence

pytestmark = requires_vectors

DIR = ROOT / "trustee" / "nvidia"
NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
M = "sha256:" + "ab" * 32
#: the FWID of the vectors' signing certificate (../shared/vectors/README.md, section 9.3)
FWID = "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d"


def claims() -> dict[str, Any]:
    """nvtrust's claims of the vector report (read when a test runs: without the vectors
    the module is still collected, and skipped)."""
    return dict(json.loads((DIR / "hopperAttestationReport-claims.txt").read_text()))


def gpu_evidence(report: bytes | None = None, chain_case: int = 1) -> Evidence:
    data = (
        report
        if report is not None
        else bytes.fromhex((DIR / "hopperAttestationReport.txt").read_text().strip())
    )
    chain = (DIR / f"hopper_cert_chain_case{chain_case}.txt").read_bytes()
    return HardwareEvidence("nvidia-gpu", data, chain).to_evidence()


class _VectorNonceClient(EmbeddedCasClient):
    """The runtime's client, given the nonce the GPU vector was made with."""

    def nonce(self) -> bytes:
        return NONCE


def with_gpus(embedded: EmbeddedCas, gpus: list[dict[str, object]] | None) -> None:
    document = session_dict(measurement=M, command=["/bin/true"])
    if gpus is not None:
        document["services"][0]["attestation"][0]["gpus"] = gpus
    embedded.cas.create_session(yaml.safe_dump(document), "local")
    issued = embedded.cas.nonces.check
    embedded.cas.nonces.check = lambda nonce: None if nonce == NONCE else issued(nonce)  # type: ignore[method-assign]


def forget_used_nonces(embedded: EmbeddedCas) -> None:
    """Each test attempt uses the vector's one nonce: its "used" mark is dropped first."""
    store = embedded.cas.records.store
    with store.transaction():
        for key in store.keys("nonce-used"):
            store.delete("nonce-used", key)


def attest(
    embedded: EmbeddedCas, devices: Sequence[Evidence], vector_nonce: bool = True, replay: bool = False
) -> Provisioned:
    if not replay:
        forget_used_nonces(embedded)
    client = _VectorNonceClient(embedded.cas) if vector_nonce else EmbeddedCasClient(embedded.cas)
    return provision(client, SimEvidenceSource(embedded.platform), "test/app/app", M, lambda _: devices)


def refused(
    embedded: EmbeddedCas, devices: Sequence[Evidence], vector_nonce: bool = True, replay: bool = False
) -> str:
    with pytest.raises(AttestationRefused) as caught:
        attest(embedded, devices, vector_nonce, replay)
    return caught.value.reason


def test_cpu_and_gpu_bound_to_one_nonce_receive_the_secrets(embedded: EmbeddedCas) -> None:
    assert claims()["config"]["fwid"] == FWID
    with_gpus(
        embedded,
        [
            {
                "platform": "nvidia-gpu",
                "driver_version": "550.90.07",
                "vbios_version": "96.00.9F.00.01",  # case does not matter
                "fwid": FWID,
                "measurements": {1: claims()["measurements"]["1"], 64: claims()["measurements"]["64"]},
            }
        ],
    )
    granted = attest(embedded, [gpu_evidence()])
    assert len(granted.bundle.environment) == 0 and granted.sim
    last = embedded.cas.audit.entries()[-1].event
    assert last["event"] == "attest.grant"
    assert last["gpus"] == [{"fwid": FWID, "driver_version": "550.90.07", "vbios_version": "96.00.9f.00.01"}]


def test_the_gpus_nonce_is_single_use_too(embedded: EmbeddedCas) -> None:
    with_gpus(embedded, [{"platform": "nvidia-gpu"}])
    attest(embedded, [gpu_evidence()])
    assert "already used" in refused(embedded, [gpu_evidence()], replay=True)


def test_a_session_that_requires_a_gpu_refuses_a_runtime_without_one(embedded: EmbeddedCas) -> None:
    with_gpus(embedded, [{"platform": "nvidia-gpu"}])
    assert "requires 1 NVIDIA GPU(s) beside the CPU TEE; the evidence has 0 GPU reports" in refused(
        embedded, []
    )


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ({"driver_version": "535.86.10"}, "GPU driver_version 550.90.07 is not the expected 535.86.10"),
        ({"vbios_version": "96.00.5e.00.01"}, "GPU vbios_version 96.00.9f.00.01 is not the expected"),
        ({"fwid": "00" * 48}, "GPU FWID f5c384aebb579217… is not the expected"),
        ({"measurements": {3: "00" * 48}}, "GPU measurement 3 "),
        ({"measurements": {65: "00" * 48}}, "GPU measurement 65 is missing from the report"),
    ],
)
def test_another_gpu_than_the_entry_describes_is_refused(
    embedded: EmbeddedCas, entry: dict[str, object], reason: str
) -> None:
    with_gpus(embedded, [{"platform": "nvidia-gpu", **entry}])
    assert reason in refused(embedded, [gpu_evidence()])


def test_two_required_gpus_need_two_reports(embedded: EmbeddedCas) -> None:
    with_gpus(embedded, [{"platform": "nvidia-gpu"}, {"platform": "nvidia-gpu"}])
    assert "the evidence has 1 GPU report" in refused(embedded, [gpu_evidence()])
    attest(embedded, [gpu_evidence(), gpu_evidence()])  # the same GPU's report twice: the vector set has one


def test_a_gpu_report_made_for_another_nonce_is_refused(embedded: EmbeddedCas) -> None:
    with_gpus(embedded, [{"platform": "nvidia-gpu"}])
    reason = refused(embedded, [gpu_evidence()], vector_nonce=False)  # a fresh nonce of this CAS
    assert "not bound to this attestation's nonce" in reason


def test_a_tampered_gpu_report_or_a_broken_chain_is_refused(embedded: EmbeddedCas) -> None:
    with_gpus(embedded, [{"platform": "nvidia-gpu"}])
    report = bytearray(bytes.fromhex((DIR / "hopperAttestationReport.txt").read_text().strip()))
    report[200] ^= 1
    assert "does not verify" in refused(embedded, [gpu_evidence(bytes(report))])
    assert "does not verify" in refused(embedded, [gpu_evidence(chain_case=3)])
    assert "unknown device platform" in refused(embedded, [Evidence("amd-gpu", b"{}")])
    entries = [e.event for e in embedded.cas.audit.entries()]
    assert [e["event"] for e in entries[-3:]] == ["attest.refuse"] * 3


def test_a_session_without_gpus_still_verifies_a_gpu_it_is_sent(embedded: EmbeddedCas) -> None:
    with_gpus(embedded, None)
    attest(embedded, [gpu_evidence()])
    report = bytearray(bytes.fromhex((DIR / "hopperAttestationReport.txt").read_text().strip()))
    report[300] ^= 1
    assert "does not verify" in refused(embedded, [gpu_evidence(bytes(report))])


def test_any_matching_entry_may_be_the_one_without_a_gpu() -> None:
    assert check_devices([], NONCE, [[], []], dt.datetime.now(dt.UTC)).reason is None


def test_sessions_without_gpus_keep_their_hash() -> None:
    text = yaml.safe_dump(session_dict(measurement=M, command=["/bin/true"]))
    with_empty = yaml.safe_load(text)
    with_empty["services"][0]["attestation"][0]["gpus"] = []
    assert session_hash(parse_session(text)) == session_hash(parse_session(yaml.safe_dump(with_empty)))
    with_gpu = yaml.safe_load(text)
    with_gpu["services"][0]["attestation"][0]["gpus"] = [{"platform": "nvidia-gpu"}]
    assert session_hash(parse_session(text)) != session_hash(parse_session(yaml.safe_dump(with_gpu)))


def test_the_attestation_result_has_a_gpu_submod() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signer = ResultSigner(key, "kid")
    gpus = [{"fwid": FWID, "driver_version": "550.90.07", "vbios_version": "96.00.9f.00.01"}]
    token = signer.issue({"platform": "sev-snp", "config_id": "a/b", "gpus": gpus}, False, NONCE)
    claims = jwt.decode(token, key.public_key(), algorithms=["ES256"])
    assert claims["submods"]["gpu"]["ear.veil.claims"] == {"gpus": gpus}
    assert claims["submods"]["gpu"]["ear.status"] == "warning"  # measurements not compared to NVIDIA's RIMs
    assert "gpus" not in claims["submods"]["cpu"]["ear.veil.claims"]


def test_the_launch_descriptor_tells_the_runtime_to_collect_gpu_evidence() -> None:
    document = session_dict(measurement=M, command=["/bin/true"])
    assert not parse_session(yaml.safe_dump(document)).services[0].launch().gpu_evidence
    document["services"][0]["attestation"].append(
        {"platform": "sim", "measurement": "$$VEIL::m$$", "gpus": [{"platform": "nvidia-gpu"}]}
    )
    document["secrets"].append({"name": "m", "kind": "ascii", "value": M})
    launch = parse_session(yaml.safe_dump(document)).services[0].launch()
    assert launch.gpu_evidence, "a template entry's GPUs count too"
    assert LaunchDescriptor.from_json(launch.to_json()) == launch
    with pytest.raises(ProtocolError, match="'gpu_evidence' is not a boolean"):
        LaunchDescriptor.from_json({**launch.to_json(), "gpu_evidence": "yes"})
