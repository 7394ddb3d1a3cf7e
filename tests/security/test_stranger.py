"""A stranger with nothing but network access to a CAS started as the README shows.

The attack of issue #25, step by step: enrol, register her own sim platform key, read the
program's measurement from the audit log, sign her own sim evidence, receive another
owner's secrets, push a bogus volume tag. Each step must be refused, on a closed CAS and on
one started with --open-enrolment, and the owner's next run must be unaffected.
"""

import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.cas_server import (
    CasServer,
    Owner,
    node_platform,
    pinned_owner,
    register_platform,
    signed_update,
)
from tests.conftest import PYTHON, SHOW, measurement_of, session_dict
from tests.net import free_port
from tests.security.attacker import Stranger
from veil.client.http import CasConnection, CasRequestFailed, HttpCasClient
from veil.crypto import PlatformSigningKey
from veil.protocol import AttestationRefused, VolumeTagUpdate, b64
from veil.runtime.attest import provision
from veil.tee import SimEvidenceSource

MEASUREMENT = measurement_of([PYTHON, str(SHOW)])


@dataclass
class Scene:
    cas: CasServer
    alice: Owner
    node: PlatformSigningKey
    #: a platform the administrator registered for another owner's sessions
    other_node: PlatformSigningKey
    secret: str
    tag: str
    mallory: Stranger


def _scene(tmp_path: Path, *extra: str) -> Iterator[Scene]:
    cas = CasServer(tmp_path / "cas", free_port(), tmp_path / "cas.log", extra=list(extra)).start()
    try:
        alice = pinned_owner(tmp_path, cas, "alice")
        home, platform_id = node_platform(tmp_path)
        register_platform(tmp_path, cas)
        other_home = register_platform(tmp_path, cas, "other-node")
        document = session_dict(
            name="alice/demo", environment={"DB_PASS": "$$VEIL::pw$$"}, sim_platforms=[platform_id]
        )
        document["volumes"] = [{"name": "data", "accept_fresh": True}]
        document["services"][0]["volumes"] = [{"name": "data", "path": "/srv/data"}]
        policy = tmp_path / "alice.yaml"
        policy.write_text(yaml.safe_dump(document, sort_keys=False))
        created = alice.veil("session", "create", str(policy))
        assert created.returncode == 0, created.stderr

        node = PlatformSigningKey.load_or_create(home / "las" / "platform.key")
        runtime = HttpCasClient(CasConnection(cas.url, alice.pin(cas.url)["ca_certificate"]))
        first = provision(runtime, SimEvidenceSource(node), "alice/demo/app", MEASUREMENT)
        runtime.push_volume_tag(signed_update(first, "alice/demo/app", None, "tag-1"))
        mallory = Stranger(cas, alice.pin(cas.url)["ca_certificate"], tmp_path / "mallory")
        yield Scene(
            cas,
            alice,
            node,
            PlatformSigningKey.load_or_create(other_home / "las" / "platform.key"),
            first.bundle.environment["DB_PASS"],
            "tag-1",
            mallory,
        )
    finally:
        cas.stop()


@pytest.fixture
def closed(tmp_path: Path) -> Iterator[Scene]:
    yield from _scene(tmp_path)


@pytest.fixture
def open_enrolment(tmp_path: Path) -> Iterator[Scene]:
    yield from _scene(tmp_path, "--open-enrolment")


def _runtime(scene: Scene) -> HttpCasClient:
    """A runtime's connection: no client certificate, only the CAS's public CA."""
    return HttpCasClient(CasConnection(scene.cas.url, scene.mallory.ca_pem))


def _forged_attestations_are_refused(scene: Scene) -> None:
    runtime = _runtime(scene)
    own = PlatformSigningKey.load_or_create(scene.mallory.home / "platform.key")
    with pytest.raises(AttestationRefused, match="is not registered with this CAS"):
        provision(runtime, SimEvidenceSource(own), "alice/demo/app", MEASUREMENT)
    # even the key of a registered node (root on another owner's node has it) is refused
    # for a session that does not name that node
    with pytest.raises(AttestationRefused, match="is not one session 'alice/demo' accepts"):
        provision(runtime, SimEvidenceSource(scene.other_node), "alice/demo/app", MEASUREMENT)


def _bogus_tag_is_refused(scene: Scene) -> None:
    certificate = scene.mallory.self_signed_certificate("veil://alice/demo/app")
    update = VolumeTagUpdate("alice/demo/app", "data", scene.tag, "bogus", certificate, b"")
    status, answer = scene.mallory.request(
        "POST",
        "/v1/volume-tags",
        {**update.to_json(), "signature": b64(b"\x30\x00")},
    )
    assert status == 409 and "not issued by the CA of session 'alice/demo'" in answer["error"]


def _alice_is_unaffected(scene: Scene) -> None:
    runtime = HttpCasClient(CasConnection(scene.cas.url, scene.alice.pin(scene.cas.url)["ca_certificate"]))
    again = provision(runtime, SimEvidenceSource(scene.node), "alice/demo/app", MEASUREMENT)
    assert again.bundle.environment["DB_PASS"] == scene.secret
    assert again.bundle.volumes[0].tag == scene.tag
    assert scene.secret not in scene.cas.log.read_text()


def test_a_closed_cas_refuses_the_stranger_at_every_step(closed: Scene) -> None:
    mallory = closed.mallory
    assert mallory.request("GET", "/v1/cas")[0] == 200  # what the CAS is: public by design

    status, answer = mallory.enrol()
    assert status == 403, answer
    assert f"owner {mallory.id} is not admitted" in answer["error"]
    assert "veil cas owner add" in answer["error"]

    platform = {"kind": "sim", "public_key": b64(bytes(32))}
    assert mallory.request("POST", "/v1/platforms", platform)[0] == 401
    assert mallory.request("GET", "/v1/audit")[0] == 401
    assert mallory.request("GET", "/v1/sessions?name=alice/demo")[0] == 401
    assert mallory.request("GET", "/v1/volume-tags?session=alice/demo&volume=data")[0] == 401

    # a client certificate she signed herself does not pass the TLS handshake
    own = mallory.self_signed_certificate("veil://mallory")
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        mallory.request("GET", "/v1/audit", certificate_pem=own)

    _forged_attestations_are_refused(closed)
    _bogus_tag_is_refused(closed)
    _alice_is_unaffected(closed)


def test_open_enrolment_gives_a_stranger_nothing_of_another_owner(open_enrolment: Scene) -> None:
    scene, mallory = open_enrolment, open_enrolment.mallory
    status, answer = mallory.enrol()
    assert status == 201 and answer["roles"] == ["owner"]

    platform = {"kind": "sim", "public_key": b64(bytes(32))}
    status, answer = mallory.request("POST", "/v1/platforms", platform)
    assert status == 403 and "needs the role 'admin'" in answer["error"]
    assert mallory.request("DELETE", "/v1/platforms/" + scene.node.key_id)[0] == 403
    assert mallory.request("PUT", f"/v1/owners/{mallory.id}", {"roles": ["admin"]})[0] == 403

    status, view = mallory.request("GET", "/v1/audit")
    assert status == 200 and view["scope"] == "filtered"
    assert view["entries"] == []  # not alice's session, not its measurement, not the platforms
    assert MEASUREMENT.removeprefix("sha256:") not in str(view)

    assert mallory.request("GET", "/v1/sessions?name=alice/demo")[0] == 403
    status, answer = mallory.request("GET", "/v1/volume-tags?session=alice/demo&volume=data")
    assert status == 403 and scene.tag not in str(answer)  # a job's output tag: its owner's only
    assert mallory.request("GET", "/v1/sessions")[1]["sessions"] == []
    for name in ("alice", "alice/evil"):  # the parent over alice/demo, a child beside it
        text = yaml.safe_dump(session_dict(name=name))
        status, answer = mallory.request("POST", "/v1/sessions", {"text": text})
        assert status == 403, answer
        assert "alice/demo" in answer["error"]

    _forged_attestations_are_refused(scene)
    _bogus_tag_is_refused(scene)
    _alice_is_unaffected(scene)


def test_a_removed_owner_is_refused_at_once(closed: Scene, tmp_path: Path) -> None:
    bob = pinned_owner(tmp_path, closed.cas, "bob")
    assert bob.veil("session", "list").returncode == 0
    removed = closed.cas.admin.veil("cas", "owner", "remove", bob.id)
    assert removed.returncode == 0, removed.stderr
    refused = bob.veil("session", "list")
    assert refused.returncode == 1 and f"owner {bob.id} is not admitted" in refused.stderr
    last = closed.cas.admin.veil("cas", "owner", "remove", closed.cas.admin.id)
    assert last.returncode == 1 and "last administrator" in last.stderr


def test_the_bootstrap_token_makes_one_administrator_once(tmp_path: Path) -> None:
    cas = CasServer(tmp_path / "cas", free_port(), tmp_path / "cas.log", with_admin=False).start()
    try:
        token_file = cas.data / "bootstrap-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        assert "veil cas enrol URL --token-file" in cas.log.read_text()
        assert token_file.read_text().strip() not in cas.log.read_text()  # never in the log
        first = pinned_owner(tmp_path, cas, "first", admit=False)
        second = pinned_owner(tmp_path, cas, "second", admit=False)
        enrolled = first.veil("cas", "enrol", "--token-file", str(token_file), "--json")
        assert enrolled.returncode == 0, enrolled.stderr
        assert json.loads(enrolled.stdout)["roles"] == ["admin"]
        reused = second.veil("cas", "enrol", "--token-file", str(token_file))
        assert reused.returncode == 1 and "bootstrap token is not valid" in reused.stderr
        assert second.veil("session", "list").returncode == 1
        assert first.veil("cas", "owner", "add", second.id).returncode == 0
        assert second.veil("session", "list").returncode == 0
        cas.stop()
        cas.start()  # an administrator exists: no new token, the used one is gone
        assert not token_file.exists()
    finally:
        cas.stop()


def test_an_owner_cannot_grant_itself_roles(closed: Scene, tmp_path: Path) -> None:
    bob = pinned_owner(tmp_path, closed.cas, "bob")
    for argv in (
        ("cas", "owner", "add", bob.id, "--role", "admin"),
        ("cas", "owner", "list"),
        ("cas", "platform", "add", "--key-file", str(tmp_path / "node" / "las" / "platform.key")),
    ):
        refused = bob.veil(*argv)
        assert refused.returncode == 1 and "needs the role 'admin'" in refused.stderr, refused.stderr
    with pytest.raises(CasRequestFailed):
        _runtime(closed).push_volume_tag(
            VolumeTagUpdate("alice/demo/app", "data", closed.tag, "x", "not a certificate", b"")
        )
