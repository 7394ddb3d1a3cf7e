"""Intel DCAP verification on real quotes (vectors README, cases A-E and section 5.5)."""

import dataclasses
import datetime as dt
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.vectors import ROOT, T_A, T_B, T_C, T_D, T_E, at, requires_vectors, vector
from veil.crypto.certs import common_name
from veil.tee.claims import EvidenceError
from veil.tee.intel import Collateral, Quote, QuoteFormatError, QuoteVerificationError, verify_quote
from veil.tee.intel.ccel import EventLogError, check_rtmrs
from veil.tee.intel.collateral import SignedCollateral
from veil.tee.intel.pck import PckExtensions
from veil.tee.intel.tcb import TcbEvaluationError, TcbResult, merge, platform_level
from veil.tee.intel.verify import check_platform_identity
from veil.tee.verdict import refusal, verify_hardware_evidence

pytestmark = requires_vectors


def collateral_a() -> Collateral:
    return Collateral.load(ROOT / "dcap-qvl/sgx_quote_collateral.json")


def collateral_b() -> Collateral:
    return Collateral.load(ROOT / "dcap-qvl/derived/tdx_quote_collateral")


def collateral_c() -> Collateral:
    g = "go-tdx-guest/"
    return Collateral.from_parts(
        {
            "tcb_info": vector(g + "sample_tcbInfo_response"),
            "tcb_info_signature": b"",
            "tcb_info_issuer_chain": vector(g + "derived/tcbinfo_issuer_chain.pem"),
            "qe_identity": vector(g + "sample_qeIdentity_response"),
            "qe_identity_signature": b"",
            "qe_identity_issuer_chain": vector(g + "derived/qeidentity_issuer_chain.pem"),
            "pck_crl": vector(g + "pckcrl"),
            "pck_crl_issuer_chain": vector(g + "derived/pckcrl_issuer_chain.pem"),
            "root_ca_crl": vector(g + "rootcrl.der"),
        }
    )


SGX, TDX, SPR = "dcap-qvl/sgx_quote", "dcap-qvl/tdx_quote", "go-tdx-guest/tdx_prod_quote_SPR_E4.dat"
COS, OCCLUM = "go-tdx-guest/ccel/cos-113-tdx-quote.dat", "trustee/occlum_quote.dat"


def test_a_sgx_quote_with_collateral() -> None:
    verdict = verify_hardware_evidence("sgx", vector(SGX), collateral=collateral_a(), at=T_A)
    assert verdict.status == "ConfigurationAndSWHardeningNeeded"
    assert verdict.advisories == ("INTEL-SA-00289", "INTEL-SA-00615")
    c = verdict.claims
    assert c["mr_enclave"] == "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
    assert c["mr_signer"] == "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6"
    assert (c["isv_prod_id"], c["isv_svn"], c["fmspc"]) == (0, 0, "00a067110000")
    assert verdict.report_data == b"Hello, world!" + bytes(51)
    assert not verdict.debug
    assert refusal(verdict, []) == (
        "TCB status ConfigurationAndSWHardeningNeeded needs tolerance "
        "configuration-needed and sw-hardening-needed"
    )
    assert refusal(verdict, ["configuration-needed", "sw-hardening-needed"]) is None
    assert refusal(
        verdict, ["configuration-needed", "sw-hardening-needed"], allowed_advisories=["INTEL-SA-00289"]
    )


def test_a_quote_header_and_pck_values() -> None:
    quote = Quote.from_bytes(vector(SGX))
    assert (quote.header.version, quote.header.qe_svn, quote.header.pce_svn, quote.trailing) == (3, 10, 15, 0)
    v = verify_quote(vector(SGX), None, T_A)
    assert v.pck.pce_svn == 13  # the PCK certificate's value, not the header's (pitfall 10)
    assert v.pck.cpu_svn.hex() == "0b0b0202ff0100000000000000000000"
    assert common_name(v.pck_chain[1].subject) == "Intel SGX PCK Processor CA"


def test_b_tdx_quote_is_up_to_date() -> None:
    verdict = verify_hardware_evidence("tdx", vector(TDX), collateral=collateral_b(), at=T_B)
    assert (verdict.status, verdict.advisories) == ("UpToDate", ())
    c = verdict.claims
    assert c["mr_td"] == (
        "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
    )
    assert c["rtmr"][0].startswith("44c0197b39157fdd") and c["rtmr"][3] == "00" * 48  # type: ignore[index]
    assert c["mr_seam"].startswith("5b38e33a6487958b")  # type: ignore[union-attr]
    assert (c["td_attributes"], c["xfam"], c["fmspc"]) == (
        "0000001000000000",
        "e702060000000000",
        "b0c06f000000",
    )
    assert verdict.report_data.hex().startswith("9a9d48e7f6799642")
    assert refusal(verdict, []) is None
    v = verify_quote(vector(TDX), collateral_b(), T_B)
    assert v.qe_tcb and v.qe_tcb.status == "UpToDate"
    assert v.module_tcb and v.module_tcb.status == "UpToDate"
    assert v.quote.trailing == 70


def test_c_every_signature_is_valid_but_no_tcb_level_matches() -> None:
    assert verify_quote(vector(SPR), None, T_C).pck.fmspc.hex() == "50806f000000"
    with pytest.raises(QuoteVerificationError, match="TCB level not supported"):
        verify_quote(vector(SPR), collateral_c(), T_C)


def test_d_ccel_replay_reproduces_the_rtmrs() -> None:
    v = verify_quote(vector(COS), None, T_D)
    assert v.tcb is None
    assert v.quote.body.report_data == vector("go-tdx-guest/ccel/nonce.dat")
    events = check_rtmrs(vector("go-tdx-guest/ccel/ccel_data.dat"), v.quote.body.rtmr)  # type: ignore[union-attr]
    assert [e.mr_index for e in events[1:]].count(1) == 16
    assert len(events) == 44


def test_d_a_changed_event_breaks_the_replay() -> None:
    log = bytearray(vector("go-tdx-guest/ccel/ccel_data.dat"))
    log[200] ^= 0x01  # inside the first extending event's digest
    rtmr = Quote.from_bytes(vector(COS)).body.rtmr  # type: ignore[union-attr]
    with pytest.raises(EventLogError, match="does not reproduce RTMR"):
        check_rtmrs(bytes(log), rtmr)


def test_e_occlum_quote_without_collateral() -> None:
    verdict = verify_hardware_evidence("sgx", vector(OCCLUM), at=T_E)
    assert verdict.status is None and "not evaluated" in verdict.notes[0]
    c = verdict.claims
    assert c["mr_enclave"] == "8f173e4613ff05c52aaf04162d234edae8c9977eae47eb2299ae16a553011c68"
    assert c["misc_select"] == 1 and c["attributes"] == "0700000000000000e700000000000000"
    assert verdict.report_data == b"test" + bytes(60)
    pck = verify_quote(vector(OCCLUM), None, T_E).pck
    assert pck.platform_instance_id is not None
    assert pck.platform_instance_id[::-1].hex() == "7a3a6941065cd5060bd93d3db2cfc0c8"  # trustee's order


@pytest.mark.parametrize(
    ("offset", "value", "message"),
    [
        (0x000, 0x03, "version 3 quote must be an SGX quote"),
        (0x278, 0x10, "size inconsistent"),
        (0x1343, 0x32, "PCK chain invalid"),
        (0x1329, 0x32, "PCK chain invalid"),
        (0xF5F, 0x32, "PCK chain invalid"),
        (0xB77, 0x32, "PCK chain invalid"),
        (0x01E, 0x32, "quote signature does not verify"),
        (0x03C, 0x32, "quote signature does not verify"),
    ],
)
def test_c_go_tdx_guest_negative_cases(offset: int, value: int, message: str) -> None:
    quote = bytearray(vector(SPR))
    quote[offset] = value
    with pytest.raises(EvidenceError, match=message):
        verify_quote(bytes(quote), None, T_C)


def test_c_pck_expired_far_in_the_future() -> None:
    with pytest.raises(QuoteVerificationError, match="expired at 2029-09-20"):
        verify_quote(vector(SPR), None, at("2053-07-01T01:00:00Z"))


def test_c_fmspc_mismatch_is_refused() -> None:
    collateral = collateral_c()
    info = collateral.tcb_info.body.replace(b'"fmspc":"50806f000000"', b'"fmspc":"11111f000000"')
    forged = dataclasses.replace(
        collateral,
        tcb_info=SignedCollateral(info, collateral.tcb_info.signature, collateral.tcb_info.issuer_chain),
    )
    with pytest.raises(QuoteVerificationError, match="TCB info signature does not verify"):
        verify_quote(vector(SPR), forged, T_C)
    # the logic itself, with the signature check out of the way:
    with pytest.raises(
        QuoteVerificationError, match="FMSPC mismatch: PCK 50806f000000 vs TCB info 11111f000000"
    ):
        check_platform_identity(json.loads(info), verify_quote(vector(SPR), None, T_C).pck)


@pytest.mark.parametrize("which", ["tcb_info", "qe_identity"])
def test_collateral_signed_by_another_intel_certificate_is_refused_by_role(which: str) -> None:
    """The PCK Platform CA chains to the Intel root too; it must not vouch for a TCB level."""
    collateral = collateral_a()
    item = getattr(collateral, which)
    other = collateral.pck_crl_issuer_chain  # PCK Platform CA -> Intel root: a valid chain
    assert common_name(other[0].subject) != "Intel SGX TCB Signing"
    forged = dataclasses.replace(collateral, **{which: SignedCollateral(item.body, item.signature, other)})
    with pytest.raises(QuoteVerificationError, match="not by the Intel SGX TCB Signing certificate"):
        verify_quote(vector(SGX), forged, T_A)


@pytest.mark.parametrize(
    ("when", "message"),
    [("2025-07-19T10:01:18Z", "QE identity expired"), ("2025-06-19T10:00:00Z", "not valid before")],
)
def test_a_collateral_outside_its_window_is_refused(when: str, message: str) -> None:
    with pytest.raises(QuoteVerificationError, match=message):
        verify_quote(vector(SGX), collateral_a(), at(when))


def test_collateral_forms_agree_and_have_the_readme_window() -> None:
    assert collateral_a().parts() == Collateral.load(ROOT / "dcap-qvl/derived/sgx_quote_collateral").parts()
    assert collateral_a().validity_window() == (at("2025-06-19T10:56:11Z"), at("2025-07-19T10:01:18Z"))
    assert collateral_b().validity_window() == (at("2025-06-19T10:32:27Z"), at("2025-07-19T10:00:35Z"))


def test_collateral_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(QuoteVerificationError, match="TCB info is for TDX"):
        verify_quote(vector(SGX), collateral_b(), T_B)


def test_v5_quote_with_td15_body_parses() -> None:
    """No v5 vector exists; build one from the v4 layout to check the parser's offsets."""
    v4 = vector(TDX)
    body = v4[48:632] + bytes(range(64))  # TD 1.5: + tee_tcb_svn2 (16) + mr_servicetd (48)
    header = b"\x05\x00" + v4[2:48]
    signature = v4[632:]
    v5 = header + (3).to_bytes(2, "little") + len(body).to_bytes(4, "little") + body + signature
    quote = Quote.from_bytes(v5)
    assert quote.body.mr_servicetd == bytes(range(16, 64))  # type: ignore[union-attr]
    assert quote.body.mr_td == Quote.from_bytes(v4).body.mr_td  # type: ignore[union-attr]
    assert len(quote.signed_bytes) == 48 + 6 + 648
    with pytest.raises(QuoteVerificationError, match="quote signature does not verify"):
        verify_quote(v5, None, T_B)  # the v4 signature cannot cover the v5 layout
    with pytest.raises(QuoteFormatError, match="body type 3 with size 584"):
        Quote.from_bytes(header + (3).to_bytes(2, "little") + (584).to_bytes(4, "little") + v4[48:])


def _pck(components: list[int], pcesvn: int) -> PckExtensions:
    return PckExtensions(b"", tuple(components), pcesvn, b"", b"\0\0", b"", 0, None, None, None, None)


def _level(sgx: list[int], pcesvn: int, status: str, tdx: list[int] | None = None) -> dict[str, object]:
    tcb: dict[str, object] = {"sgxtcbcomponents": [{"svn": s} for s in sgx], "pcesvn": pcesvn}
    if tdx is not None:
        tcb["tdxtcbcomponents"] = [{"svn": s} for s in tdx]
    return {
        "tcb": tcb,
        "tcbStatus": status,
        "tcbDate": "2024-01-01T00:00:00Z",
        "advisoryIDs": [f"SA-{status}"],
    }


@pytest.mark.parametrize(
    "status",
    [
        "UpToDate",
        "SWHardeningNeeded",
        "ConfigurationNeeded",
        "ConfigurationAndSWHardeningNeeded",
        "OutOfDate",
        "OutOfDateConfigurationNeeded",
        "Revoked",
    ],
)
def test_tcb_levels_are_taken_in_order_and_each_status_is_reported(status: str) -> None:
    info = {
        "tcbLevels": [
            _level([9] * 16, 9, "UpToDate"),
            _level([2] * 16, 5, status),
            _level([0] * 16, 0, "OutOfDate"),
        ]
    }
    result = platform_level(info, _pck([3] * 16, 6), None)
    assert (result.status, result.advisories) == (status, (f"SA-{status}",))


def test_pcesvn_and_tdx_components_count() -> None:
    info = {
        "tcbLevels": [
            _level([0] * 16, 7, "UpToDate", [1] + [0] * 15),
            _level([0] * 16, 0, "OutOfDate", [0] * 16),
        ]
    }
    assert platform_level(info, _pck([0] * 16, 7), bytes(16)).status == "OutOfDate"
    assert platform_level(info, _pck([0] * 16, 6), bytes([1]) + bytes(15)).status == "OutOfDate"
    assert platform_level(info, _pck([0] * 16, 7), bytes([1]) + bytes(15)).status == "UpToDate"
    with pytest.raises(TcbEvaluationError, match="TCB level not supported"):
        platform_level({"tcbLevels": [_level([1] * 16, 0, "UpToDate")]}, _pck([0] * 16, 9), None)


def test_status_merge_and_tolerances() -> None:
    assert merge(TcbResult("SWHardeningNeeded", ("A",)), TcbResult("OutOfDate", ("B",))) == TcbResult(
        "OutOfDate", ("A", "B")
    )
    assert (
        merge(TcbResult("ConfigurationNeeded"), TcbResult("OutOfDate")).status
        == "OutOfDateConfigurationNeeded"
    )
    assert merge(TcbResult("UpToDate"), TcbResult("Revoked")).status == "Revoked"
    verdict = verify_hardware_evidence("tdx", vector(TDX), collateral=collateral_b(), at=T_B)
    revoked = dataclasses.replace(verdict, status="Revoked")
    assert refusal(revoked, ["outdated-tcb", "configuration-needed", "sw-hardening-needed"]) == (
        "TCB status Revoked is never acceptable"
    )
    outdated = dataclasses.replace(verdict, status="OutOfDate")
    assert refusal(outdated, []) == "TCB status OutOfDate needs tolerance outdated-tcb"
    assert refusal(dataclasses.replace(verdict, debug=True), []) is not None
    assert refusal(verdict, [], check_smt=True) == "SMT is enabled on the platform (tolerate 'smt' to accept)"
    assert refusal(verdict, ["smt"], check_smt=True) is None


def _flip(data: bytes, position: int, value: int) -> bytes:
    out = bytearray(data)
    out[position] ^= value
    return bytes(out)


def _pem_whitespace(data: bytes, position: int) -> bool:
    return data[position] in b"\n\r \t"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
@given(
    data=st.data(), value=st.integers(1, 255), case=st.sampled_from([(SGX, T_A), (TDX, T_B), (OCCLUM, T_E)])
)
def test_any_changed_quote_byte_fails_verification(
    data: st.DataObject, value: int, case: tuple[str, dt.datetime]
) -> None:
    """Every byte before the trailing data is covered, except line breaks inside the PEM text
    of the certification data (PEM armour is not signed; the certificates inside it are),
    and its C-string terminator turned into whitespace (then the chain just has none)."""
    quote = vector(case[0])
    end = len(quote) - Quote.from_bytes(quote).trailing
    position = data.draw(st.integers(0, end - 1).filter(lambda p: not _pem_whitespace(quote, p)))
    pem = Quote.from_bytes(quote).signature.pck_chain_pem
    terminator = quote.index(pem) + len(pem) - 1 if pem.endswith(b"\0") else -1
    assume(not (position == terminator and _pem_whitespace(_flip(quote, position, value), position)))
    with pytest.raises(EvidenceError):
        verify_quote(_flip(quote, position, value), None, case[1])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(which=st.sampled_from(["tcb_info", "qe_identity"]), data=st.data(), value=st.integers(1, 255))
def test_any_changed_collateral_json_byte_fails_verification(
    which: str, data: st.DataObject, value: int
) -> None:
    collateral = collateral_a()
    item: SignedCollateral = getattr(collateral, which)
    position = data.draw(st.integers(0, len(item.body) - 1))
    changed = dataclasses.replace(item, body=_flip(item.body, position, value))
    with pytest.raises(EvidenceError):
        verify_quote(vector(SGX), dataclasses.replace(collateral, **{which: changed}), T_A)
