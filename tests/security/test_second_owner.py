"""A second admitted owner against the first one's sessions, through the CLI: it can neither
read, update nor shadow them, nor receive what the first one exported to a name it took."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.cas_server import CasServer, Owner, node_platform, pinned_owner, register_platform, start_cas
from tests.conftest import PYTHON, SHOW, measurement_of, session_dict
from veil.client.http import CasConnection, HttpCasClient
from veil.crypto import PlatformSigningKey
from veil.protocol import AttestationRefused
from veil.runtime.attest import provision
from veil.tee import SimEvidenceSource


@pytest.fixture
def cas(tmp_path: Path) -> Iterator[CasServer]:
    server = start_cas(tmp_path)
    yield server
    server.stop()


def write(tmp_path: Path, document: dict[str, object]) -> Path:
    path = tmp_path / f"{str(document['name']).replace('/', '_')}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def refused(owner: Owner, *argv: str) -> str:
    result = owner.veil(*argv)
    assert result.returncode == 1, result.stdout
    return result.stderr


def test_a_second_owner_reaches_nothing_of_the_first(tmp_path: Path, cas: CasServer) -> None:
    alice, bob, carol = (pinned_owner(tmp_path, cas, name) for name in ("alice", "bob", "carol"))
    home, platform_id = node_platform(tmp_path)
    register_platform(tmp_path, cas)
    node = PlatformSigningKey.load_or_create(home / "las" / "platform.key")

    # Alice's data session exports a secret to lab/job, which Carol will create: she pins it
    # to Carol's owner id, since the name is still free
    data = session_dict(name="alice/data", secrets=[], sim_platforms=[platform_id])
    data["secrets"] = [
        {"name": "token", "kind": "ascii", "size": 16, "export": [{"session": "lab/job", "owner": carol.id}]}
    ]
    created = alice.veil("session", "create", str(write(tmp_path, data)))
    assert created.returncode == 0, created.stderr
    assert "'lab/job', which does not exist yet" in created.stderr  # a warning, not a refusal

    # read, update, list
    assert "may not read session 'alice/data'" in refused(bob, "session", "show", "alice/data")
    assert "may not read" in refused(bob, "session", "history", "alice/data")
    assert bob.veil("session", "list", "--json").stdout.strip() == "[]"
    current = alice.veil("session", "hash", str(write(tmp_path, data))).stdout.strip()
    changed = dict(data, secrets=[{"name": "token", "kind": "ascii", "size": 16}], predecessor=current)
    assert "may not update session 'alice/data'" in refused(
        bob, "session", "update", str(write(tmp_path, changed))
    )

    # shadow the namespace: the parent over alice/data, or a child beside it
    for name in ("alice", "alice/other", "alice/data/sub"):
        message = refused(bob, "session", "create", str(write(tmp_path, session_dict(name=name))))
        assert "alice/data" in message and "update" in message, message

    # take the name Alice exported to, importing her secret: the pin refuses it
    job = session_dict(name="lab/job", secrets=[], sim_platforms=[platform_id])
    job["secrets"] = [
        {
            "name": "t",
            "kind": "ascii",
            "import": {"session": "alice/data", "secret": "token", "owner": alice.id},
        }
    ]
    job["services"][0]["environment"] = {"TOKEN": "$$VEIL::t$$"}
    assert bob.veil("session", "create", str(write(tmp_path, job))).returncode == 0
    runtime = HttpCasClient(CasConnection(cas.url, bob.pin(cas.url)["ca_certificate"]))
    with pytest.raises(AttestationRefused) as caught:
        provision(runtime, SimEvidenceSource(node), "lab/job/app", measurement_of([PYTHON, str(SHOW)]))
    assert f"as created by owner {carol.id[:16]}" in str(caught.value)
    assert f"was created by {bob.id[:16]}" in str(caught.value)

    # and the audit log shows Bob only what is about his own sessions
    view = bob.veil("audit", "export")
    assert view.returncode == 0, view.stderr
    events = [json.loads(entry["body"]) for entry in json.loads(view.stdout)["entries"]]
    about = {e.get("session") or e["config_id"].rpartition("/")[0] for e in events}
    assert about == {"lab/job"}, events
