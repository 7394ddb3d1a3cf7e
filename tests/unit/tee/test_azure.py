"""Azure confidential VMs on the vectors of section 9.1 of ../shared/vectors/README.md: every
encoding verifies with the README's values, its negative cases are refused, and random
byte flips are refused without an internal error."""

import json
import random

import pytest

from tests.vectors import ROOT, requires_vectors, vector
from veil.tee.claims import EvidenceError
from veil.tee.verdict import appraise, verify_hardware_evidence

pytestmark = requires_vectors

NONCE = b"challenge"
SNP_V0 = "trustee/az-snp-vtpm/evidence-v0.json"
TDX_V0 = "trustee/az-tdx-vtpm/evidence-v0.json"


def snp_v1(hcl: bytes | None = None) -> dict[str, object]:
    return {
        "platform": "azure-snp-vtpm",
        "evidence": vector("trustee/az-snp-vtpm/tpm-quote-v1.json"),
        "hcl_report": hcl if hcl is not None else vector("trustee/az-snp-vtpm/hcl-report.bin"),
        "endorsement_key": vector("trustee/az-snp-vtpm/vcek.pem"),
    }


def tdx_v1(hcl: bytes | None = None, td_quote: bytes | None = None) -> dict[str, object]:
    return {
        "platform": "azure-tdx-vtpm",
        "evidence": vector("trustee/az-tdx-vtpm/tpm-quote-v1.json"),
        "hcl_report": hcl if hcl is not None else vector("trustee/az-tdx-vtpm/hcl-report.bin"),
        "td_quote": td_quote if td_quote is not None else vector("trustee/az-tdx-vtpm/td-quote.bin"),
    }


def verify(form: dict[str, object]) -> object:
    args = dict(form)
    return verify_hardware_evidence(args.pop("platform"), args.pop("evidence"), **args)  # type: ignore[arg-type]


def changed(data: bytes, offset: int, value: int | None = None, add: int = 0) -> bytes:
    raw = bytearray(data)
    raw[offset] = value if value is not None else (raw[offset] + add) % 256
    return bytes(raw)


@pytest.mark.parametrize(
    ("form", "measurement", "pcr00"),
    [
        (
            {"platform": "azure-snp-vtpm", "evidence": SNP_V0},
            "6a063be9dd79f6371c842e480f8dc3b5c725961344e57130e88c5adf49e8f7f6c79b75a5eb77fc769959f4aeb2f9401e",
            "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced",
        ),
        (
            "snp_v1",
            "9ac48fcac8a2d88aeeff8d427ad4f2be0e3917c748a18bdf52cc317e7fe20308b459d5ef1a12e0c22944eb386d17c315",
            "f3a7e99a5f819a034386bce753a48a73cfdaa0bea0ecfc124bedbf5a8c4799be",
        ),
        (
            {"platform": "azure-tdx-vtpm", "evidence": TDX_V0},
            "024a32b070383331181619fa387cb4d55d1e38879f989933055ccad5bc2db795d1737b66205949d15469dc8c1ba7ab7b",
            "782b20b10f55cc46e2142cc2145d548698073e5beb82752c8d7f9279f0d8a273",
        ),
        (
            "tdx_v1",
            "024a32b070383331181619fa387cb4d55d1e38879f989933055ccad5bc2db795d1737b66205949d15469dc8c1ba7ab7b",
            "782b20b10f55cc46e2142cc2145d548698073e5beb82752c8d7f9279f0d8a273",
        ),
    ],
)
def test_every_encoding_verifies_with_the_readme_values(form: object, measurement: str, pcr00: str) -> None:
    if form == "snp_v1":
        args = snp_v1()
    elif form == "tdx_v1":
        args = tdx_v1()
    else:
        assert isinstance(form, dict)
        args = {**form, "evidence": vector(form["evidence"])}
    verdict = verify(args)
    assert verdict.measurement.hex() == measurement  # type: ignore[attr-defined]
    assert verdict.claims["pcr00"] == pcr00 and verdict.claims["ak_certified"] is True  # type: ignore[attr-defined]
    assert verdict.report_data == NONCE  # type: ignore[attr-defined]
    assert verdict.claims["vm_configuration"]["secure-boot"] in (True, False)  # type: ignore[attr-defined]


def test_the_decision_needs_the_nonce_and_for_tdx_collateral_or_no_tcb_check() -> None:
    snp = appraise("azure-snp-vtpm", vector(SNP_V0), ["smt"], nonce=NONCE)
    assert snp.accepted, snp.reason
    other = appraise("azure-snp-vtpm", vector(SNP_V0), ["smt"], nonce=b"another")
    assert not other.accepted and "does not carry the nonce" in (other.reason or "")
    tdx = appraise("azure-tdx-vtpm", vector(TDX_V0), [], nonce=NONCE)
    assert not tdx.accepted and "no-tcb-check" in (tdx.reason or "")
    assert appraise("azure-tdx-vtpm", vector(TDX_V0), ["no-tcb-check"], nonce=NONCE).accepted


@pytest.mark.parametrize(
    ("offset", "value", "add", "message"),
    [
        (0x1A6, 0, 0, "does not match the report's reported_tcb"),  # README: "SNP version mismatch"
        (0x6E0, None, 1, "SHA-256 of the HCL variable data"),
        (0x540, 0, 0, "variable data is not JSON"),  # README: "broken AK public key"
        (0x4C8, 4, 0, "report type 4"),
        (0x9F0, 1, 0, "must be zero"),
        (0x10, 1, 0, "status is 1"),
    ],
)
def test_the_snp_negative_cases_are_refused(offset: int, value: int | None, add: int, message: str) -> None:
    hcl = changed(vector("trustee/az-snp-vtpm/hcl-report.bin"), offset, value, add)
    with pytest.raises(EvidenceError, match=message):
        verify(snp_v1(hcl))


def test_the_tdx_negative_cases_are_refused() -> None:
    hcl = vector("trustee/az-tdx-vtpm/hcl-report.bin")
    with pytest.raises(EvidenceError, match="SHA-256 of the HCL variable data"):
        verify(tdx_v1(changed(hcl, 0x880, add=1)))
    with pytest.raises(EvidenceError, match="differ in mr_td"):
        verify(tdx_v1(changed(hcl, 0x20 + 528, add=1)))
    with pytest.raises(EvidenceError, match="differ in reportdata"):
        verify(tdx_v1(changed(hcl, 0x20 + 128 + 40, add=1)))
    with pytest.raises(EvidenceError, match="needs the TD quote"):
        verify_hardware_evidence(
            "azure-tdx-vtpm", vector("trustee/az-tdx-vtpm/tpm-quote-v1.json"), hcl_report=hcl
        )
    with pytest.raises(EvidenceError, match="report type 4"):
        verify_hardware_evidence("azure-snp-vtpm", vector(TDX_V0))


#: TDREPORT bytes only the CPU can check (its MAC, CPUSVN, hashes, reserved): not compared
_TDREPORT_UNCHECKED = [(0, 128), (192, 264), (384, 512), (912, 1024)]


def _covered(platform: str, offset: int) -> bool:
    if platform == "azure-snp-vtpm":
        return True
    return not any(0x20 + start <= offset < 0x20 + end for start, end in _TDREPORT_UNCHECKED)


@pytest.mark.parametrize("platform", ["azure-snp-vtpm", "azure-tdx-vtpm"])
def test_a_thousand_random_byte_flips_are_refused_without_an_internal_error(platform: str) -> None:
    rng = random.Random(f"azure-{platform}")
    form = snp_v1() if platform == "azure-snp-vtpm" else tdx_v1()
    quote = json.loads(form["evidence"])  # type: ignore[arg-type]
    flips = 0
    while flips < 1000:
        target = rng.choice(("hcl_report", "message", "signature"))
        args = dict(form)
        if target == "hcl_report":
            offset = rng.randrange(len(form["hcl_report"]))  # type: ignore[arg-type]
            if not _covered(platform, offset):
                continue
            args["hcl_report"] = changed(form["hcl_report"], offset, add=rng.randrange(1, 256))  # type: ignore[arg-type]
        else:
            raw = bytes.fromhex(quote[target])
            doc = dict(quote)
            doc[target] = changed(raw, rng.randrange(len(raw)), add=rng.randrange(1, 256)).hex()
            args["evidence"] = json.dumps(doc).encode()
        flips += 1
        with pytest.raises(EvidenceError):
            verify(args)


def test_the_readme_files_are_where_the_tests_expect_them() -> None:
    assert (ROOT / SNP_V0).is_file() and (ROOT / TDX_V0).is_file()
