"""`veil evidence verify` and `veil las collateral import` on the real vectors."""

import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.conftest import veil
from tests.vectors import ROOT, requires_vectors

pytestmark = requires_vectors


def verify(*args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = veil("evidence", "verify", *args, "--json")
    return result.returncode, json.loads(result.stdout)


def v(path: str) -> str:
    return str(ROOT / path)


@pytest.mark.parametrize(
    ("report", "cert", "measurement"),
    [
        ("virtee-sev/report_milan.hex", "virtee-sev/vcek_milan.der", "7a1e5c266c0108db"),
        ("trustee/snp/test-report.bin", "trustee/snp/test-vcek.der", "a1f3930413247bb3"),
    ],
)
def test_snp_reports_are_accepted(report: str, cert: str, measurement: str) -> None:
    code, out = verify(v(report), "--platform", "sev-snp", "--cert", v(cert))
    assert code == 0
    assert out["accepted"] is True and out["reason"] is None
    assert out["signature_valid"] is True and out["chain_valid"] is True
    assert out["platform"] == "sev-snp" and out["debug"] is False
    assert out["measurement"].startswith(measurement)
    assert set(out) >= {"status", "advisories", "report_data", "tcb", "chip_id", "policy"}
    assert out["tcb"]["bootloader"] == 3 and out["tcb"]["microcode"] == 115


def test_a_debug_snp_guest_exits_1_unless_tolerated() -> None:
    args = (
        v("go-sev-guest/attestation.bin"),
        "--platform",
        "sev-snp",
        "--cert",
        v("go-sev-guest/vcek.testcer"),
    )
    code, out = verify(*args)
    assert code == 1 and out["accepted"] is False and out["debug"] is True
    assert out["signature_valid"] is True and "verified" not in out  # authentic, and refused
    assert "debug mode" in out["reason"]
    assert out["policy"] == "0xb0000"
    code, _ = verify(*args, "--tolerate", "debug-mode")
    assert code == 0


def test_case_a_needs_its_tolerances() -> None:
    args = (
        v("dcap-qvl/sgx_quote"),
        "--platform",
        "sgx",
        "--collateral",
        v("dcap-qvl/sgx_quote_collateral.json"),
        "--at",
        "2025-07-19T10:01:17Z",
    )
    code, out = verify(*args)
    assert code == 1
    assert out["status"] == "ConfigurationAndSWHardeningNeeded"
    assert out["advisories"] == ["INTEL-SA-00289", "INTEL-SA-00615"]
    assert out["mr_enclave"].startswith("33d8736d") and out["fmspc"] == "00a067110000"
    code, out = verify(*args, "--tolerate", "configuration-needed", "--tolerate", "sw-hardening-needed")
    assert code == 0 and out["accepted"] is True and out["reason"] is None


def test_case_b_is_accepted() -> None:
    code, out = verify(
        v("dcap-qvl/tdx_quote"),
        "--platform",
        "tdx",
        "--collateral",
        v("dcap-qvl/derived/tdx_quote_collateral"),
        "--at",
        "2025-07-19T10:00:34Z",
    )
    assert code == 0
    assert (out["status"], out["advisories"]) == ("UpToDate", [])
    assert (
        len(out["rtmr"]) == 4
        and out["mr_td"].startswith("91eb2b44")
        and out["mr_seam"].startswith("5b38e33a")
    )


def test_case_c_through_the_las_cache(tmp_path: Path) -> None:
    g = "go-tdx-guest/"
    imported = veil(
        "las",
        "collateral",
        "import",
        "--cache",
        str(tmp_path / "cache"),
        "--json",
        "--tcb-info",
        v(g + "sample_tcbInfo_response"),
        "--tcb-info-chain",
        v(g + "derived/tcbinfo_issuer_chain.pem"),
        "--qe-identity",
        v(g + "sample_qeIdentity_response"),
        "--qe-identity-chain",
        v(g + "derived/qeidentity_issuer_chain.pem"),
        "--pck-crl",
        v(g + "pckcrl"),
        "--pck-crl-chain",
        v(g + "derived/pckcrl_issuer_chain.pem"),
        "--root-ca-crl",
        v(g + "rootcrl.der"),
    )
    assert imported.returncode == 0, imported.stderr
    summary = json.loads(imported.stdout)
    assert summary["fmspc"] == "50806f000000" and summary["tee"] == "TDX"
    assert (tmp_path / "cache" / "tdx-50806f000000" / "tcb_info.json").exists()
    code, out = verify(
        v(g + "tdx_prod_quote_SPR_E4.dat"),
        "--platform",
        "tdx",
        "--collateral",
        str(tmp_path / "cache"),
        "--at",
        "2023-07-01T01:00:00Z",
    )
    assert code == 1 and out["accepted"] is False and out["evidence_valid"] is False
    assert out["signature_valid"] is None and "TCB level not supported" in out["reason"]


def test_case_d_event_log_and_e_without_collateral() -> None:
    code, out = verify(
        v("go-tdx-guest/ccel/cos-113-tdx-quote.dat"),
        "--platform",
        "tdx",
        "--event-log",
        v("go-tdx-guest/ccel/ccel_data.dat"),
        "--at",
        "2025-01-01T00:00:00Z",
        "--no-tcb-check",
    )
    assert code == 0 and out["status"] is None and out["event_log_events"] == 43
    assert out["report_data"] == "00" * 64
    # The Occlum quote comes from a debug enclave: ATTRIBUTES.FLAGS 0x07 = INIT | DEBUG | MODE64.
    occlum = (
        v("trustee/occlum_quote.dat"),
        "--platform",
        "sgx",
        "--at",
        "2025-01-01T00:00:00Z",
        "--tolerate",
        "no-tcb-check",
    )
    code, out = verify(*occlum)
    assert code == 1 and out["accepted"] is False and out["debug"] is True
    assert out["mr_enclave"].startswith("8f173e46")
    code, out = verify(*occlum, "--tolerate", "debug-mode")
    assert code == 0


def test_wrong_platform_and_usage_errors() -> None:
    code, out = verify(v("dcap-qvl/tdx_quote"), "--platform", "sgx", "--at", "2025-07-01T00:00:00Z")
    assert code == 1 and "is a tdx quote" in out["reason"]
    assert veil("evidence", "verify", v("virtee-sev/vcek_milan.der"), "--platform", "sev-snp").returncode == 2
    assert (
        veil(
            "evidence", "verify", v("dcap-qvl/tdx_quote"), "--platform", "tdx", "--at", "yesterday"
        ).returncode
        == 2
    )
    assert veil("evidence", "verify", "/nonexistent", "--platform", "tdx").returncode == 2


def test_human_output_names_the_reason() -> None:
    result = veil(
        "evidence", "verify", v("dcap-qvl/sgx_quote"), "--platform", "sgx", "--at", "2031-01-01T00:00:00Z"
    )
    assert result.returncode == 1
    assert "not verified" in result.stderr and "expired" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_intel_quote_without_collateral_is_not_accepted_unless_said() -> None:
    """Without collateral the TCB status is unknown: the platform may be out of date."""
    args = (v("dcap-qvl/tdx_quote"), "--platform", "tdx", "--at", "2025-07-19T10:00:34Z")
    code, out = verify(*args)
    assert code == 1 and out["accepted"] is False and out["evidence_valid"] is True
    assert out["status"] is None and "no-tcb-check" in out["reason"]
    code, out = verify(*args, "--no-tcb-check")
    assert code == 0 and out["accepted"] is True


def test_every_tdx_and_snp_claim_is_in_the_output() -> None:
    _, tdx = verify(v("dcap-qvl/tdx_quote"), "--platform", "tdx", "--no-tcb-check")
    assert {"seam_attributes", "tee_tcb_svn2", "mr_servicetd", "platform_instance_id", "pce_id"} <= set(tdx)
    _, snp = verify(
        v("virtee-sev/report_milan.hex"), "--platform", "sev-snp", "--cert", v("virtee-sev/vcek_milan.der")
    )
    assert {"firmware_version", "cpuid_family", "image_id", "family_id", "report_id"} <= set(snp)
    assert {"launch_mitigation_vector", "current_mitigation_vector"} <= set(snp)


@pytest.mark.parametrize("form", ["0x-prefix", "lines", "upper"])
def test_hex_evidence_in_the_forms_tools_write(tmp_path: Path, form: str) -> None:
    raw = (ROOT / "trustee/snp/test-report.bin").read_bytes()
    text = {
        "0x-prefix": "0x" + raw.hex(),
        "lines": "\n".join(raw.hex()[i : i + 64] for i in range(0, len(raw) * 2, 64)) + "\n",
        "upper": raw.hex().upper(),
    }[form]
    (tmp_path / "report.hex").write_text(text)
    code, out = verify(
        str(tmp_path / "report.hex"), "--platform", "sev-snp", "--cert", v("trustee/snp/test-vcek.der")
    )
    assert code == 0 and out["measurement"].startswith("a1f3930413247bb3")


def test_odd_hex_is_a_usage_error_and_binary_is_read_as_binary(tmp_path: Path) -> None:
    (tmp_path / "odd.hex").write_text("0x" + "ab" * 100 + "c")
    odd = veil("evidence", "verify", str(tmp_path / "odd.hex"), "--platform", "tdx")
    assert odd.returncode == 2 and "odd number of digits" in odd.stderr
    (tmp_path / "bin").write_bytes(b"\xff" + b"ab" * 100)
    code, out = verify(str(tmp_path / "bin"), "--platform", "tdx")
    assert code == 1 and out["evidence_valid"] is False and "Traceback" not in str(out)


def test_a_tpm_quote_says_its_key_is_not_tied_to_a_manufacturer() -> None:
    nonce = "a04182b506878d4f29b91ee606a71a0d3361ccf1b22db20c98adcaa537bea393ef0e41a18b3569ab678f1497fbc5c120"
    code, out = verify(v("trustee/tpm_evidence.json"), "--platform", "tpm", "--nonce", nonce)
    assert code == 1 and out["accepted"] is False and out["evidence_valid"] is True
    assert out["chain_valid"] is None and out["ak_certified"] is False
    assert "uncertified-ak" in out["reason"] and out["pcr00"] == "00" * 32
    code, out = verify(
        v("trustee/tpm_evidence.json"), "--platform", "tpm", "--nonce", nonce, "--tolerate", "uncertified-ak"
    )
    assert code == 0 and out["accepted"] is True
    code, out = verify(
        v("trustee/tpm_evidence.json"),
        "--platform",
        "tpm",
        "--nonce",
        "00" + nonce[2:],
        "--tolerate",
        "uncertified-ak",
    )
    assert code == 1 and "does not carry the nonce" in out["reason"]


def test_azure_evidence_from_separate_files() -> None:
    d = "trustee/az-snp-vtpm/"
    args = (
        v(d + "tpm-quote-v1.json"),
        "--platform",
        "azure-snp-vtpm",
        "--hcl-report",
        v(d + "hcl-report.bin"),
    )
    code, out = verify(*args, "--cert", v(d + "vcek.pem"), "--nonce", b"challenge".hex())
    assert code == 0 and out["accepted"] is True and out["ak_certified"] is True
    assert out["measurement"].startswith("9ac48fca") and out["report_data"] == b"challenge".hex()
    code, out = verify(*args, "--nonce", b"challenge".hex())
    assert code == 1 and "needs the VCEK" in out["reason"]


def test_an_nvidia_gpu_report_needs_its_chain_and_says_measurements_were_not_compared() -> None:
    d = "trustee/nvidia/"
    nonce = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
    report = v(d + "hopperAttestationReport.txt")
    code, out = verify(
        report, "--platform", "nvidia-gpu", "--cert", v(d + "hopper_cert_chain_case1.txt"), "--nonce", nonce
    )
    assert code == 1 and out["evidence_valid"] is True and out["measurements_compared"] is False
    assert out["driver_version"] == "550.90.07" and "no-rim-check" in out["reason"]
    assert veil("evidence", "verify", report, "--platform", "nvidia-gpu").returncode == 2
    rims = Path(__file__).resolve().parents[2] / "fixtures" / "nvidia-rim"
    given = [a for f in sorted(rims.glob("*.swidtag")) for a in ("--rim", str(f))]
    code, out = verify(
        report, "--platform", "nvidia-gpu", "--cert", v(d + "hopper_cert_chain_case1.txt"), "--nonce", nonce,
        "--at", "2025-01-01T00:00:00Z", *given,
    )  # fmt: skip
    assert code == 1 and "matches neither the report's VBIOS (96.00.9f.00.01)" in out["reason"], out
    misused = veil("evidence", "verify", report, "--platform", "tpm", *given)
    assert misused.returncode == 2 and "--rim applies to --platform nvidia-gpu only" in misused.stderr


def test_an_ear_for_a_relying_party(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "ear.key"
    key_file.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    key_file.chmod(0o600)
    snp = (
        v("trustee/snp/test-report.bin"),
        "--platform",
        "sev-snp",
        "--cert",
        v("trustee/snp/test-vcek.der"),
    )
    accepted = veil("evidence", "verify", *snp, "--ear", str(key_file))
    assert accepted.returncode == 0, accepted.stderr
    claims = jwt.decode(accepted.stdout.strip(), key=key.public_key(), algorithms=["ES256"])
    assert claims["submods"]["cpu"]["ear.status"] == "affirming" and "eat_nonce" not in claims
    assert claims["submods"]["cpu"]["ear.veil.claims"]["measurement"].startswith("a1f3930413247bb3")

    debug = (
        v("go-sev-guest/attestation.bin"),
        "--platform",
        "sev-snp",
        "--cert",
        v("go-sev-guest/vcek.testcer"),
    )
    refused = veil("evidence", "verify", *debug, "--ear", str(key_file))
    assert refused.returncode == 1
    cpu = jwt.decode(refused.stdout.strip(), key=key.public_key(), algorithms=["ES256"])["submods"]["cpu"]
    assert cpu["ear.status"] == "contraindicated" and "debug mode" in cpu["ear.veil.claims"]["reason"]

    d = "trustee/nvidia/"
    gpu = veil(
        "evidence",
        "verify",
        v(d + "hopperAttestationReport.txt"),
        "--platform",
        "nvidia-gpu",
        "--cert",
        v(d + "hopper_cert_chain_case1.txt"),
        "--tolerate",
        "no-rim-check",
        "--ear",
        str(key_file),
        "--nonce",
        "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb",
    )
    assert gpu.returncode == 0, gpu.stderr
    result = jwt.decode(gpu.stdout.strip(), key=key.public_key(), algorithms=["ES256"])
    assert list(result["submods"]) == ["gpu"] and result["submods"]["gpu"]["ear.status"] == "warning"
    assert result["eat_nonce"] == "kx2N0K3SA6w9i0-9514RUnju_Nzqxbh2cadI8yNk38s"

    key_file.chmod(0o644)
    assert veil("evidence", "verify", *snp, "--ear", str(key_file)).returncode != 0
