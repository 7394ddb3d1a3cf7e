"""Access rules, governance thresholds, namespaces and version history of sessions."""

from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import EmbeddedCas, session_dict
from veil.cas import AccessDenied
from veil.crypto.x509ca import spki_sha256
from veil.policy import PolicyError, parse_session, session_hash
from veil.policy.governance import Approval, ApprovalMalformed, sign_approval

M = "sha256:" + "ef" * 32


class Owner:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.id = spki_sha256(self.key.public_key())

    def approve(self, name: str, digest: str) -> Approval:
        return sign_approval(self.key, name, digest)


def doc(name: str = "team/app", access: dict[str, Any] | None = None, **env: str) -> dict[str, Any]:
    document = session_dict(name=name, measurement=M, command=["/bin/true"], environment=env)
    if access is not None:
        document["access_policy"] = access
    return document


def text(document: dict[str, Any], predecessor: str | None = None) -> str:
    return yaml.safe_dump({**document, **({"predecessor": predecessor} if predecessor else {})})


def next_version(cas: Any, name: str, document: dict[str, Any]) -> tuple[str, str]:
    """(text, new hash) of ``document`` as the next version of ``name``."""
    body = text(document, cas.session_hash_of(name))
    return body, session_hash(parse_session(body))


@pytest.fixture
def owners() -> list[Owner]:
    return [Owner() for _ in range(3)]


def test_read_and_update_rules_for_listed_owners_any_and_none(
    embedded: EmbeddedCas, owners: list[Owner]
) -> None:
    a, b, c = owners
    cas = embedded.cas
    cas.create_session(text(doc(access={"read": [b.id], "update": [b.id]})), a.id)
    cas.get_session("team/app", b.id)
    for outsider in (a.id, c.id):  # the creator is not listed: CREATOR is not implied
        with pytest.raises(AccessDenied, match="may not read"):
            cas.get_session("team/app", outsider)
    body, _ = next_version(cas, "team/app", doc(access={"read": ["ANY"], "update": ["NONE"]}, X="1"))
    with pytest.raises(AccessDenied, match="may not update"):
        cas.update_session(body, a.id)
    cas.update_session(body, b.id)
    cas.get_session("team/app", c.id)  # ANY reads
    body, _ = next_version(cas, "team/app", doc(X="2"))
    for anyone in (a.id, b.id, c.id):  # NONE: frozen for good
        with pytest.raises(AccessDenied):
            cas.update_session(body, anyone)


def test_require_all_needs_every_listed_owner(embedded: EmbeddedCas, owners: list[Owner]) -> None:
    a, b, c = owners
    cas = embedded.cas
    access = {"read": [a.id, b.id, c.id], "update": [a.id, b.id, c.id], "governance": "require-all"}
    first = cas.create_session(text(doc(access=access)), a.id)
    body, digest = next_version(cas, "team/app", doc(access=access, X="1"))
    with pytest.raises(AccessDenied, match=r"needs the approval of 3 of its 3 update owners; it has 2"):
        cas.update_session(body, a.id, approvals=[b.approve("team/app", digest)])
    assert cas.session_hash_of("team/app") == first.hash
    record = cas.update_session(
        body, a.id, approvals=[b.approve("team/app", digest), c.approve("team/app", digest)]
    )
    assert record.hash == digest


def test_require_at_least_counts_distinct_valid_owner_approvals(
    embedded: EmbeddedCas, owners: list[Owner]
) -> None:
    a, b, c = owners
    outsider = Owner()
    cas = embedded.cas
    access = {"update": [a.id, b.id, c.id], "governance": {"require-at-least": 2}, "read": ["ANY"]}
    cas.create_session(text(doc(access=access)), a.id)
    body, digest = next_version(cas, "team/app", doc(access=access, X="1"))
    forged = Approval("team/app", digest, b.approve("team/app", digest).public_key, b"\x30\x00")
    not_counted = [
        a.approve("team/app", digest),  # the sender's own approval adds nothing
        outsider.approve("team/app", digest),  # not an update owner
        b.approve("team/app", "0" * 64),  # another version
        b.approve("other/app", digest),  # another session
        forged,  # a bad signature
    ]
    with pytest.raises(AccessDenied, match="needs the approval of 2 of its 3 update owners; it has 1"):
        cas.update_session(body, a.id, approvals=not_counted)
    cas.update_session(body, a.id, approvals=[c.approve("team/app", digest)])
    audit = [e.event for e in cas.audit.entries() if e.event["event"] == "session.update"]
    assert audit[-1]["approvals"] == [c.id]


def test_the_stored_policy_governs_not_the_proposed_one(embedded: EmbeddedCas, owners: list[Owner]) -> None:
    a, b, _ = owners
    cas = embedded.cas
    strict = {"update": [a.id, b.id], "governance": "require-all"}
    cas.create_session(text(doc(access=strict)), a.id)
    body, _ = next_version(cas, "team/app", doc(access={"update": [a.id]}))  # a alone drops b
    with pytest.raises(AccessDenied, match="needs the approval of 2"):
        cas.update_session(body, a.id)


@pytest.mark.parametrize(
    ("access", "message"),
    [
        ({"update": ["ANY"], "governance": "require-all"}, "not ANY or NONE"),
        ({"update": ["CREATOR"], "governance": {"require-at-least": 2}}, "more than the 1 owner"),
        ({"update": ["CREATOR"], "governance": {"require-at-least": 0}}, "greater than or equal to 1"),
        ({"update": ["CREATOR"], "governance": "majority"}, "governance"),
        ({"read": ["EVERYONE"]}, "neither CREATOR, ANY, NONE nor an owner key hash"),
    ],
)
def test_bad_access_policies_are_refused(access: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_session(text(doc(access=access)))


def test_creating_in_a_namespace_needs_the_parents_update_right(
    embedded: EmbeddedCas, owners: list[Owner]
) -> None:
    a, b, _ = owners
    cas = embedded.cas
    cas.create_session(text(doc(name="acme", access={"update": ["CREATOR", b.id]})), a.id)
    cas.create_session(text(doc(name="acme/payments/api")), b.id)  # nearest ancestor: acme
    with pytest.raises(AccessDenied, match="in the namespace of session 'acme'"):
        cas.create_session(text(doc(name="acme/payments/db")), Owner().id)
    mallory = Owner()
    with pytest.raises(AccessDenied, match="namespace of session 'acme/payments/api'"):
        cas.create_session(text(doc(name="acme/payments/api/x")), mallory.id)
    cas.create_session(text(doc(name="other/thing")), mallory.id)  # no parent: first come


def test_history_lists_every_version_for_readers_only(embedded: EmbeddedCas, owners: list[Owner]) -> None:
    a, b, c = owners
    cas = embedded.cas
    access = {"read": [a.id, b.id], "update": [a.id, b.id]}
    first = cas.create_session(text(doc(access=access)), a.id)
    body, _ = next_version(cas, "team/app", doc(access=access, X="1"))
    second = cas.update_session(body, b.id)
    versions = cas.session_history("team/app", a.id)
    assert [(v.revision, v.hash, v.by) for v in versions] == [(1, first.hash, a.id), (2, second.hash, b.id)]
    assert "X" not in versions[0].text and versions[1].text == body
    with pytest.raises(AccessDenied):
        cas.session_history("team/app", c.id)


@pytest.mark.parametrize(
    "data",
    [
        5,
        {"session": "a"},
        {"session": "a", "hash": "b", "public_key": "\u00e9", "signature": ""},
        {"session": "a", "hash": "b", "public_key": "!!", "signature": ""},
    ],
)
def test_malformed_approvals_are_a_clear_error(data: object) -> None:
    with pytest.raises(ApprovalMalformed, match="an approval is"):
        Approval.from_json(data)


def test_an_approval_with_a_key_that_is_not_a_key_is_not_valid() -> None:
    assert not Approval("a", "b", b"\x30\x03\x02\x01\x00", b"").valid()
