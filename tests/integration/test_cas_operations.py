"""Running the CAS for a team: its settings (flags, VEIL_CAS_* variables, a TOML file),
its log lines, and the scan that keeps secret values out of every CAS log of the suite."""

import http.client
import json
import os
import ssl
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cas_server import CasServer, assert_no_secret_logged, issued_secrets, register_platform
from tests.conftest import PYTHON, SHOW, measurement_of, session_yaml, veil
from tests.net import free_port
from veil.cli.cas import serve_command
from veil.client.http import CasConnection, CasRequestFailed, HttpCasClient
from veil.crypto import PlatformSigningKey
from veil.protocol import AttestationRefused
from veil.runtime.attest import provision
from veil.tee import SimEvidenceSource


def settings(argv: list[str], env: dict[str, str]) -> dict[str, object]:
    old = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        return dict(serve_command.make_context("serve", argv).params)
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_flag_beats_variable_beats_file_beats_default(tmp_path: Path) -> None:
    config = tmp_path / "etc" / "cas.toml"
    config.parent.mkdir()
    config.write_text('data = "state"\nworkers = 2\nlog-level = "debug"\nname = ["a.example"]\n')
    from_file = settings(["--config", str(config)], {})
    assert from_file["data"] == tmp_path / "etc" / "state", "relative to the file's directory"
    assert from_file["workers"] == 2 and from_file["log_level"] == "debug"
    assert from_file["names"] == ("a.example",)
    assert from_file["listen"] == ("127.0.0.1", 8443), "the default where nothing says otherwise"

    env = {"VEIL_CAS_WORKERS": "3", "VEIL_CAS_LISTEN": "0.0.0.0:9443"}
    from_env = settings(["--config", str(config)], env)
    assert from_env["workers"] == 3 and from_env["listen"] == ("0.0.0.0", 9443)
    assert from_env["log_level"] == "debug", "the file still sets what no variable sets"

    from_flag = settings(["--config", str(config), "--workers", "4"], env)
    assert from_flag["workers"] == 4 and from_flag["listen"] == ("0.0.0.0", 9443)

    by_variable = settings([], {"VEIL_CAS_CONFIG": str(config)})
    assert by_variable["workers"] == 2, "VEIL_CAS_CONFIG names the file too"


def test_config_check_locates_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "cas.toml"
    config.write_text(
        'lisen = "127.0.0.1:1"\n'
        'data = "/srv/veil"\n'
        'workers = "many"\n'
        'admin = "not-a-list"\n'
        'recovery-key = "missing.pub"\n'
        'open-enrolment = "yes"\n'
    )
    result = veil("cas", "config", "check", str(config))
    assert result.returncode == 1
    for expected in (
        f"{config}:1: 'lisen' is not a setting (did you mean 'listen'?)",
        f"{config}:3: workers: 'many' is not a valid integer range",
        f"{config}:4: admin: a list is expected",
        f"{config}:5: recovery-key: File '{tmp_path / 'missing.pub'}' does not exist",
        f"{config}:6: open-enrolment: true or false is expected",
    ):
        assert expected in result.stderr
    assert "data" not in result.stderr, "a valid key is not a problem"

    config.write_text('data = "/srv/veil"\nworkers = 2\n[logs]\n')
    result = veil("cas", "config", "check", str(config))
    assert result.returncode == 1 and f"{config}:3: 'logs' is not a setting" in result.stderr

    config.write_text('data = "/srv/veil"\nworkers = 2 2\n')
    result = veil("cas", "config", "check", str(config))
    assert result.returncode == 1 and f"{config}:2: not TOML" in result.stderr

    config.write_text('workers = 2\ndb = "postgresql://veil:hunter2@db.example/veil"\n')
    config.chmod(0o644)
    result = veil("cas", "config", "check", str(config))
    assert result.returncode == 1 and "Missing option '--data'" in result.stderr

    config.write_text('data = "/srv/veil"\nworkers = 2\ndb = "postgresql://veil:hunter2@db.example/veil"\n')
    result = veil("cas", "config", "check", "--json", str(config), env={"VEIL_CAS_WORKERS": "5"})
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)["settings"]
    assert shown["workers"] == {"value": 5, "from": "environment"}
    assert shown["data"] == {"value": "/srv/veil", "from": "file"}
    assert shown["listen"] == {"value": "127.0.0.1:8443", "from": "default"}
    assert shown["db"]["value"] == "postgresql://veil:***@db.example/veil", "the password is not printed"
    assert "hunter2" not in result.stdout + result.stderr
    assert f"others may read it: chmod 600 {config}" in result.stderr
    config.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert "chmod 600" not in veil("cas", "config", "check", str(config)).stderr


@pytest.fixture
def json_cas(tmp_path: Path) -> Iterator[CasServer]:
    """A CAS whose log format and level come from its configuration file (its --listen
    flag wins over the file's listen)."""
    config = tmp_path / "cas.toml"
    config.write_text('log-format = "json"\nlog-level = "debug"\nlisten = "127.0.0.1:1"\n')
    server = CasServer(tmp_path / "cas", free_port(), tmp_path / "cas.log", extra=["--config", str(config)])
    yield server.start()
    server.stop()


def log_lines(cas: CasServer) -> list[dict[str, object]]:
    lines = cas.log.read_text().splitlines()
    parsed = []
    for line in lines:
        if line.startswith("veil: SIM MODE"):
            pytest.fail("the banner is a log line in JSON format")
        parsed.append(json.loads(line))  # every line is one JSON object
    return parsed


def test_one_json_line_per_request_with_ids_and_no_secret(tmp_path: Path, json_cas: CasServer) -> None:
    cas = json_cas
    admin = cas.admin
    secrets = [
        {"name": "pw", "kind": "ascii", "size": 24},
        {"name": "given", "kind": "ascii", "value": "correct-horse-battery-staple"},
        {"name": "key", "kind": "binary", "size": 32},
    ]
    session = tmp_path / "s.yaml"
    node = register_platform(tmp_path, cas)
    key = PlatformSigningKey.load_or_create(node / "las" / "platform.key")
    session.write_text(session_yaml(name="ops/app", secrets=secrets, sim_platforms=[key.key_id]))
    assert admin.veil("cas", "owner", "add", admin.id, "--role", "owner", "--cas", cas.url).returncode == 0
    assert admin.veil("session", "create", str(session), "--cas", cas.url).returncode == 0
    client = HttpCasClient(CasConnection(cas.url, admin.pin(cas.url)["ca_certificate"]))
    provision(client, SimEvidenceSource(key), "ops/app/app", measurement_of([PYTHON, str(SHOW)]))
    with pytest.raises(AttestationRefused):
        provision(client, SimEvidenceSource(key), "ops/app/app", "sha256:" + "0" * 64)
    with pytest.raises(CasRequestFailed):
        client.launch("nobody/app")
    cas.stop()

    lines = log_lines(cas)
    requests = [line for line in lines if line["msg"] == "request"]
    assert requests, "requests are logged"
    wanted = {"ts", "level", "request_id", "method", "route", "status", "result", "duration_ms"}
    for line in requests:
        assert wanted <= set(line)
        assert isinstance(line["duration_ms"], float)
    ids = [line["request_id"] for line in requests]
    assert len(set(ids)) == len(ids), "every request has its own id"
    attests = [line for line in requests if line["route"] == "/v1/attest"]
    assert [line["result"] for line in attests] == ["ok", "refused"]
    assert all(line["config_id"] == "ops/app/app" for line in attests)
    assert "matches no attestation entry" in str(attests[1]["error"])
    created = next(line for line in requests if line["route"] == "/v1/sessions" and line["method"] == "POST")
    assert created["session"] == "ops/app" and created["owner"] == admin.id
    assert any(line["route"] == "/healthz" or line["route"] == "/v1/cas" for line in requests)
    assert any("listening on" in str(line["msg"]) for line in lines)

    issued = issued_secrets(cas.data, None)
    assert "correct-horse-battery-staple" in issued and len(issued) >= 6, "the scan sees the values"
    assert_no_secret_logged(cas.log, issued)
    leaky = tmp_path / "leaky.log"
    leaky.write_text(cas.log.read_text() + json.dumps({"msg": "correct-horse-battery-staple"}) + "\n")
    with pytest.raises(AssertionError, match="logged 1 secret value"):
        assert_no_secret_logged(leaky, issued)


def test_request_ids_are_echoed_and_health_probes_quiet(tmp_path: Path, cas_text: CasServer) -> None:
    context = ssl._create_unverified_context()
    conn = http.client.HTTPSConnection("127.0.0.1", cas_text.port, context=context, timeout=10)
    conn.request("GET", "/v1/cas", headers={"X-Request-Id": "trace-42"})
    response = conn.getresponse()
    response.read()
    assert response.getheader("X-Request-Id") == "trace-42"
    conn.request("GET", "/v1/cas", headers={"X-Request-Id": "not a token\u00e9"})
    response = conn.getresponse()
    response.read()
    generated = response.getheader("X-Request-Id")
    assert generated and generated != "not a token" and len(generated) == 32
    conn.request("GET", "/healthz")
    conn.getresponse().read()
    conn.close()
    cas_text.stop()
    text = cas_text.log.read_text()
    assert "veil: request request_id=trace-42 method=GET route=/v1/cas" in text
    assert f"request_id={generated}" in text
    assert "route=/healthz" not in text, "probes are logged at debug level only"


@pytest.fixture
def cas_text(tmp_path: Path) -> Iterator[CasServer]:
    server = CasServer(tmp_path / "cas", free_port(), tmp_path / "cas.log")
    yield server.start()
    server.stop()
