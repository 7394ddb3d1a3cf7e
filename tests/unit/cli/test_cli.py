"""The CLI contract: exit codes 0/1/2, one-line located errors, --json, no tracebacks."""

import json
import os
import sqlite3
from pathlib import Path

import jsonschema
import yaml

from tests.conftest import PYTHON, SHOW, measurement_of, session_yaml, veil
from veil.runtime.run import EmbeddedHome


def test_session_check_reports_an_unknown_key_with_file_line_and_column(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text(session_yaml().replace("  pwd: /", "  pwdd: /"))
    result = veil("session", "check", str(bad))
    assert result.returncode == 1
    line = next(n for n, text in enumerate(bad.read_text().splitlines(), 1) if "pwdd" in text)
    assert result.stderr.strip() == (
        f"{bad}:{line}:3: error: unknown key 'pwdd' in services[0] (hint: did you mean 'pwd'?)"
    )
    assert "Traceback" not in result.stderr


def test_session_check_json_lists_problems(tmp_path: Path) -> None:
    bad = tmp_path / "s.yaml"
    bad.write_text("name: x\nversion: '1'\nservices: 3\n")
    result = veil("session", "check", "--json", str(bad))
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False
    assert report["problems"][0]["line"] == 3


def test_session_check_and_hash_agree_on_a_valid_file(tmp_path: Path) -> None:
    good = tmp_path / "s.yaml"
    good.write_text(session_yaml())
    checked = json.loads(veil("session", "check", "--json", str(good)).stdout)
    hashed = veil("session", "hash", str(good))
    assert hashed.returncode == 0
    assert checked["valid"] and checked["hash"] == hashed.stdout.strip()


def test_a_missing_file_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    result = veil("session", "hash", str(tmp_path / "nope.yaml"))
    assert result.returncode == 1
    assert "cannot read session file" in result.stderr
    assert "Traceback" not in result.stderr


def test_usage_errors_exit_2() -> None:
    assert veil("run").returncode == 2
    assert veil("session", "frobnicate").returncode == 2
    assert veil("measure").returncode == 2


def test_policy_without_service_says_what_is_missing(tmp_path: Path) -> None:
    """Issue #27: it said `not with --cas/--config-id`, which the user had not given."""
    policy = tmp_path / "session.yaml"
    policy.write_text(session_yaml())
    result = veil("run", "--policy", str(policy), env={"VEIL_HOME": str(tmp_path / "home")})
    assert result.returncode == 2
    assert "--policy needs --service NAME" in result.stderr and "--cas" not in result.stderr


def test_measure_json_lists_covered_files() -> None:
    result = veil("measure", "--json", "--", PYTHON, str(SHOW))
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["measurement"].startswith("sha256:")
    assert [c["role"] for c in report["covered"]] == ["executable", "argument"]


def test_measure_of_a_missing_program_exits_1() -> None:
    result = veil("measure", "--", "/nonexistent/program")
    assert result.returncode == 1
    assert "not found" in result.stderr


def test_audit_verify_exits_1_on_a_tampered_log(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"VEIL_HOME": str(home)}
    cas, _ = EmbeddedHome(home).open()  # as `veil run --policy` does: registers the platform
    cas.close()
    assert veil("audit", "verify", env=env).returncode == 0
    db = sqlite3.connect(home / "cas" / "cas.db")
    body = db.execute("SELECT body FROM audit_log WHERE seq = 1").fetchone()[0]
    db.execute("UPDATE audit_log SET body = ? WHERE seq = 1", (body.replace(b"local", b"LOCAL"),))
    db.commit()
    db.close()
    result = veil("audit", "verify", env=env)
    assert result.returncode == 1
    assert "audit entry 1 was modified" in result.stderr


def test_help_explains_every_command() -> None:
    for command in (["--help"], ["run", "--help"], ["session", "check", "--help"], ["measure", "--help"]):
        result = veil(*command)
        assert result.returncode == 0
        assert "Usage:" in result.stdout


def test_session_schema_is_json_schema_that_accepts_a_valid_session_and_rejects_unknown_keys(
    tmp_path: Path,
) -> None:
    result = veil("session", "schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    good = yaml.safe_load(session_yaml())
    assert list(validator.iter_errors(good)) == []
    bad = dict(good, bogus=1)
    assert any("bogus" in e.message for e in validator.iter_errors(bad))


def test_reading_the_audit_log_never_creates_a_cas(tmp_path: Path) -> None:
    """Issue #27: `veil audit show` in an empty directory made a new CAS with a master key."""
    home = tmp_path / "nothing-here"
    for command in (["audit", "show"], ["audit", "verify"]):
        result = veil(*command, env={"VEIL_HOME": str(home)})
        assert result.returncode == 1
        assert f"no embedded CAS at {home}" in result.stderr
    assert not home.exists()


def test_the_embedded_cas_is_the_same_from_every_directory(tmp_path: Path) -> None:
    """Without VEIL_HOME the embedded CAS lives in the user's data directory: running from
    another directory finds the same session (and secrets), not a new CAS."""
    policy = tmp_path / "session.yaml"
    policy.write_text(session_yaml(command=["/bin/true"], measurement=measurement_of(["/bin/true"])))
    data = tmp_path / "data"
    env = {"XDG_DATA_HOME": str(data), "VEIL_HOME": ""}
    for where, expected in (("one", "registered session"), ("two", "unchanged")):
        (tmp_path / where).mkdir()
        ran = veil("run", "--policy", str(policy), "--service", "app", env=env, cwd=tmp_path / where)
        assert ran.returncode == 0, ran.stderr
        assert expected in ran.stderr
        assert not (tmp_path / where / ".veil").exists()
    assert (data / "veil" / "cas" / "cas.db").exists()


def test_a_legacy_dot_veil_is_used_with_a_warning(tmp_path: Path) -> None:
    cas, _ = EmbeddedHome(tmp_path / ".veil").open()
    cas.close()
    env = {"XDG_DATA_HOME": str(tmp_path / "data"), "VEIL_HOME": ""}
    shown = veil("audit", "show", env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert (
        "warning: using ./.veil" in shown.stderr and f"mv .veil {tmp_path / 'data' / 'veil'}" in shown.stderr
    )
    assert not (tmp_path / "data" / "veil").exists()


def test_session_measure_is_what_the_runtime_attests(tmp_path: Path) -> None:
    """`veil measure -- sh run.sh` resolves `sh` on this shell's PATH (a shim here) and
    `run.sh` in this directory; `veil session measure` uses the session's PATH and pwd, as
    the runtime does, so its value is the one `veil run` attests."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "run.sh").write_text("echo ran\n")
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sh").write_text('#!/bin/sh\nexec /bin/sh "$@"\n')
    (shim / "sh").chmod(0o755)
    document = yaml.safe_load(
        session_yaml(
            command=["sh", "run.sh"], measurement="sha256:" + "00" * 32, environment={"PATH": "/usr/bin:/bin"}
        )
    )
    document["services"][0]["pwd"] = str(app)
    policy = tmp_path / "session.yaml"
    policy.write_text(yaml.safe_dump(document))
    env = {"PATH": f"{shim}:{os.environ['PATH']}", "VEIL_HOME": str(tmp_path / "home")}

    measured = veil("session", "measure", str(policy), "--service", "app", "--json", env=env, cwd=tmp_path)
    assert measured.returncode == 0, measured.stderr
    report = json.loads(measured.stdout)
    assert [c["role"] for c in report["covered"]] == ["executable", "argument"]
    assert report["covered"][1]["path"] == str(app / "run.sh")
    naive = veil("measure", "--", "sh", "run.sh", env=env, cwd=tmp_path)
    assert naive.returncode == 0 and naive.stdout.strip() != report["measurement"]

    document["services"][0]["attestation"][0]["measurement"] = report["measurement"]
    policy.write_text(yaml.safe_dump(document))
    ran = veil("run", "--policy", str(policy), "--service", "app", env=env, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "ran" in ran.stdout
    missing = veil("session", "measure", str(policy), "--service", "nope", env=env)
    assert missing.returncode == 1 and "no service 'nope' (services: app)" in missing.stderr
