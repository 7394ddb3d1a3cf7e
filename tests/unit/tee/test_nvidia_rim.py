"""NVIDIA reference integrity manifests (RIMs): NVIDIA's own signed files verify (XML
signature, chain to the pinned CoRIM root, validity) and are refused once changed,
expired or for other versions than the report's; RIMs signed in the test for the vector
report's versions and values make its measurements compared and accepted, and a single
changed value refuses it."""

import dataclasses
import datetime as dt
import re
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from lxml import etree  # type: ignore[import-untyped]
from signxml import XMLSigner
from signxml.algorithms import DigestAlgorithm, SignatureMethod

from tests.vectors import ROOT, requires_vectors
from veil.tee import nvidia_rim
from veil.tee.claims import EvidenceError
from veil.tee.nvidia import parse_report
from veil.tee.nvidia_rim import compare, load_rim
from veil.tee.verdict import Appraisal, appraise

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "nvidia-rim"
VBIOS = FIXTURES / "1010_0200_882_96005E0001_PROD.swidtag"
DRIVER = FIXTURES / "Driver_RIM_test_no_gpu.swidtag"
#: when NVIDIA's RIM signers were valid
SIGNED_AT = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
GPU = ROOT / "trustee" / "nvidia"
NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")


def test_nvidias_rims_verify_and_say_their_version_and_measurements() -> None:
    vbios, driver = load_rim(VBIOS.read_bytes(), SIGNED_AT), load_rim(DRIVER.read_bytes(), SIGNED_AT)
    assert (vbios.version, driver.version) == ("96.00.5E.00.01", "545.00")
    assert "HCC RIM L4 Signer" in vbios.signer
    assert len(vbios.measurements) == 12 and len(driver.measurements) == 21
    assert not set(vbios.measurements) & set(driver.measurements)
    assert all(len(v) == 48 for values in vbios.measurements.values() for v in values)


def test_a_changed_expired_or_foreign_rim_is_refused() -> None:
    data = VBIOS.read_bytes()
    value = re.search(rb'Hash0="([0-9a-f]{96})" name="HashedMeasurement_1_FSP"', data)
    assert value is not None
    changed = data.replace(value.group(1), b"0" * 96)
    with pytest.raises(EvidenceError, match="signature does not verify"):
        load_rim(changed, SIGNED_AT)
    with pytest.raises(EvidenceError, match="RIM signer"):
        load_rim(data, dt.datetime(2026, 12, 7, tzinfo=dt.UTC))  # the L4 signer expired in June 2025
    with pytest.raises(EvidenceError, match="does not end at the NVIDIA CoRIM signing Root CA"):
        load_rim(data, SIGNED_AT, root_sha256="00" * 32)
    with pytest.raises(EvidenceError, match="not XML"):
        load_rim(b"<SoftwareIdentity", SIGNED_AT)
    unsigned = re.sub(rb"<ds:Signature.*</ds:Signature>", b"", data, flags=re.S)
    with pytest.raises(EvidenceError):
        load_rim(unsigned, SIGNED_AT)


def _report() -> bytes:
    return bytes.fromhex((GPU / "hopperAttestationReport.txt").read_text().strip())


def _appraise(rims: list[bytes]) -> Appraisal:
    """The vector report, its chain and nonce, as of SIGNED_AT, with these RIMs and no tolerance."""
    return appraise(
        "nvidia-gpu",
        _report(),
        [],
        endorsement_key=(GPU / "hopper_cert_chain_case1.txt").read_bytes(),
        nonce=NONCE,
        at=SIGNED_AT,
        rims=rims,
    )


@requires_vectors
def test_nvidias_rims_are_for_other_versions_than_the_vector_report() -> None:
    appraisal = _appraise([VBIOS.read_bytes(), DRIVER.read_bytes()])
    assert not appraisal.accepted
    assert "a RIM for version 96.00.5E.00.01 matches neither the report's VBIOS (96.00.9f.00.01)" in (
        appraisal.reason or ""
    )


class Signer:
    """A RIM signing chain of the test's own: a P-384 root and leaf."""

    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.key = ec.generate_private_key(ec.SECP384R1())
        self.root = self._certificate("test RIM root", self.root_key.public_key(), "test RIM root", ca=True)
        self.leaf = self._certificate("test RIM signer", self.key.public_key(), "test RIM root", ca=False)

    def _certificate(
        self, subject: str, public: ec.EllipticCurvePublicKey, issuer: str, ca: bool
    ) -> x509.Certificate:
        name = lambda cn: x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])  # noqa: E731
        return (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(name(issuer))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(dt.datetime(2024, 1, 1, tzinfo=dt.UTC))
            .not_valid_after(dt.datetime(2030, 1, 1, tzinfo=dt.UTC))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(self.root_key, hashes.SHA384())
        )

    @property
    def root_sha256(self) -> str:
        return self.root.fingerprint(hashes.SHA256()).hex()

    def rim(self, template: Path, version: str, measurements: dict[int, bytes]) -> bytes:
        """``template`` (one of NVIDIA's) with this version and these values as the first
        alternative of these active indices (other alternatives kept), signed by this chain."""
        text = re.sub(rb"<ds:Signature.*</ds:Signature>", b"", template.read_bytes(), flags=re.S)
        text = re.sub(rb'colloquialVersion="[^"]*"', f'colloquialVersion="{version}"'.encode(), text)
        for index, value in measurements.items():
            text = re.sub(
                rf'(index="{index}" active="True" alternatives="\d+" ns2:Hash0=")[0-9a-f]{{96}}'.encode(),
                rb"\g<1>" + value.hex().encode(),
                text,
            )
        signed = XMLSigner(
            signature_algorithm=SignatureMethod.ECDSA_SHA384, digest_algorithm=DigestAlgorithm.SHA384
        ).sign(
            etree.fromstring(text),
            key=self.key,
            cert=[c.public_bytes(serialization.Encoding.PEM).decode() for c in (self.leaf, self.root)],
        )
        return bytes(etree.tostring(signed))


@requires_vectors
def test_rims_for_the_reports_versions_and_values_compare_and_one_changed_value_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    report = parse_report(_report())
    vbios_indices = load_rim(VBIOS.read_bytes(), SIGNED_AT).measurements
    driver_indices = load_rim(DRIVER.read_bytes(), SIGNED_AT).measurements
    signer = Signer()
    monkeypatch.setattr(nvidia_rim, "RIM_ROOT_SHA256", signer.root_sha256)
    vbios = signer.rim(VBIOS, "96.00.9F.00.01", {i: report.measurements[i + 1] for i in vbios_indices})
    driver = signer.rim(DRIVER, "550.90.07", {i: report.measurements[i + 1] for i in driver_indices})

    def appraised(rims: list[bytes]) -> tuple[bool, str]:
        result = _appraise(rims)
        if result.accepted:
            assert result.verdict is not None and result.verdict.claims["measurements_compared"] is True
        return result.accepted, result.reason or ""

    assert appraised([vbios, driver]) == (True, ""), "accepted without no-rim-check: compared"
    index = min(i for i, values in driver_indices.items() if len(values) == 1)
    values = {i: report.measurements[i + 1] for i in driver_indices}
    wrong = signer.rim(DRIVER, "550.90.07", {**values, index: b"\x01" * 48})
    assert appraised([vbios, wrong]) == (
        False,
        f"measurement {index} (SPDM block {index + 1}) is not one the driver RIM allows",
    )
    assert appraised([vbios])[1] == "no RIM for the report's driver 550.90.07: give both, VBIOS and driver"
    assert "two RIMs for the VBIOS" in appraised([vbios, vbios, driver])[1]
    with pytest.raises(EvidenceError, match="no measurement"):
        compare(
            dataclasses.replace(report, measurements={}),
            [load_rim(vbios, SIGNED_AT), load_rim(driver, SIGNED_AT)],
        )
