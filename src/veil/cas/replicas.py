"""Handing the master key to a new replica that attested (docs/cas-storage.md, "Hand-over").

``grant_join`` runs in the running replica; ``join`` in the new one, before it serves.
"""

from dataclasses import dataclass
from pathlib import Path

from veil.cas.custody import JOIN_DOMAIN, Custody, transfer_info, transfer_report_data
from veil.cas.errors import MasterKeyError
from veil.cas.service import Cas
from veil.client.http import CasConnection, CasRequestFailed
from veil.client.pinning import CasAttestationFailed, attest_cas
from veil.crypto import (
    AeadKey,
    BundleKeyPair,
    DecryptionFailed,
    constant_time_equal,
    open_to_key,
    seal_to_key,
)
from veil.crypto.encoding import sha256_hex
from veil.protocol import NONCE_LEN, AttestationRefused, Evidence, EvidenceSource, b64, unb64
from veil.tee import EvidenceError
from veil.tee.peer import same_measurement, verify_peer_evidence


@dataclass(frozen=True)
class JoinRequest:
    nonce: bytes
    public_key: bytes
    evidence: Evidence

    @classmethod
    def from_json(cls, body: dict[str, object]) -> "JoinRequest":
        raw = body.get("evidence")
        if not isinstance(raw, dict) or not isinstance(raw.get("platform"), str):
            raise EvidenceError("field 'evidence' must be {platform, data}")
        nonce, public_key = unb64(body.get("nonce"), "nonce"), unb64(body.get("public_key"), "public_key")
        if len(nonce) != NONCE_LEN or len(public_key) != 32:
            raise EvidenceError(f"the nonce has {NONCE_LEN} bytes and the public key 32 (X25519)")
        return cls(nonce, public_key, Evidence(str(raw["platform"]), unb64(raw.get("data"), "evidence.data")))


def _refusal(
    cas: Cas, measurement: str, own_platform: bytes | None, request: JoinRequest, facts: dict[str, object]
) -> str | None:
    """Why the replica is refused (None: it is not); what was learnt goes into ``facts``."""

    def platform(platform_id: str) -> bytes | None:
        if own_platform is not None and sha256_hex(own_platform) == platform_id:
            return own_platform
        return cas.sim_platform_key(platform_id)

    tolerate = ("sim",) if cas.sim_mode else ()
    try:
        peer = verify_peer_evidence(request.evidence, platform, tolerate, cas.collateral_dir, cas.clock())
    except EvidenceError as exc:
        return f"the replica's evidence does not verify: {exc}"
    if peer.tcb_status is not None:
        facts["tcb_status"] = peer.tcb_status
    if not same_measurement(peer.measurement, measurement):
        return f"the replica runs measurement {peer.measurement}, this CAS {measurement}"
    if not constant_time_equal(
        peer.report_data, transfer_report_data(JOIN_DOMAIN, request.nonce, request.public_key)
    ):
        return "the evidence does not bind this nonce and key (replayed or relayed?)"
    return None


def grant_join(cas: Cas, measurement: str, own_platform: bytes | None, request: JoinRequest) -> bytes:
    """The master key encrypted to the joining replica's key, or AttestationRefused; the
    decision is audited in the transaction that uses the nonce."""
    facts: dict[str, object] = {}
    problem = cas.nonces.check(request.nonce) or _refusal(cas, measurement, own_platform, request, facts)
    with cas.records.store.transaction():
        problem = problem or cas.nonces.use(request.nonce)
        details = {"platform": request.evidence.platform, "granted": problem is None, **facts}
        cas.audit.append("replica.join", cas.sim_mode, **details, **({"reason": problem} if problem else {}))
    if problem:
        raise AttestationRefused(problem)
    return seal_to_key(
        cas.records.master_key.raw, request.public_key, transfer_info(JOIN_DOMAIN, request.nonce)
    )


class JoinFailed(MasterKeyError):
    """The running replica could not be verified, or refused this one."""


def join(
    url: str,
    custody: Custody,
    evidence: EvidenceSource,
    measurement: str,
    sim: bool,
    collateral_dir: Path | None = None,
) -> tuple[AeadKey, str]:
    """Obtain the master key from the replica at ``url``; (key, the identity it attested).
    An Intel replica's TCB status is evaluated with ``collateral_dir`` when given."""
    try:
        pin = attest_cas(url, ("sim",) if sim else (), measurement, collateral_dir)
    except (CasAttestationFailed, CasRequestFailed) as exc:
        raise JoinFailed(f"the replica at {url} is not verified: {exc}") from None
    keys = BundleKeyPair.generate()
    connection = CasConnection(url, pin.ca_certificate)
    try:
        nonce = unb64(connection.call("POST", "/v1/nonces")["nonce"], "nonce")
        proof = evidence.collect(transfer_report_data(JOIN_DOMAIN, nonce, keys.public_bytes), measurement)
        answer = connection.call(
            "POST",
            "/v1/replicas/join",
            {
                "nonce": b64(nonce),
                "public_key": b64(keys.public_bytes),
                "evidence": {"platform": proof.platform, "data": b64(proof.data)},
            },
        )
        sealed = unb64(answer.get("master_key"), "master_key")
    except CasRequestFailed as exc:
        raise JoinFailed(f"the replica at {url} refused to hand over the master key: {exc}") from None
    finally:
        connection.close()
    try:
        master = AeadKey(open_to_key(sealed, keys, transfer_info(JOIN_DOMAIN, nonce)))
    except DecryptionFailed:
        raise JoinFailed("the master key from the replica does not decrypt") from None
    return custody.adopt(master), pin.identity


def check_identity(joined_identity: str, stored_identity: str) -> None:
    if not constant_time_equal(joined_identity, stored_identity):
        raise JoinFailed("the identity in the database is not the one the running replica attested")


__all__ = ["JoinFailed", "JoinRequest", "check_identity", "grant_join", "join"]
