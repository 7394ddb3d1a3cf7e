"""Governance of session updates: owners approve a new version by signing its hash.

An approval is an ECDSA P-256 / SHA-256 signature with an owner key over
``"veil-session-approval-v1\\n" || name || "\\n" || new hash``. The stored session's
``access_policy`` decides how many distinct ``update`` owners must approve; the owner who
sends the update counts as one (its client certificate authenticates it).
"""

import base64
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_der_public_key

from veil.crypto.certs import verify_ecdsa
from veil.crypto.x509ca import spki_sha256
from veil.errors import VeilError
from veil.policy.model import AccessPolicy

_DOMAIN = b"veil-session-approval-v1\n"


class ApprovalMalformed(VeilError):
    pass


def approval_message(session: str, digest: str) -> bytes:
    return _DOMAIN + f"{session}\n{digest}".encode()


@dataclass(frozen=True)
class Approval:
    """One owner's signature over one version (name and hash) of a session."""

    session: str
    hash: str
    public_key: bytes  # SubjectPublicKeyInfo DER
    signature: bytes

    @property
    def owner(self) -> str:
        return spki_sha256(load_der_public_key(self.public_key))  # type: ignore[arg-type]

    def valid(self) -> bool:
        try:
            key = load_der_public_key(self.public_key)
        except (ValueError, UnsupportedAlgorithm):
            return False
        return isinstance(key, ec.EllipticCurvePublicKey) and verify_ecdsa(
            key, self.signature, approval_message(self.session, self.hash), "sha256"
        )

    def to_json(self) -> dict[str, str]:
        return {
            "session": self.session,
            "hash": self.hash,
            "public_key": base64.b64encode(self.public_key).decode(),
            "signature": base64.b64encode(self.signature).decode(),
        }

    @classmethod
    def from_json(cls, data: Any) -> "Approval":
        try:
            return cls(
                str(data["session"]),
                str(data["hash"]),
                base64.b64decode(data["public_key"], validate=True),
                base64.b64decode(data["signature"], validate=True),
            )
        except (KeyError, TypeError, ValueError):  # binascii.Error is a ValueError
            raise ApprovalMalformed(
                "an approval is {session, hash, public_key, signature} (from `veil session approve`)"
            ) from None


def sign_approval(key: ec.EllipticCurvePrivateKey, session: str, digest: str) -> Approval:
    signature = key.sign(approval_message(session, digest), ec.ECDSA(hashes.SHA256()))
    public = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return Approval(session, digest, public, signature)


@dataclass(frozen=True)
class UpdateReview:
    #: the owners whose approvals counted, besides the sender
    approvers: list[str]
    #: why the update lacks approvals, or None
    refusal: str | None


def review_update(
    policy: AccessPolicy, creator: str, caller: str, session: str, digest: str, approvals: list[Approval]
) -> UpdateReview:
    """Count the approvals of an update of ``session`` to ``digest`` under ``policy`` (the
    stored version's). Approvals for another version, by non-owners or with a bad
    signature do not count; the sender counts as one when it is an owner."""
    needed = policy.required_approvals()
    if needed <= 1:
        return UpdateReview([], None)
    owners = {creator if o == "CREATOR" else o for o in policy.update}
    approved = set()
    for approval in approvals:
        matches = approval.session == session and approval.hash == digest
        if matches and approval.valid() and approval.owner in owners:
            approved.add(approval.owner)
    approvers = sorted(approved - {caller})
    approved |= {caller} & owners
    if len(approved) >= needed:
        return UpdateReview(approvers, None)
    missing = ", ".join(o[:16] + "…" for o in sorted(owners - approved))
    return UpdateReview(
        approvers,
        f"updating session '{session}' to {digest[:16]}… needs the approval of {needed} of its "
        f"{len(owners)} update owners; it has {len(approved)} (missing: {missing}); each signs with "
        "`veil session approve FILE` and the update carries the approvals (--approval)",
    )
