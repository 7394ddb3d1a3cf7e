"""Evidence collection inside a TEE, against a fake configfs-tsm (a real FUSE mount)."""

import json
import os
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import requires_root, session_dict, veil
from tests.fakes.configfs_tsm import FakeTsm, MountedFakeTsm
from tests.vectors import requires_vectors, vector
from veil.tee.collect import (
    VCEK_GUID,
    CollectionError,
    GramineAttestationSource,
    TsmReportSource,
    endorsement_key_from_cert_table,
    hardware_source,
)

pytestmark = [requires_vectors, requires_root]

REPORT = "virtee-sev/derived/report_milan.bin"
VCEK = "virtee-sev/vcek_milan.der"


def cert_table(vcek: bytes, guid: bytes = VCEK_GUID.bytes) -> bytes:
    header = guid + struct.pack("<II", 48, len(vcek)) + bytes(24)
    return header + vcek


@pytest.fixture
def snp_tsm(tmp_path: Path) -> Iterator[MountedFakeTsm]:
    mounted = MountedFakeTsm(
        FakeTsm("sev_guest", vector(REPORT), cert_table(vector(VCEK))), tmp_path / "report"
    )
    yield mounted
    mounted.close()


def test_configfs_tsm_snp_report_with_its_vcek(snp_tsm: MountedFakeTsm) -> None:
    report_data = bytes(range(64))
    evidence = TsmReportSource(snp_tsm.mountpoint).collect(report_data)
    assert evidence.platform == "sev-snp"
    assert evidence.primary == vector(REPORT)
    assert evidence.endorsement_key == vector(VCEK)
    assert snp_tsm.fake.written == [report_data]
    assert snp_tsm.fake.entries == {}, "the report entry is removed"


def test_configfs_tsm_tdx_quote(tmp_path: Path) -> None:
    mounted = MountedFakeTsm(FakeTsm("tdx_guest", vector("dcap-qvl/tdx_quote")), tmp_path / "report")
    try:
        evidence = TsmReportSource(mounted.mountpoint).collect(bytes(64))
        assert (evidence.platform, evidence.primary, evidence.endorsement_key) == (
            "tdx",
            vector("dcap-qvl/tdx_quote"),
            None,
        )
        assert isinstance(
            hardware_source(mounted.mountpoint, tmp_path / "none", tmp_path / "none"), TsmReportSource
        )
    finally:
        mounted.close()


def test_an_unknown_provider_is_refused(tmp_path: Path) -> None:
    mounted = MountedFakeTsm(FakeTsm("arm_cca_guest", b"x"), tmp_path / "report")
    try:
        with pytest.raises(CollectionError, match="unknown provider 'arm_cca_guest'"):
            TsmReportSource(mounted.mountpoint).collect(bytes(64))
    finally:
        mounted.close()


def test_cert_table_guids_in_both_byte_orders() -> None:
    assert endorsement_key_from_cert_table(cert_table(b"DER", VCEK_GUID.bytes_le)) == b"DER"
    assert endorsement_key_from_cert_table(cert_table(b"DER", uuid.uuid4().bytes)) is None
    with pytest.raises(CollectionError, match="past its end"):
        endorsement_key_from_cert_table(VCEK_GUID.bytes + struct.pack("<II", 48, 999) + bytes(24))


def test_gramine_dev_attestation(tmp_path: Path) -> None:
    root = tmp_path / "attestation"
    root.mkdir()
    (root / "attestation_type").write_text("dcap\n")
    (root / "quote").write_bytes(vector("dcap-qvl/sgx_quote"))
    evidence = GramineAttestationSource(root).collect(b"\x07" * 64)
    assert (evidence.platform, evidence.primary) == ("sgx", vector("dcap-qvl/sgx_quote"))
    assert (root / "user_report_data").read_bytes() == b"\x07" * 64
    (root / "attestation_type").write_text("epid\n")
    with pytest.raises(CollectionError, match="not 'dcap'"):
        GramineAttestationSource(root).collect(bytes(64))


def test_no_tee_interface_means_no_hardware_source(tmp_path: Path) -> None:
    assert hardware_source(tmp_path / "a", tmp_path / "b", tmp_path / "c") is None


def test_veil_run_in_hw_mode_collects_from_the_tee_and_the_cas_checks_the_binding(
    snp_tsm: MountedFakeTsm, tmp_path: Path
) -> None:
    """The whole path with VEIL_MODE=hw: the runtime's report_data goes into the TEE, the
    real report comes back and verifies, and the CAS refuses only because the vector's
    report_data cannot be this run's."""
    doc = session_dict(command=["/bin/true"], tolerate=["smt"])
    doc["services"][0]["attestation"] = [
        {
            "platform": "sev-snp",
            "measurement": "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b5"
            "79ea158d3e1a0dc39b2c60bd95b9c480cd81841f",
        }
    ]
    policy = tmp_path / "s.yaml"
    policy.write_text(yaml.safe_dump(doc))
    env = {"VEIL_HOME": str(tmp_path / "home"), "VEIL_MODE": "hw", "VEIL_TSM_ROOT": str(snp_tsm.mountpoint)}
    result = veil("run", "--policy", str(policy), "--service", "app", env=env)
    assert result.returncode == 1
    assert "report_data does not bind this nonce" in result.stderr
    assert len(snp_tsm.fake.written) == 1 and len(snp_tsm.fake.written[0]) == 64
    audit = veil("audit", "show", "--json", env=env)
    last = json.loads(audit.stdout)[-1]
    assert last["event"] == "attest.refuse" and last["platform"] == "sev-snp"


def test_veil_run_hw_mode_without_a_tee_is_a_clear_error(tmp_path: Path) -> None:
    policy = tmp_path / "s.yaml"
    policy.write_text(yaml.safe_dump(session_dict(command=["/bin/true"])))
    env = {
        "VEIL_HOME": str(tmp_path / "home"),
        "VEIL_MODE": "hw",
        "VEIL_TSM_ROOT": str(tmp_path / "no"),
        "VEIL_SEV_GUEST": str(tmp_path / "no"),
        "VEIL_GRAMINE_ATTESTATION": str(tmp_path / "no"),
    }
    result = veil("run", "--policy", str(policy), "--service", "app", env=env)
    assert result.returncode == 1
    assert "offers no TEE interface" in result.stderr
    assert os.path.exists(tmp_path / "s.yaml")
