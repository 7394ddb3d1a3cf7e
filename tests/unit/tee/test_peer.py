"""A peer CAS's Intel TCB (veil.tee.peer): evaluated with the verifier's collateral, on real
quotes and collateral (vectors); not evaluated without any, and said so."""

import datetime as dt
import os
from pathlib import Path

import pytest

from tests.vectors import ROOT, T_A, T_B, requires_vectors, vector
from veil.cas import Cas
from veil.cas.replicas import JoinRequest, grant_join
from veil.protocol import AttestationRefused
from veil.tee.claims import EvidenceError
from veil.tee.hardware_evidence import HardwareEvidence
from veil.tee.intel import Collateral
from veil.tee.intel.collateral_store import CollateralStore
from veil.tee.peer import NOT_EVALUATED, verify_peer_evidence

pytestmark = requires_vectors

SGX_TOLERATE = ("configuration-needed", "sw-hardening-needed")


def _store(tmp_path: Path) -> Path:
    store = CollateralStore(tmp_path / "collateral")
    store.add(Collateral.load(ROOT / "dcap-qvl/sgx_quote_collateral.json"))
    store.add(Collateral.load(ROOT / "dcap-qvl/tdx_quote_collateral.json"))
    return store.root


def _sgx() -> HardwareEvidence:
    return HardwareEvidence("sgx", vector("dcap-qvl/sgx_quote"))


def _no_sim(_platform_id: str) -> bytes | None:
    return None


def test_without_collateral_the_tcb_is_not_evaluated_and_says_so() -> None:
    peer = verify_peer_evidence(_sgx().to_evidence(), _no_sim, (), at=T_A)
    assert peer.tcb_status == NOT_EVALUATED and peer.platform == "sgx" and not peer.sim


def test_with_collateral_the_tcb_status_needs_its_tolerances(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(EvidenceError, match="ConfigurationAndSWHardeningNeeded needs tolerance"):
        verify_peer_evidence(_sgx().to_evidence(), _no_sim, (), store, at=T_A)
    peer = verify_peer_evidence(_sgx().to_evidence(), _no_sim, SGX_TOLERATE, store, at=T_A)
    assert peer.tcb_status == "ConfigurationAndSWHardeningNeeded"
    tdx = verify_peer_evidence(
        HardwareEvidence("tdx", vector("dcap-qvl/tdx_quote")).to_evidence(), _no_sim, (), store, at=T_B
    )
    assert tdx.tcb_status == "UpToDate"


def test_a_store_without_the_peers_fmspc_or_out_of_date_refuses(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        EvidenceError, match="TCB cannot be evaluated: no collateral for sgx FMSPC 00a067110000"
    ):
        verify_peer_evidence(_sgx().to_evidence(), _no_sim, SGX_TOLERATE, empty, at=T_A)
    with pytest.raises(EvidenceError, match="expired"):
        verify_peer_evidence(
            _sgx().to_evidence(), _no_sim, SGX_TOLERATE, _store(tmp_path), at=T_A + dt.timedelta(days=1)
        )


def test_a_cas_with_collateral_refuses_a_joining_replica_by_its_tcb(tmp_path: Path) -> None:
    """The CAS side of a join: with collateral the replica's TCB decides first (and is
    audited); without, the same quote gets as far as the measurement comparison."""

    def join(cas: Cas) -> str:
        request = JoinRequest(cas.new_nonce(), os.urandom(32), _sgx().to_evidence())
        with pytest.raises(AttestationRefused) as refused:
            grant_join(cas, "sha256:" + "00" * 32, None, request)
        return refused.value.reason

    with_collateral = Cas.open_embedded(tmp_path / "cas", collateral_dir=_store(tmp_path))
    with_collateral._clock = lambda: T_A
    assert "ConfigurationAndSWHardeningNeeded needs tolerance" in join(with_collateral)
    with_collateral.close()

    without = Cas.open_embedded(tmp_path / "cas2")
    assert join(without).startswith("the replica runs measurement")
    entries = [e.event for e in without.audit.entries() if e.event["event"] == "replica.join"]
    assert entries[-1]["tcb_status"] == NOT_EVALUATED
    without.close()
