"""SEV-SNP verification on real reports (vectors README, cases F1-F3, G, H and section 6.5)."""

import datetime as dt
import re

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.vectors import T_SNP, at, requires_vectors, vector
from veil.crypto.certs import verify_issued_by
from veil.crypto.errors import SignatureInvalid
from veil.tee.claims import EvidenceError
from veil.tee.snp import SnpProduct, SnpReport, verify_snp_report
from veil.tee.snp.certs import EndorsementKeyInfo, builtin_roots, load_certificate
from veil.tee.snp.verify import SnpVerificationError, _check_chain
from veil.tee.verdict import refusal, verify_hardware_evidence

pytestmark = requires_vectors

F1 = ("virtee-sev/derived/report_milan.bin", "virtee-sev/vcek_milan.der")
F2 = ("go-sev-guest/attestation.bin", "go-sev-guest/vcek.testcer")
F3 = ("trustee/snp/test-report.bin", "trustee/snp/test-vcek.der")


def verify(case: tuple[str, str], report: bytes | None = None, when: dt.datetime = T_SNP):  # type: ignore[no-untyped-def]
    return verify_snp_report(report or vector(case[0]), vector(case[1]), when)


def test_f1_milan_report_verifies_with_its_claims() -> None:
    v = verify(F1)
    r = v.report
    assert (v.product, v.signing_key, r.version, r.guest_svn, r.vmpl) == (SnpProduct.MILAN, "VCEK", 2, 0, 0)
    assert r.policy.raw == 0x30000 and r.policy.smt_allowed and not r.policy.debug
    assert r.platform_info.raw == 1 and r.platform_info.smt_enabled
    assert r.measurement.hex() == (
        "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
    )
    assert r.report_data.hex() == (
        "d447b55d197491bfe15cf298f9de9986b7a7c4be2468b4f6e2d53b71d7c645810b0f2cdfca0040433be063fc1a8293f0"
        "f3f8dae7b79fecb3d1cd82bd6a93ebfd"
    )
    assert r.report_id.hex() == "92b3b47d59f0a2a10a74c5678868a80238cf593c01a82f3cffb878e904c28d5b"
    assert r.report_id_ma == b"\xff" * 32
    assert r.chip_id.hex().startswith("d49554ec717f4e5b0fe6b143bcf0405b")
    for which in ("current", "reported", "committed", "launch"):
        tcb = r.tcb(which, v.product)
        assert (tcb.bootloader, tcb.tee, tcb.snp, tcb.microcode, tcb.raw) == (
            3,
            0,
            8,
            115,
            0x7308000000000003,
        )
    assert r.current_version == (1, 52, 4) and r.committed_version == (1, 52, 4)
    assert v.endorsement.product_name == "Milan-B0"
    assert r.family_id == r.image_id == bytes(16) and r.host_data == bytes(32)


def test_f2_debug_guest_verifies_but_is_refused_unless_tolerated() -> None:
    v = verify(F2)
    assert v.report.policy.raw == 0xB0000 and v.report.policy.debug
    assert v.report.report_data == bytes.fromhex("0102030405") + bytes(59)
    assert v.reported_tcb.raw == 4901323769462652930
    assert (v.reported_tcb.bootloader, v.reported_tcb.snp, v.reported_tcb.microcode) == (2, 5, 68)
    assert v.report.current_version == (1, 49, 3)
    verdict = verify_hardware_evidence("sev-snp", vector(F2[0]), endorsement_key=vector(F2[1]), at=T_SNP)
    assert verdict.debug
    assert "debug mode" in (refusal(verdict, []) or "")
    assert refusal(verdict, ["debug-mode"]) is None


def test_f3_current_tcb_differs_from_reported_and_the_vcek_matches_reported() -> None:
    v = verify(F3)
    r = v.report
    assert r.guest_svn == 4 and r.policy.raw == 0x3001F and r.policy.abi_minor == 31
    assert r.family_id == b"\x01" + bytes(15) and r.image_id == b"\x02" + bytes(15)
    assert r.tcb("current", v.product).microcode == 206
    assert v.reported_tcb.microcode == 115
    assert r.id_key_digest.hex().startswith("0356215882a825279a85b300b0b74293")


@pytest.mark.parametrize(
    ("name", "spls", "hwid_first"),
    [("test-vcek-invalid-legacy.der", (3, 0, 10, 169), 0), ("test-vcek-invalid-new.der", (0, 0, 0, 30), 0)],
)
def test_g_synthetic_vceks_parse_both_hwid_encodings_but_do_not_chain(
    name: str, spls: tuple[int, int, int, int], hwid_first: int
) -> None:
    cert = load_certificate(vector(f"trustee/snp/{name}"))
    info = EndorsementKeyInfo.from_certificate(cert)
    assert (info.bootloader, info.tee, info.snp, info.microcode) == spls
    assert info.hwid == bytes(range(64))
    for product in SnpProduct:
        with pytest.raises(SignatureInvalid):
            verify_issued_by(cert, builtin_roots(product).ask)


@pytest.mark.parametrize("product", list(SnpProduct))
def test_h_builtin_amd_roots_chain_and_agree_with_every_published_copy(product: SnpProduct) -> None:
    roots = builtin_roots(product)
    verify_issued_by(roots.ark, roots.ark)
    verify_issued_by(roots.ask, roots.ark)
    verify_issued_by(roots.asvk, roots.ark)
    name = product.value.lower()
    vcek_file = {"turin": "ask_ark_turin_vcek.pem"}.get(name, f"ask_ark_{name}.pem")
    published = re.findall(
        rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----",
        vector(f"go-sev-guest/trust/{vcek_file}"),
        re.S,
    )
    assert [x509.load_pem_x509_certificate(p) for p in published] == [roots.ask, roots.ark]
    vlek = re.findall(
        rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----",
        vector(f"go-sev-guest/trust/ask_ark_{name}_vlek.pem"),
        re.S,
    )
    assert x509.load_pem_x509_certificate(vlek[0]) == roots.asvk


def _changed(data: bytes, offset: int, delta: int = 1) -> bytes:
    out = bytearray(data)
    out[offset] = (out[offset] + delta) % 256
    return bytes(out)


def test_vcek_byte_42_incremented_breaks_the_chain() -> None:
    bad_vcek = _changed(vector(F3[1]), 42)
    with pytest.raises(EvidenceError):
        verify_snp_report(vector(F3[0]), bad_vcek, T_SNP)


def test_a_vcek_is_never_accepted_under_the_asvk() -> None:
    vcek = load_certificate(vector(F3[1]))
    with pytest.raises(SnpVerificationError, match="chain to AMD ARK-Milan fails"):
        _check_chain(vcek, SnpProduct.MILAN, "VLEK", T_SNP)


def test_report_byte_42_breaks_the_signature() -> None:
    with pytest.raises(SnpVerificationError, match="report signature does not verify"):
        verify(F3, _changed(vector(F3[0]), 42))


def test_report_byte_384_breaks_the_tcb_match() -> None:
    with pytest.raises(SnpVerificationError, match="VCEK's TCB does not match the report's reported_tcb"):
        verify(F3, _changed(vector(F3[0]), 384))


def test_milan_report_byte_21_xor_0x80_fails() -> None:
    report = bytearray(vector(F1[0]))
    report[21] ^= 0x80
    with pytest.raises(SnpVerificationError):
        verify(F1, bytes(report))


def test_an_expired_vcek_is_refused_after_its_expiry() -> None:
    with pytest.raises(SnpVerificationError, match="expired at 2030-04-03"):
        verify(F1, when=at("2030-04-04T00:00:00Z"))
    with pytest.raises(SnpVerificationError, match="not valid before"):
        verify(F1, when=at("2023-01-01T00:00:00Z"))


def test_a_report_of_the_wrong_size_or_version_is_a_parse_error() -> None:
    with pytest.raises(EvidenceError, match="1184 bytes"):
        SnpReport.from_bytes(vector(F1[0])[:-1])
    bad = bytearray(vector(F1[0]))
    bad[0] = 4
    with pytest.raises(EvidenceError, match="version 4 is not supported"):
        SnpReport.from_bytes(bytes(bad))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(0, 0x4A0 - 1), value=st.integers(1, 255), case=st.sampled_from([F1, F2, F3]))
def test_any_changed_report_byte_fails_verification(position: int, value: int, case: tuple[str, str]) -> None:
    """Every byte is covered: 0x000-0x29F by the signature, 0x2A0-0x32F are the signature,
    the rest must be zero."""
    with pytest.raises(EvidenceError):
        verify(case, _changed(vector(case[0]), position, value))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(0, 1359), value=st.integers(1, 255))
def test_any_changed_vcek_byte_fails_verification(position: int, value: int) -> None:
    with pytest.raises(EvidenceError):
        verify_snp_report(vector(F1[0]), _changed(vector(F1[1]), position, value), T_SNP)
