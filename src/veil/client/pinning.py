"""``veil cas attest``: verify a CAS's own evidence and pin its identity.

The first contact cannot verify TLS (nothing is pinned yet), so trust comes from the
evidence: it binds a fresh client nonce, the SHA-256 of the CAS CA's public key and the
CAS measurement. A second connection, now verified against that CA, proves the server
holds the key. Sim evidence proves nothing about the machine (anyone can make a key);
it is accepted only with ``--tolerate sim`` and said loudly.
"""

import os
from collections.abc import Collection
from pathlib import Path
from typing import Any

from veil.client.config import CasPin
from veil.client.http import CasConnection, CasRequestFailed
from veil.crypto import constant_time_equal
from veil.crypto.certs import load_pem_chain
from veil.crypto.encoding import sha256_hex
from veil.crypto.x509ca import spki_sha256
from veil.errors import VeilError
from veil.protocol import NONCE_LEN, Evidence, b64, cas_report_data, unb64
from veil.tee import EvidenceError
from veil.tee.peer import PeerEvidence, same_measurement, verify_peer_evidence


class CasAttestationFailed(VeilError):
    """The CAS's evidence does not verify, or is not acceptable."""


def verify_cas_evidence(
    answer: dict[str, Any],
    expected_report_data: bytes,
    tolerate: Collection[str],
    expected_measurement: str | None,
    collateral_dir: Path | None = None,
) -> PeerEvidence:
    """Verify the evidence in a CAS's answer (for pinning, or of a CAS in recovery mode):
    the platform, the binding to ``expected_report_data``, the stated and the expected
    measurement; an Intel CAS's TCB status with the collateral in ``collateral_dir``."""
    try:
        raw = answer["evidence"]
        evidence = Evidence(str(raw["platform"]), unb64(raw.get("data"), "evidence.data"))
        stated = str(answer["measurement"])
        sim = evidence.platform == "sim"
        platform_key = unb64(answer.get("platform_public_key"), "platform_public_key") if sim else b""
    except (KeyError, TypeError, ValueError) as exc:
        raise CasAttestationFailed(f"the CAS answer is malformed: {exc}") from None
    if sim and "sim" not in tolerate:
        raise CasAttestationFailed(
            "the CAS runs in sim mode: its evidence proves nothing about the machine and sim is not "
            "tolerated (pass --tolerate sim for development)"
        )
    try:
        peer = verify_peer_evidence(
            evidence,
            lambda pid: platform_key if sha256_hex(platform_key) == pid else None,
            tolerate,
            collateral_dir,
        )
    except EvidenceError as exc:
        raise CasAttestationFailed(f"the CAS evidence does not verify: {exc}") from None
    attested = peer.measurement
    if not constant_time_equal(peer.report_data, expected_report_data):
        raise CasAttestationFailed(
            "the CAS evidence does not bind this request's nonce and the CAS's key (replayed or relayed?)"
        )
    if sim and attested != stated:
        raise CasAttestationFailed("the CAS evidence attests another measurement than the CAS states")
    if expected_measurement is not None and not same_measurement(expected_measurement, attested):
        raise CasAttestationFailed(
            f"the CAS measurement is {attested}, not the expected {expected_measurement}"
        )
    return peer


def attest_cas(
    url: str, tolerate: Collection[str], expected_measurement: str | None, collateral_dir: Path | None = None
) -> CasPin:
    nonce = os.urandom(NONCE_LEN)
    answer = CasConnection(url, None).call("POST", "/v1/cas/evidence", {"nonce": b64(nonce)})
    try:
        ca_pem = str(answer["ca_certificate"])
        ca = load_pem_chain(ca_pem.encode())[0]
        expected = cas_report_data(nonce, spki_sha256(ca.public_key()), str(answer["measurement"]))  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise CasAttestationFailed(f"the CAS answer is malformed: {exc}") from None
    peer = verify_cas_evidence(answer, expected, tolerate, expected_measurement, collateral_dir)
    verified = CasConnection(url, ca_pem)
    try:
        verified.call("GET", "/v1/cas")
    except CasRequestFailed as exc:
        raise CasAttestationFailed(f"the CAS's TLS endpoint does not hold the attested key: {exc}") from None
    finally:
        verified.close()
    return CasPin(
        url=url,
        ca_certificate=ca_pem,
        identity=spki_sha256(ca.public_key()),  # type: ignore[arg-type]
        measurement=peer.measurement,
        sim=peer.sim,
        tcb_status=peer.tcb_status,
    )
