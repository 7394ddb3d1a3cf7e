"""`veil run` end to end on the embedded CAS, with real processes, mounts and signals."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import PYTHON, SHOW, requires_root, session_dict, session_yaml, veil

pytestmark = requires_root

CONF = "/etc/veil-test/app.conf"


def run_show(
    tmp_path: Path, text: str, service: str = "app", *extra: str
) -> tuple[subprocess.CompletedProcess[str], dict]:  # type: ignore[type-arg]
    policy = tmp_path / "session.yaml"
    policy.write_text(text)
    result = veil(
        "run",
        "--policy",
        str(policy),
        "--service",
        service,
        *extra,
        env={"VEIL_HOME": str(tmp_path / "home")},
    )
    report = json.loads(result.stdout.splitlines()[0]) if result.stdout.strip() else {}
    return result, report


def delivering_session(**kwargs: object) -> str:
    return session_yaml(
        command=[PYTHON, str(SHOW), "--token", "$$VEIL::pw$$"],
        environment={
            "APP_PW": "$$VEIL::pw$$",
            "APP_PW_HEX": "$$VEIL::pw:hex$$",
            "SHOW_FILES": CONF,
            # otherwise the program's Python adds LC_CTYPE to its own environment (PEP 538)
            "PYTHONCOERCECLOCALE": "0",
        },
        files=[{"path": CONF, "content": "password = $$VEIL::pw$$\n", "mode": "0400"}],
        **kwargs,  # type: ignore[arg-type]
    )


def files_containing(needle: bytes, *roots: Path) -> list[str]:
    found = []
    for root in roots:
        for directory, _dirs, names in os.walk(root):
            for name in names:
                path = os.path.join(directory, name)
                try:
                    if os.path.isfile(path) and needle in Path(path).read_bytes():
                        found.append(path)
                except OSError:
                    continue
    return found


def test_a_secret_reaches_the_program_through_env_argv_and_file_and_leaves_no_trace(tmp_path: Path) -> None:
    result, report = run_show(tmp_path, delivering_session())
    assert result.returncode == 0, result.stderr
    secret = report["env"]["APP_PW"]
    assert len(secret) == 24
    assert report["argv"] == ["--token", secret]
    assert report["env"]["APP_PW_HEX"] == secret.encode().hex()
    assert report["files"][CONF] == {"content": f"password = {secret}\n", "mode": "0o400"}
    # exactly the policy's environment: nothing leaks in from veil's own environment
    assert set(report["env"]) == {"APP_PW", "APP_PW_HEX", "SHOW_FILES", "PYTHONCOERCECLOCALE"}
    assert report["cwd"] == "/"
    assert "SIM MODE" in result.stderr
    # after exit: no plaintext copy anywhere we or the program could have written
    needle = secret.encode()
    assert files_containing(needle, tmp_path, Path(tempfile.gettempdir()), Path("/dev/shm")) == []
    assert not os.path.exists(CONF), "the mount-point placeholder must be removed"
    assert not os.path.exists(os.path.dirname(CONF))


def test_the_secret_is_stable_across_runs_and_updates_that_keep_its_definition(tmp_path: Path) -> None:
    _, first = run_show(tmp_path, delivering_session())
    _, second = run_show(tmp_path, delivering_session())
    assert first["env"]["APP_PW"] == second["env"]["APP_PW"]
    # an update (new environment variable) that keeps the secret's definition
    changed = yaml.safe_load(delivering_session())
    changed["services"][0]["environment"]["EXTRA"] = "1"
    result, third = run_show(tmp_path, yaml.safe_dump(changed))
    assert "updated session test/app" in result.stderr
    assert third["env"]["EXTRA"] == "1"
    assert third["env"]["APP_PW"] == first["env"]["APP_PW"]
    # a changed definition gives a new value
    changed["secrets"][0]["size"] = 25
    _, fourth = run_show(tmp_path, yaml.safe_dump(changed))
    assert len(fourth["env"]["APP_PW"]) == 25


def test_a_wrong_predecessor_in_the_file_is_refused(tmp_path: Path) -> None:
    run_show(tmp_path, delivering_session())
    text = yaml.safe_dump({**yaml.safe_load(delivering_session()), "predecessor": "0" * 64})
    result, report = run_show(tmp_path, text)
    assert result.returncode == 1
    assert report == {}
    assert "is not the current hash" in result.stderr


def test_a_different_program_is_refused_with_a_one_line_reason(tmp_path: Path) -> None:
    other = session_dict(command=[PYTHON, str(SHOW)], measurement="sha256:" + "00" * 32)
    result, report = run_show(tmp_path, yaml.safe_dump(other))
    assert result.returncode == 1
    assert report == {}
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1
    assert "matches no attestation entry of service 'app'" in errors[0]


def test_sim_not_tolerated_is_refused(tmp_path: Path) -> None:
    result, _ = run_show(tmp_path, session_yaml(tolerate=[]))
    assert result.returncode == 1
    assert "does not tolerate sim evidence" in result.stderr


def test_exit_codes_propagate(tmp_path: Path) -> None:
    result, _ = run_show(tmp_path, session_yaml(environment={"SHOW_EXIT": "7"}))
    assert result.returncode == 7


def test_extra_arguments_need_the_policy_to_allow_them(tmp_path: Path) -> None:
    result, report = run_show(tmp_path, session_yaml(), "app", "--", "--extra")
    assert result.returncode == 1
    assert "does not accept extra arguments" in result.stderr
    result, report = run_show(tmp_path, session_yaml(allow_extra_args=True), "app", "--", "--extra")
    assert result.returncode == 0, result.stderr
    assert report["argv"] == ["--extra"]


def test_unknown_service_is_a_clear_error(tmp_path: Path) -> None:
    result, _ = run_show(tmp_path, session_yaml(), "db")
    assert result.returncode == 1
    assert "no service 'db' (services: app)" in result.stderr


def _start(tmp_path: Path, environment: dict[str, str]) -> subprocess.Popen[str]:
    policy = tmp_path / "session.yaml"
    policy.write_text(session_yaml(environment=environment))
    process = subprocess.Popen(
        [sys.executable, "-m", "veil", "run", "--policy", str(policy), "--service", "app"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "VEIL_HOME": str(tmp_path / "home")},
    )
    assert process.stdout is not None
    deadline = time.time() + 30
    while time.time() < deadline:
        if process.stdout.readline().strip() == "ready":
            return process
    process.kill()
    raise AssertionError("the program did not start")


@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_a_signal_to_veil_run_reaches_the_program_and_its_exit_code_propagates(
    tmp_path: Path, signum: int
) -> None:
    process = _start(tmp_path, {"SHOW_MODE": "wait-term"})
    process.send_signal(signum)
    assert process.wait(timeout=30) == 42  # the program's own SIGTERM handler exits 42


def _hostile_parent() -> None:
    """What a careless parent leaves to veil: signals blocked, SIGINT ignored."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.parametrize("files", [False, True], ids=["fork-exec", "launcher"])
@pytest.mark.parametrize("careless_parent", [False, True], ids=["clean-parent", "careless-parent"])
def test_the_program_starts_with_no_blocked_signal_and_default_forwarded_ones(
    tmp_path: Path, files: bool, careless_parent: bool
) -> None:
    """Whether the program is fork+exec'ed by the supervisor (no injected file) or started
    through the launcher: no signal blocked, SIGINT and SIGTERM at their defaults."""
    text = session_yaml(
        environment={"SHOW_FILES": "/proc/self/status", "PYTHONCOERCECLOCALE": "0"},
        files=[{"path": CONF, "content": "x\n"}] if files else [],
    )
    policy = tmp_path / "session.yaml"
    policy.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "veil", "run", "--policy", str(policy), "--service", "app"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "VEIL_HOME": str(tmp_path / "home")},
        preexec_fn=_hostile_parent if careless_parent else None,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout.splitlines()[0])["files"]["/proc/self/status"]["content"]
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert int(fields["SigBlk"], 16) == 0
    ignored = int(fields["SigIgn"], 16)
    assert not ignored & (1 << (signal.SIGINT - 1)) and not ignored & (1 << (signal.SIGTERM - 1))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP, signal.SIGTERM])
def test_a_program_killed_by_a_signal_gives_128_plus_n(tmp_path: Path, signum: int) -> None:
    # Without its handler (SHOW_MODE=wait-term installs one only for SIGTERM), the default
    # action kills the program; veil reports 128+N as a shell would.
    process = _start(tmp_path, {"SHOW_MODE": "wait-term"})
    if signum == signal.SIGTERM:
        # kill the program directly, not through veil, to check the reaping path too
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        os.kill(int(children[0]), signal.SIGKILL)
        assert process.wait(timeout=30) == 128 + signal.SIGKILL
    else:
        process.send_signal(signum)
        assert process.wait(timeout=30) == 128 + signum


def test_scratch_directories_are_a_copy_in_memory_and_the_disk_keeps_its_own(tmp_path: Path) -> None:
    """``tmpfs:``: the program sees what the directory held (owners, modes, links) and
    writes into a tmpfs of its own; the directory on disk (in a converted image: the
    measured root) is as it was, so the next start finds the same root (issue #31)."""
    logs = tmp_path / "var-log"
    (logs / "app").mkdir(parents=True)
    (logs / "app" / "old.log").write_text("from the image\n")
    os.chown(logs / "app", 33, 33)
    (logs / "current").symlink_to("app/old.log")
    script = (
        f"cat {logs}/current; echo written >> {logs}/app/old.log; echo new > {logs}/app/new.log; "
        f"stat -c '%u %a' {logs}/app; cat {logs}/app/old.log | wc -l; df -P {logs} | tail -1"
    )
    before = staging()
    policy = tmp_path / "session.yaml"
    policy.write_text(
        session_yaml(command=["/bin/sh", "-c", script], tmpfs=[str(logs), str(tmp_path / "absent")])
    )
    for _ in range(2):
        result = veil(
            "run", "--policy", str(policy), "--service", "app", env={"VEIL_HOME": str(tmp_path / "home")}
        )
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "from the image"
        assert lines[1] == f"33 {oct((logs / 'app').stat().st_mode & 0o777)[2:]}"
        assert lines[2] == "2"  # its own write, not the previous run's
        assert lines[3].startswith("tmpfs")
    assert (logs / "app" / "old.log").read_text() == "from the image\n"
    assert not (logs / "app" / "new.log").exists()
    assert staging() <= before  # the scratch mounts' staging directories are gone


def staging() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("veil-files-")}


def test_a_scratch_path_must_be_an_absolute_directory(tmp_path: Path) -> None:
    policy = tmp_path / "session.yaml"
    for bad in ("relative/dir", "/", "/var/../etc"):
        policy.write_text(session_yaml(tmpfs=[bad]))
        checked = veil("session", "check", str(policy))
        assert checked.returncode != 0 and "tmpfs" in (checked.stdout + checked.stderr)


def test_a_scratch_path_over_a_volume_is_refused(tmp_path: Path) -> None:
    document = session_dict(tmpfs=["/srv/data/cache"])
    document["services"][0]["volumes"] = [{"name": "data", "path": "/srv/data"}]
    document["volumes"] = [{"name": "data", "accept_fresh": True}]
    policy = tmp_path / "session.yaml"
    policy.write_text(yaml.safe_dump(document))
    checked = veil("session", "check", str(policy))
    assert checked.returncode != 0 and "overlaps the volume path /srv/data" in checked.stdout + checked.stderr
