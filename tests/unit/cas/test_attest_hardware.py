"""The CAS deciding on real SEV-SNP and Intel evidence (vectors), check by check.

Real evidence cannot carry the report_data of a fresh nonce, so an acceptable report is
refused at the last check, the binding; each earlier check is shown by its own refusal.
"""

import datetime as dt
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import session_dict
from tests.vectors import ROOT, T_A, T_B, T_SNP, requires_vectors, vector
from veil.cas import Cas
from veil.crypto import BundleKeyPair
from veil.crypto.x509ca import public_key_der
from veil.protocol import AttestationRefused, AttestationRequest
from veil.tee.hardware_evidence import HardwareEvidence
from veil.tee.intel import Collateral
from veil.tee.intel.collateral_store import CollateralStore

pytestmark = requires_vectors

F1_MEASUREMENT = (
    "7a1e5c266c0108dbc9bb94fa926951320940915d0aafb42464bd88b579ea158d3e1a0dc39b2c60bd95b9c480cd81841f"
)
A_MR_ENCLAVE = "33d8736db756ed4997e04ba358d27833188f1932ff7b1d156904d3f560452fbb"
B_MR_TD = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
WORKLOAD = "sha256:" + "77" * 32


def open_cas(tmp_path: Path, when: dt.datetime) -> Cas:
    store = CollateralStore(tmp_path / "collateral")
    store.add(Collateral.load(ROOT / "dcap-qvl/sgx_quote_collateral.json"))
    store.add(Collateral.load(ROOT / "dcap-qvl/tdx_quote_collateral.json"))
    cas = Cas.open_embedded(tmp_path / "cas", collateral_dir=store.root)
    cas._clock = lambda: when
    return cas


def session(cas: Cas, entries: list[dict[str, object]], tolerate: list[str], **security: object) -> None:
    doc = session_dict(tolerate=tolerate, command=["/bin/true"])
    doc["services"][0]["attestation"] = entries
    doc["security"].update(security)
    cas.create_session(yaml.safe_dump(doc), "owner")


def attest(cas: Cas, evidence: HardwareEvidence, workload: str = WORKLOAD) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    request = AttestationRequest(
        "test/app/app",
        cas.new_nonce(),
        evidence.to_evidence(),
        public_key_der(key.public_key()),
        BundleKeyPair.generate().public_bytes,
        workload,
    )
    with pytest.raises(AttestationRefused) as refused:
        cas.attest(request)
    return refused.value.reason


def snp(
    report: str = "virtee-sev/derived/report_milan.bin", vcek: str = "virtee-sev/vcek_milan.der"
) -> HardwareEvidence:
    return HardwareEvidence("sev-snp", vector(report), vector(vcek))


SNP_ENTRY = {"platform": "sev-snp", "measurement": F1_MEASUREMENT}
BINDING = "report_data does not bind this nonce, the runtime's keys and its measurement"


def test_snp_passes_every_check_up_to_the_binding(tmp_path: Path) -> None:
    cas = open_cas(tmp_path, T_SNP)
    session(cas, [SNP_ENTRY], ["smt"])
    assert attest(cas, snp()) == BINDING
    last = cas.audit.entries()[-1].event
    assert last["event"] == "attest.refuse" and last["measurement"] == F1_MEASUREMENT and last["sim"] is True


def test_snp_smt_needs_its_tolerance(tmp_path: Path) -> None:
    cas = open_cas(tmp_path, T_SNP)
    session(cas, [SNP_ENTRY], [])
    assert attest(cas, snp()) == "SMT is enabled on the platform (tolerate 'smt' to accept)"


def test_snp_debug_guest_is_refused_unless_tolerated(tmp_path: Path) -> None:
    cas = open_cas(tmp_path, T_SNP)
    entry = {
        "platform": "sev-snp",
        "measurement": "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82"
        "705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01",
    }
    session(cas, [entry], ["smt"])
    assert "runs in debug mode" in attest(
        cas, snp("go-sev-guest/attestation.bin", "go-sev-guest/vcek.testcer")
    )


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"measurement": "00" * 48}, "measurement 7a1e5c266c0108db"),
        ({"host_data": "01" * 32}, "host_data 0000000000000000"),
        ({"min_tcb": {"microcode": 116}}, "reported TCB below the minimum (microcode 115 < 116)"),
        ({"vmpl": 1}, "VMPL 0 is not 1"),
        ({"workload": "sha256:" + "00" * 32}, "workload sha256:7777"),
    ],
)
def test_snp_reference_values_are_checked(tmp_path: Path, extra: dict[str, object], reason: str) -> None:
    cas = open_cas(tmp_path, T_SNP)
    session(cas, [{**SNP_ENTRY, **extra}], ["smt"])
    refused = attest(cas, snp())
    assert refused.startswith("sev-snp evidence matches no attestation entry of service 'app'")
    assert reason in refused


def test_a_tampered_snp_report_does_not_verify(tmp_path: Path) -> None:
    cas = open_cas(tmp_path, T_SNP)
    session(cas, [SNP_ENTRY], ["smt"])
    report = bytearray(vector("virtee-sev/derived/report_milan.bin"))
    report[0x90] ^= 1  # the measurement
    evidence = HardwareEvidence("sev-snp", bytes(report), vector("virtee-sev/vcek_milan.der"))
    assert attest(cas, evidence).startswith(
        "sev-snp evidence does not verify: the report signature does not verify"
    )


SGX_ENTRY = {"platform": "sgx", "mr_enclave": A_MR_ENCLAVE}
SGX_TOLERATE = ["configuration-needed", "sw-hardening-needed"]


def sgx() -> HardwareEvidence:
    return HardwareEvidence("sgx", vector("dcap-qvl/sgx_quote"))


def test_sgx_tcb_status_needs_its_tolerances(tmp_path: Path) -> None:
    cas = open_cas(tmp_path, T_A)
    session(cas, [SGX_ENTRY], [])
    assert attest(cas, sgx()) == (
        "TCB status ConfigurationAndSWHardeningNeeded needs tolerance "
        "configuration-needed and sw-hardening-needed"
    )


def test_sgx_advisories_outside_the_allow_list_are_refused(tmp_path: Path) -> None:
    cas = open_cas(tmp_path, T_A)
    session(cas, [SGX_ENTRY], SGX_TOLERATE, allowed_advisories=["INTEL-SA-00289"])
    assert attest(cas, sgx()) == "advisories not in the allow-list: INTEL-SA-00615"


def test_sgx_passes_every_check_up_to_the_binding(tmp_path: Path) -> None:
    cas = open_cas(tmp_path, T_A)
    session(cas, [SGX_ENTRY], SGX_TOLERATE, allowed_advisories=["INTEL-SA-00289", "INTEL-SA-00615"])
    assert attest(cas, sgx()) == BINDING


def test_sgx_signer_entry_with_svn_range(tmp_path: Path) -> None:
    cas = open_cas(tmp_path, T_A)
    signer = {
        "platform": "sgx",
        "mr_signer": "815f42f11cf64430c30bab7816ba596a1da0130c3b028b673133a66cf9a3e0e6",
        "isv_prod_id": 0,
        "isv_svn": {"min": 1},
    }
    session(cas, [signer], SGX_TOLERATE)
    assert "ISVSVN 0 is outside 1..65535" in attest(cas, sgx())


def test_expired_collateral_is_refused(tmp_path: Path) -> None:
    cas = open_cas(tmp_path, T_A + dt.timedelta(days=1))
    session(cas, [SGX_ENTRY], SGX_TOLERATE)
    assert "expired" in attest(cas, sgx())


def test_missing_collateral_is_refused(tmp_path: Path) -> None:
    cas = Cas.open_embedded(tmp_path / "cas", collateral_dir=tmp_path / "empty")
    cas._clock = lambda: T_A
    (tmp_path / "empty").mkdir()
    session(cas, [SGX_ENTRY], SGX_TOLERATE)
    assert "no collateral for sgx FMSPC 00a067110000" in attest(cas, sgx())


def test_tdx_rtmr_reference_values(tmp_path: Path) -> None:
    cas = open_cas(tmp_path, T_B)
    rtmr = [None, None, "00" * 48, None]
    session(cas, [{"platform": "tdx", "mr_td": B_MR_TD, "rtmr": rtmr}], ["smt"])
    assert "RTMR2 d833feef2cd94514" in attest(cas, HardwareEvidence("tdx", vector("dcap-qvl/tdx_quote")))


def test_tdx_passes_every_check_up_to_the_binding(tmp_path: Path) -> None:
    cas = open_cas(tmp_path, T_B)
    session(cas, [{"platform": "tdx", "mr_td": B_MR_TD}], ["smt"])
    assert attest(cas, HardwareEvidence("tdx", vector("dcap-qvl/tdx_quote"))) == BINDING


def test_a_hardware_grant_issues_the_bundle_and_is_audited_without_sim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the binding is taken out (real hardware cannot sign our nonce); all else is real."""
    cas = open_cas(tmp_path, T_B)
    session(cas, [{"platform": "tdx", "mr_td": B_MR_TD}], ["smt"])
    monkeypatch.setattr(Cas, "_binding_problem", staticmethod(lambda *_: None))
    key = ec.generate_private_key(ec.SECP256R1())
    request = AttestationRequest(
        "test/app/app",
        cas.new_nonce(),
        HardwareEvidence("tdx", vector("dcap-qvl/tdx_quote")).to_evidence(),
        public_key_der(key.public_key()),
        BundleKeyPair.generate().public_bytes,
        WORKLOAD,
    )
    grant = cas.attest(request)
    assert grant.sim is False and "BEGIN CERTIFICATE" in grant.instance_certificate_pem
    last = cas.audit.entries()[-1].event
    assert last["event"] == "attest.grant" and last["tcb_status"] == "UpToDate"


def test_a_cas_without_collateral_accepts_intel_only_with_no_tcb_check(tmp_path: Path) -> None:
    """No collateral store at all: the TCB status of an Intel quote is unknown, so the
    session must say it accepts that (`no-tcb-check`), else the quote is refused."""
    cas = Cas.open_embedded(tmp_path / "cas")
    cas._clock = lambda: T_A
    session(cas, [SGX_ENTRY], SGX_TOLERATE)
    assert "tolerate 'no-tcb-check'" in attest(cas, sgx())
    other = Cas.open_embedded(tmp_path / "cas2")
    other._clock = lambda: T_A
    session(other, [SGX_ENTRY], [*SGX_TOLERATE, "no-tcb-check"])
    assert attest(other, sgx()) == BINDING
