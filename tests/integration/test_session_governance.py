"""Governance, history, sharing warnings and public secrets through the CLI and the network CAS."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cas_server import CasServer, pinned_owner, start_cas
from tests.conftest import session_dict


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CasServer]:
    server = start_cas(tmp_path_factory.mktemp("governance"))
    yield server
    server.stop()


def ok(result: object) -> str:
    assert result.returncode == 0, result.stderr  # type: ignore[attr-defined]
    return str(result.stdout)  # type: ignore[attr-defined]


def test_an_update_needs_the_approvals_governance_asks_for(tmp_path: Path, cas: CasServer) -> None:
    alice, bob, carol = (pinned_owner(tmp_path, cas, n) for n in ("alice", "bob", "carol"))
    ids = [ok(o.veil("owner", "id")).strip() for o in (alice, bob, carol)]
    document = session_dict(name="gov/app")
    document["access_policy"] = {"read": ids, "update": ids, "governance": {"require-at-least": 2}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    first = json.loads(ok(alice.veil("session", "create", str(path), "--json")))

    document["services"][0]["environment"] = {"MODE": "strict"}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    alone = alice.veil("session", "update", str(path))
    assert (
        alone.returncode == 1 and "needs the approval of 2 of its 3 update owners; it has 1" in alone.stderr
    )

    approval = tmp_path / "bob.approval"
    result = bob.veil("session", "approve", str(path), "--output", str(approval))
    ok(result)
    assert f"as owner {ids[1]}" in result.stderr
    assert json.loads(approval.read_text())["session"] == "gov/app"
    updated = json.loads(
        ok(alice.veil("session", "update", str(path), "--approval", str(approval), "--json"))
    )
    assert updated["revision"] == 2

    # an approval is for one version: reusing it for another change does not count
    document["services"][0]["environment"] = {"MODE": "lax"}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    replayed = alice.veil("session", "update", str(path), "--approval", str(approval))
    assert replayed.returncode == 1 and "it has 1" in replayed.stderr

    bad = tmp_path / "bad.approval"
    bad.write_text("{}")
    refused = alice.veil("session", "update", str(path), "--approval", str(bad))
    assert refused.returncode == 2 and "not an approval" in refused.stderr

    history = json.loads(ok(carol.veil("session", "history", "gov/app", "--json")))
    assert [(v["revision"], v["hash"], v["by"]) for v in history] == [
        (1, first["hash"], ids[0]),
        (2, updated["hash"], ids[0]),
    ]
    old = ok(carol.veil("session", "show", "gov/app", "--hash", first["hash"]))
    assert "MODE" not in old and f"revision 1 hash {first['hash']}" in old
    assert "  1  " in ok(carol.veil("session", "history", "gov/app"))


def test_sharing_warnings_and_public_secrets(tmp_path: Path, cas: CasServer) -> None:
    dora = pinned_owner(tmp_path, cas, "dora")
    stranger = pinned_owner(tmp_path, cas, "stranger")
    importer = session_dict(name="share/analyst", secrets=[])
    importer["secrets"] = [
        {"name": "t", "kind": "ascii", "import": {"session": "share/owner", "secret": "t"}}
    ]
    path = tmp_path / "analyst.yaml"
    path.write_text(yaml.safe_dump(importer, sort_keys=False))
    unpinned = dora.veil("session", "create", str(path))  # share/owner does not exist yet
    assert unpinned.returncode == 1
    assert "session 'share/owner' does not exist yet" in unpinned.stderr
    line = next(
        n for n, text in enumerate(path.read_text().splitlines(), 1) if "session: share/owner" in text
    )
    assert f"{path}:{line}:" in unpinned.stderr and "hint: pin it: add owner: OWNER_ID" in unpinned.stderr
    importer["secrets"][0]["import"]["owner"] = dora.id
    path.write_text(yaml.safe_dump(importer, sort_keys=False))
    created = dora.veil("session", "create", str(path))
    ok(created)
    assert "warning: session 'share/analyst' imports from session 'share/owner', which does not exist" in (
        created.stderr
    )

    exporter = session_dict(name="share/owner", secrets=[])
    exporter["secrets"] = [
        {"name": "t", "kind": "ascii", "size": 8, "export": [{"session": "share/analyst"}]},
        {"name": "motd", "kind": "ascii", "value": "hello", "export_public": True},
        {"name": "pk", "kind": "private-key"},
        {"name": "cert", "kind": "x509", "private_key": "pk", "export_public": True},
    ]
    path = tmp_path / "owner.yaml"
    path.write_text(yaml.safe_dump(exporter, sort_keys=False))
    assert "warning" not in ok(dora.veil("session", "create", str(path)))
    assert ok(stranger.veil("session", "public", "share/owner", "motd")) == "hello"
    assert ok(stranger.veil("session", "public", "share/owner", "motd", "--format", "hex")) == b"hello".hex()
    pem = ok(stranger.veil("session", "public", "share/owner", "cert"))
    assert pem.startswith("-----BEGIN CERTIFICATE-----") and "PRIVATE" not in pem
    for secret, fmt, message in (
        ("t", None, "no public secret 't'"),
        ("pk", None, "no public secret 'pk'"),
        ("cert", "key", "available as crt, chain, der"),
    ):
        args = ["session", "public", "share/owner", secret] + (["--format", fmt] if fmt else [])
        refused = stranger.veil(*args)
        assert refused.returncode == 1 and message in refused.stderr
