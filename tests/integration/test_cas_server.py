"""The network CAS on loopback TLS: pinning, owners, sessions, runtimes, audit, metrics."""

import contextlib
import dataclasses
import http.client
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from tests.cas_server import (
    CasServer,
    Owner,
    las_on_socket,
    node_platform,
    pinned_owner,
    register_platform,
    signed_update,
    start_cas,
    volume_session,
)
from tests.conftest import PYTHON, SHOW, measurement_of, requires_root, session_dict, session_yaml, veil
from tests.net import free_port
from veil.cas import Cas
from veil.cas.identity import CasIdentity
from veil.cas.server import CasApp, CasSelf, openapi_document
from veil.client.http import CasConnection, CasRequestFailed, HttpCasClient
from veil.crypto import PlatformSigningKey
from veil.protocol import AttestationRefused, AttestationRequest, Evidence, VolumeTagUpdate
from veil.runtime.attest import provision
from veil.tee import SimEvidenceSource
from veil.tee.ear import ResultSigner


@pytest.fixture
def cas(tmp_path: Path) -> Iterator[CasServer]:
    server = start_cas(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def alice(tmp_path: Path, cas: CasServer) -> Owner:
    return pinned_owner(tmp_path, cas, "alice")


def raw_request(
    cas: CasServer, owner: Owner, method: str, path: str, body: object = None
) -> tuple[int, dict]:  # type: ignore[type-arg]
    """An HTTPS request verified against the pin, with no client certificate."""
    context = ssl.create_default_context(cadata=owner.pin(cas.url)["ca_certificate"])
    conn = http.client.HTTPSConnection("127.0.0.1", cas.port, context=context, timeout=30)
    conn.request(method, path, body=None if body is None else json.dumps(body))
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    return response.status, (json.loads(raw) if raw else {})


def write_session(tmp_path: Path, name: str = "net/app", **kwargs: object) -> Path:
    path = tmp_path / f"{name.replace('/', '_')}.yaml"
    path.write_text(session_yaml(name=name, **kwargs))  # type: ignore[arg-type]
    return path


# -- pinning -------------------------------------------------------------------------------


def test_attest_pins_the_cas_only_with_sim_tolerated(tmp_path: Path, cas: CasServer) -> None:
    bob = Owner(tmp_path / "bob")
    refused = bob.veil("cas", "attest", cas.url)
    assert refused.returncode == 1
    assert "sim mode" in refused.stderr and "--tolerate sim" in refused.stderr
    assert not (bob.home / "veil" / "cas.json").exists()

    wrong = bob.veil("cas", "attest", cas.url, "--tolerate", "sim", "--measurement", "sha256:" + "00" * 32)
    assert wrong.returncode == 1 and "not the expected" in wrong.stderr

    pinned = bob.veil("cas", "attest", cas.url, "--tolerate", "sim", "--json")
    assert pinned.returncode == 0, pinned.stderr
    assert "SIM MODE" in pinned.stderr
    answer = json.loads(pinned.stdout)
    assert answer["sim"] is True
    assert bob.pin(cas.url)["identity"] == answer["identity"]
    status, info = raw_request(cas, bob, "GET", "/v1/cas")
    assert status == 200 and info["identity"] == answer["identity"] and info["sim"] is True

    # the pinned CA, for a runtime's VEIL_CAS_CA, without a Python one-liner (issue #27)
    printed = bob.veil("cas", "ca")  # the default CAS: the first pinned
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout == bob.pin(cas.url)["ca_certificate"]
    written = bob.veil("cas", "ca", cas.url, "-o", str(tmp_path / "cas.pem"))
    assert written.returncode == 0 and (tmp_path / "cas.pem").read_text() == printed.stdout
    unknown = bob.veil("cas", "ca", "https://127.0.0.1:1")
    assert unknown.returncode == 1 and "is not pinned" in unknown.stderr


def test_a_cas_that_does_not_match_the_pin_is_refused(tmp_path: Path, cas: CasServer, alice: Owner) -> None:
    assert alice.veil("session", "list").returncode == 0
    cas.stop()
    impostor = start_cas(tmp_path, "impostor", port=cas.port)  # same URL, another identity
    try:
        for args in (["session", "list"], ["run", "--config-id", "net/app/app"]):
            result = alice.veil(*args)
            assert result.returncode == 1, result.stderr
            assert "not the pinned CAS" in result.stderr
    finally:
        impostor.stop()


# -- owners --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/sessions", None),
        ("GET", "/v1/sessions?name=net/app", None),
        ("POST", "/v1/sessions", {"text": "name: x"}),
        ("PUT", "/v1/sessions", {"text": "name: x"}),
        ("POST", "/v1/platforms", {"kind": "sim", "public_key": "AAAA"}),
        ("GET", "/v1/platforms", None),
        ("DELETE", "/v1/platforms/" + "00" * 32, None),
        ("GET", "/v1/owners", None),
        ("PUT", "/v1/owners/" + "00" * 32, {"roles": ["admin"]}),
        ("DELETE", "/v1/owners/" + "00" * 32, None),
        ("GET", "/v1/audit", None),
    ],
)
def test_owner_apis_need_a_client_certificate(
    cas: CasServer, alice: Owner, method: str, path: str, body: object
) -> None:
    status, answer = raw_request(cas, alice, method, path, body)
    assert status == 401
    assert "owner client certificate" in answer["error"]


def test_sessions_follow_their_access_policy(tmp_path: Path, cas: CasServer, alice: Owner) -> None:
    bob = pinned_owner(tmp_path, cas, "bob")
    carol = pinned_owner(tmp_path, cas, "carol")
    carol_id = carol.veil("owner", "id").stdout.strip()
    document = session_dict(name="net/app")
    document["access_policy"] = {"read": ["CREATOR", carol_id], "update": ["CREATOR"]}
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(document, sort_keys=False))
    created = alice.veil("session", "create", str(policy), "--json")
    assert created.returncode == 0, created.stderr
    first = json.loads(created.stdout)
    assert first["revision"] == 1 and first["creator"] == alice.veil("owner", "id").stdout.strip()

    again = alice.veil("session", "create", str(policy))
    assert again.returncode == 1 and "already exists" in again.stderr

    shown = alice.veil("session", "show", "net/app", "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["hash"] == first["hash"]
    assert "BEGIN CERTIFICATE" in json.loads(shown.stdout)["session_ca"]

    assert carol.veil("session", "show", "net/app").returncode == 0  # read granted by key hash
    for reader in (bob,):
        denied = reader.veil("session", "show", "net/app")
        assert denied.returncode == 1 and "may not read" in denied.stderr
    assert bob.veil("session", "list", "--json").stdout.strip() == "[]"

    document["secrets"].append({"name": "extra", "kind": "binary", "size": 16})
    policy.write_text(yaml.safe_dump(document, sort_keys=False))
    for intruder in (bob, carol):
        denied = intruder.veil("session", "update", str(policy))
        assert denied.returncode == 1
        assert "may not" in denied.stderr
    updated = alice.veil("session", "update", str(policy), "--json")
    assert updated.returncode == 0, updated.stderr
    assert json.loads(updated.stdout)["revision"] == 2

    document["predecessor"] = first["hash"]  # stale: revision 2 replaced it
    policy.write_text(yaml.safe_dump(document, sort_keys=False))
    stale = alice.veil("session", "update", str(policy))
    assert stale.returncode == 1 and "is not the current hash" in stale.stderr
    assert json.loads(alice.veil("session", "show", "net/app", "--json").stdout)["revision"] == 2


def test_an_invalid_session_is_refused_with_positions(tmp_path: Path, cas: CasServer, alice: Owner) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: net/bad\nversion: '1'\nservices:\n  - name: a\n    comand: [x]\n")
    result = alice.veil("session", "create", str(bad))
    assert result.returncode == 1
    assert f"{bad}:5:" in result.stderr
    status, _ = raw_request(cas, alice, "GET", "/v1/launch?config_id=net/bad/a")
    assert status == 404  # nothing was stored


def test_malformed_requests_get_400_not_500(cas: CasServer, alice: Owner) -> None:
    for path, body in [
        ("/v1/attest", {"config_id": "a/b"}),
        ("/v1/attest", {"config_id": "a/b", "nonce": "!!", "evidence": {"platform": "sim", "data": ""}}),
        ("/v1/volume-tags", {"tag": 1}),
        ("/v1/owners", {"token": 1}),
        ("/v1/cas/evidence", {"nonce": "AAAA"}),
        ("/v1/launch", None),
    ]:
        status, answer = raw_request(cas, alice, "POST" if body is not None else "GET", path, body)
        assert status == 400, (path, status, answer)
        assert answer["error"]
    # well-formed, but not what it must be: 422
    status, answer = raw_request(cas, alice, "POST", "/v1/owners", {"csr": "not a csr"})
    assert status == 422 and "does not parse" in answer["error"]


# -- runtimes ------------------------------------------------------------------------------


@requires_root
def test_run_from_the_network_cas(tmp_path: Path, cas: CasServer, alice: Owner) -> None:
    home, platform_id = node_platform(tmp_path)
    policy = write_session(
        tmp_path,
        command=[PYTHON, str(SHOW)],
        environment={"APP_PW": "$$VEIL::pw$$", "PYTHONCOERCECLOCALE": "0"},
        sim_platforms=[platform_id],
    )
    assert alice.veil("session", "create", str(policy)).returncode == 0
    env = {"VEIL_HOME": str(home)}

    unregistered = alice.veil("run", "--config-id", "net/app/app", env=env)
    assert unregistered.returncode == 1 and "not registered" in unregistered.stderr

    assert register_platform(tmp_path, cas) == home
    result = alice.veil("run", "--config-id", "net/app/app", env={"VEIL_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[0])
    secret = report["env"]["APP_PW"]
    assert len(secret) == 24 and "$$" not in secret
    assert "SIM MODE" in result.stderr
    _check_attestation_result(cas, alice, report["env"]["VEIL_EAR"])

    # the same secret again (generated once), and never in the CAS's log
    again = alice.veil("run", "--config-id", "net/app/app", env={"VEIL_HOME": str(home)})
    assert json.loads(again.stdout.splitlines()[0])["env"]["APP_PW"] == secret
    assert secret not in cas.log.read_text()

    # a runtime configured by environment only (as in an image): no client config at all
    ca_file = tmp_path / "cas-ca.pem"
    ca_file.write_text(alice.pin(cas.url)["ca_certificate"])
    bare = Owner(tmp_path / "bare-runtime")
    by_env = bare.veil(
        "run",
        env={
            "VEIL_HOME": str(home),
            "VEIL_CAS_ADDR": cas.url,
            "VEIL_CAS_CA": str(ca_file),
            "VEIL_CONFIG_ID": "net/app/app",
            "VEIL_MODE": "sim",
        },
    )
    assert by_env.returncode == 0, by_env.stderr
    assert json.loads(by_env.stdout.splitlines()[0])["env"]["APP_PW"] == secret
    assert not (bare.home / "veil").exists()

    # a changed program is refused with the CAS's reason
    other = tmp_path / "show.py"
    other.write_text(SHOW.read_text() + "\n# changed\n")
    changed = write_session(
        tmp_path,
        name="net/changed",
        command=[PYTHON, str(other)],
        measurement=measurement_of([PYTHON, str(SHOW)]),
        sim_platforms=[platform_id],
    )
    assert alice.veil("session", "create", str(changed)).returncode == 0
    refused = alice.veil("run", "--config-id", "net/changed/app", env={"VEIL_HOME": str(home)})
    assert refused.returncode == 1
    assert "matches no attestation entry" in refused.stderr

    context = ssl.create_default_context(cadata=alice.pin(cas.url)["ca_certificate"])
    conn = http.client.HTTPSConnection("127.0.0.1", cas.port, context=context)
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    status, metrics = response.status, response.read().decode()
    assert status == 200
    assert 'veil_attestations_total{result="grant"} 3.0' in metrics
    assert 'veil_attestations_total{result="refuse"} 2.0' in metrics

    audit = alice.veil("audit", "verify", "--network", "--json")
    assert audit.returncode == 0, audit.stderr
    assert json.loads(audit.stdout)["entries"] >= 7


@requires_root
def test_run_with_a_las(tmp_path: Path, cas: CasServer, alice: Owner) -> None:
    with las_on_socket(tmp_path / "las.sock", tmp_path / "n") as socket_path:
        refused = alice.veil("cas", "platform", "add", cas.url, "--las", f"unix:{socket_path}")
        assert refused.returncode == 1 and "needs the role 'admin'" in refused.stderr
        added = cas.admin.veil("cas", "platform", "add", cas.url, "--las", f"unix:{socket_path}")
        assert added.returncode == 0, added.stderr
        platform_id = added.stdout.strip()
        policy = write_session(tmp_path, environment={"APP_PW": "$$VEIL::pw$$"}, sim_platforms=[platform_id])
        assert alice.veil("session", "create", str(policy)).returncode == 0
        result = alice.veil("run", "--config-id", "net/app/app", env={"VEIL_LAS_ADDR": f"unix:{socket_path}"})
        assert result.returncode == 0, result.stderr
        assert len(json.loads(result.stdout.splitlines()[0])["env"]["APP_PW"]) == 24
    assert not socket_path.exists()


# -- documents and health ------------------------------------------------------------------


def test_openapi_is_served_and_documents_every_route(tmp_path: Path, cas: CasServer, alice: Owner) -> None:
    status, served = raw_request(cas, alice, "GET", "/v1/openapi.json")
    assert status == 200
    assert served == openapi_document()
    embedded = Cas.open_embedded(tmp_path / "routes")
    me = CasSelf(CasIdentity.load_or_store(embedded.records, tmp_path), "sha256:" + "0" * 64, None, None)  # type: ignore[arg-type]
    routes = {
        (route.resource.canonical, route.method)
        for route in CasApp(embedded, me).build().router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    access = {(path, method): str(level) for method, path, _, level in CasApp(embedded, me).routes()}
    embedded.close()
    documented = {
        (path, method.upper()): operation["x-veil-access"]
        for path, item in served["paths"].items()
        for method, operation in item.items()
        if method != "parameters"
    }
    assert set(documented) == routes
    assert documented == access, "each route's access is enforced as documented"
    for path in ("/healthz", "/readyz"):
        status, answer = raw_request(cas, alice, "GET", path)
        assert status == 200 and answer["sim"] is True
    # started without --recovery-key: said at start, and by readyz to whatever probes it
    _, ready = raw_request(cas, alice, "GET", "/readyz")
    assert ready["recovery_key"] is False and "no recovery key is set" in ready["warnings"][0]
    assert "warning: no recovery key is set" in cas.log.read_text()


def test_volume_tags_over_the_network(tmp_path: Path, cas: CasServer, alice: Owner) -> None:
    _, platform_id = node_platform(tmp_path)
    for name in ("net/a", "net/b"):
        session = volume_session(tmp_path, name, [platform_id])
        assert alice.veil("session", "create", str(session)).returncode == 0
    node = register_platform(tmp_path, cas)
    key = PlatformSigningKey.load_or_create(node / "las" / "platform.key")
    client = HttpCasClient(CasConnection(cas.url, alice.pin(cas.url)["ca_certificate"]))
    a = provision(client, SimEvidenceSource(key), "net/a/app", measurement_of([PYTHON, str(SHOW)]))
    assert a.sim and client.sim
    assert a.bundle.volumes[0].tag is None

    with pytest.raises(CasRequestFailed) as other:  # A's certificate, B's volume
        client.push_volume_tag(signed_update(a, "net/b/app", None, "t1"))
    assert other.value.status == 409 and "not issued by the CA of session 'net/b'" in str(other.value)

    client.push_volume_tag(signed_update(a, "net/a/app", None, "t1"))
    client.push_volume_tag(signed_update(a, "net/a/app", "t1", "t2"))
    with pytest.raises(CasRequestFailed) as stale:  # an old tag never overwrites a newer one
        client.push_volume_tag(signed_update(a, "net/a/app", "t1", "t3"))
    assert stale.value.status == 409 and "moved on" in str(stale.value)

    forged = signed_update(a, "net/a/app", "t2", "t3")
    with pytest.raises(CasRequestFailed) as unsigned:
        client.push_volume_tag(VolumeTagUpdate(*dataclasses.astuple(forged)[:5], b"\x30\x00"))
    assert "not signed by the runtime's instance key" in str(unsigned.value)

    again = provision(client, SimEvidenceSource(key), "net/a/app", measurement_of([PYTHON, str(SHOW)]))
    assert again.bundle.volumes[0].tag == "t2"
    with pytest.raises(AttestationRefused, match="nonce unknown or already used"):
        nonce = client.nonce()
        request = AttestationRequest("net/a/app", nonce, Evidence("sim", b"{}"), b"", b"")
        with contextlib.suppress(AttestationRefused):
            client.attest(request)
        client.attest(request)  # the nonce was used up by the first attempt


def test_exported_audit_logs_are_checked_against_the_pin(
    tmp_path: Path, cas: CasServer, alice: Owner
) -> None:
    assert alice.veil("session", "create", str(write_session(tmp_path))).returncode == 0
    register_platform(tmp_path, cas)
    admin = cas.admin
    export = tmp_path / "audit.json"
    assert admin.veil("audit", "export", "-o", str(export)).returncode == 0
    assert admin.veil("audit", "verify", "--file", str(export)).returncode == 0
    document = json.loads(export.read_text())
    events = [json.loads(e["body"])["event"] for e in document["entries"]]
    assert "session.create" in events and "platform.register" in events and "principal.set" in events

    def refused(changed: dict) -> str:  # type: ignore[type-arg]
        path = tmp_path / "changed.json"
        path.write_text(json.dumps(changed))
        result = admin.veil("audit", "verify", "--file", str(path))
        assert result.returncode == 1
        return result.stderr

    edited = json.loads(export.read_text())
    edited["entries"][0]["body"] = edited["entries"][0]["body"].replace('"sim"', '"sin"')
    assert "entry 1 was modified" in refused(edited)
    truncated = json.loads(export.read_text())
    truncated["entries"].pop()
    assert "entries were removed" in refused(truncated)
    swapped = json.loads(export.read_text())
    swapped["entries"].reverse()
    assert "out of order" in refused(swapped)
    resigned = json.loads(export.read_text())
    resigned["head"]["signature"] = "00" * 70
    assert "not signed by the pinned CAS" in refused(resigned)

    other = start_cas(tmp_path / "elsewhere", "other")
    try:
        foreign = tmp_path / "foreign.json"
        assert other.admin.veil("audit", "export", "-o", str(foreign)).returncode == 0
        assert "not signed by the pinned CAS" in refused(json.loads(foreign.read_text()))
    finally:
        other.stop()


def test_the_audit_log_is_read_by_administrators_and_auditors_owners_see_their_own(
    tmp_path: Path,
) -> None:
    root = tmp_path / "audited"
    root.mkdir()
    auditor = Owner(root / "auditor")
    server = CasServer(root / "cas", free_port(), root / "cas.log", extra=["--auditor", auditor.id]).start()
    try:
        assert auditor.veil("cas", "attest", server.url, "--tolerate", "sim").returncode == 0
        owner = pinned_owner(root, server, "owner")
        other = pinned_owner(root, server, "other")
        assert owner.veil("session", "create", str(write_session(root))).returncode == 0
        assert other.veil("session", "create", str(write_session(root, "elsewhere/app"))).returncode == 0

        full = auditor.veil("audit", "verify", "--network", "--json")
        assert full.returncode == 0, full.stderr
        total = json.loads(full.stdout)["entries"]
        assert json.loads(full.stdout)["scope"] == "full"

        view = owner.veil("audit", "export")
        assert view.returncode == 0, view.stderr
        shown = [json.loads(e["body"]) for e in json.loads(view.stdout)["entries"]]
        assert [e["event"] for e in shown] == ["session.create"]
        assert shown[0]["session"] == "net/app"  # not elsewhere/app, not principals, not platforms
        checked = owner.veil("audit", "verify", "--network", "--json")
        assert checked.returncode == 0, checked.stderr
        assert json.loads(checked.stdout) == {
            "verified": True,
            "scope": "filtered",
            "entries": 1,
            "of": total,
        }

        stranger = pinned_owner(root, server, "stranger", admit=False)
        denied = stranger.veil("audit", "verify", "--network")
        assert denied.returncode == 1 and "is not admitted on this CAS" in denied.stderr
    finally:
        server.stop()
    bad = veil("cas", "serve", "--data", str(root / "x"), "--auditor", "alice")
    assert bad.returncode == 2 and "is not an owner id" in bad.stderr


def _check_attestation_result(cas: CasServer, owner: Owner, token: str) -> None:
    """The program's VEIL_EAR verifies, with an independent JWT library, against the key
    set the CAS publishes to anyone; it says sim; a changed byte or another key fails."""
    status, jwks = raw_request(cas, owner, "GET", "/v1/.well-known/jwks.json")
    assert status == 200 and jwks["keys"][0]["kid"] == owner.pin(cas.url)["identity"]
    key = jwt.PyJWKSet.from_dict(jwks).keys[0]
    claims = jwt.decode(token, key=key, algorithms=["ES256"])
    assert claims["eat_profile"] == "tag:github.com,2023:veraison/ear" and claims["eat_nonce"]
    cpu = claims["submods"]["cpu"]
    assert cpu["ear.status"] == "warning"  # sim evidence proves nothing about the machine
    assert cpu["ear.veil.claims"]["config_id"] == "net/app/app" and cpu["ear.veil.claims"]["sim"] is True
    assert cpu["ear.appraisal-policy-id"].startswith("veil:session:net/app@")
    header, payload, signature = token.split(".")
    forged = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(f"{header}.{forged}.{signature}", key=key, algorithms=["ES256"])
    other = jwt.PyJWK.from_dict(
        ResultSigner(ec.generate_private_key(ec.SECP256R1()), "other").jwks()["keys"][0]
    )
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, key=other, algorithms=["ES256"])
