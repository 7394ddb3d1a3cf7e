"""The embedded CAS server (veil.runtime.embedded_server): `veil run --policy` on a warm CAS.

The first run of a home starts the server; later runs use it and import neither the CAS nor
the session model, and must behave exactly as the in-process path: the same secrets, the
same refusals and errors, volumes and their tags. The server serves its owner's uid only,
and goes away when idle, when its socket is removed, and when other veil code asks.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import (
    PYTHON,
    journal_session,
    measurement_of,
    requires_root,
    session_yaml,
    veil,
    wait_gone,
)
from veil.client.local import ServerUnavailable, exchange

pytestmark = requires_root


class Home:
    def __init__(self, root: Path, idle: str = "60") -> None:
        self.root = root
        self.idle = idle

    @property
    def socket(self) -> Path:
        return self.root / "cas.sock"

    def env(self, **extra: str) -> dict[str, str]:
        return {"VEIL_HOME": str(self.root), "VEIL_EMBEDDED_SERVER": self.idle, **extra}

    def run(
        self, policy: Path, *args: str, importtime: bool = False, **env: str
    ) -> subprocess.CompletedProcess[str]:
        interpreter = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", "veil"]
        return subprocess.run(
            [*interpreter, "run", "--policy", str(policy), "--service", "app", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, **self.env(**env)},
            check=False,
        )

    def server_pids(self) -> list[int]:
        log = self.root / "embedded-server.log"
        return [int(p) for p in re.findall(r"\(pid (\d+),", log.read_text())] if log.exists() else []

    def wait_served(self) -> int:
        deadline = time.time() + 15
        while time.time() < deadline:
            pids = self.server_pids()
            if self.socket.exists() and pids:
                return pids[-1]
            time.sleep(0.05)
        raise AssertionError(f"no embedded CAS server for {self.root}")


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Home]:
    served = Home(tmp_path / "home")
    yield served
    if served.socket.exists():
        served.socket.unlink()  # the server sees its socket gone and exits
    for pid in served.server_pids():
        assert wait_gone(pid, 10), "a server outlived its socket"


def _secret_session(tmp_path: Path, **kwargs: object) -> Path:
    policy = tmp_path / "session.yaml"
    policy.write_text(
        session_yaml(environment={"APP_PW": "$$VEIL::pw$$", "PYTHONCOERCECLOCALE": "0"}, **kwargs)
    )  # type: ignore[arg-type]
    return policy


def test_later_runs_use_the_server_and_import_neither_the_cas_nor_the_model(
    tmp_path: Path, home: Home
) -> None:
    policy = _secret_session(tmp_path)
    first = home.run(policy)
    assert first.returncode == 0, first.stderr
    assert "started the embedded CAS server for the next runs" in first.stderr
    home.wait_served()
    assert home.socket.stat().st_mode & 0o777 == 0o600

    second = home.run(policy, importtime=True)
    assert second.returncode == 0, second.stderr
    imported = {line.split("|")[-1].strip() for line in second.stderr.splitlines() if "import time:" in line}
    assert "veil.cas.service" not in imported and "pydantic" not in imported and "yaml" not in imported
    assert "session test/app unchanged" in second.stderr
    secret = json.loads(first.stdout)["env"]["APP_PW"]
    assert json.loads(second.stdout)["env"]["APP_PW"] == secret and len(secret) == 24

    audit = veil("audit", "show", env=home.env()).stdout
    assert audit.count("attest.grant") == 2, "both attestations are in the one CAS's audit log"


def test_two_runs_at_once_are_both_served(tmp_path: Path, home: Home) -> None:
    policy = _secret_session(tmp_path)
    assert home.run(policy).returncode == 0
    home.wait_served()
    env = {**os.environ, **home.env()}
    argv = [sys.executable, "-m", "veil", "run", "-q", "--policy", str(policy), "--service", "app"]
    runs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    outputs = [run.communicate(timeout=60) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], [err for _, err in outputs]
    assert len({json.loads(out)["env"]["APP_PW"] for out, _ in outputs}) == 1


def test_refusals_and_errors_read_as_they_do_in_process(tmp_path: Path, home: Home) -> None:
    script = tmp_path / "app.py"
    script.write_text("print('v1')\n")
    command = [PYTHON, str(script)]
    policy = tmp_path / "session.yaml"
    policy.write_text(session_yaml(command=command, measurement=measurement_of(command)))
    assert home.run(policy).returncode == 0
    home.wait_served()

    script.write_text("print('v2: not the measured program')\n")
    served = home.run(policy)
    in_process = home.run(policy, VEIL_EMBEDDED_SERVER="off")
    assert served.returncode == in_process.returncode == 1
    assert "matches no attestation entry" in served.stderr
    assert f"since the last accepted run: argument 1 {script} changed" in served.stderr
    assert served.stderr == in_process.stderr

    cases = {
        "bad YAML": ("name: x\n  bad: [\n", ()),
        "no such service": (session_yaml(service="other"), ()),
        "extra arguments": (session_yaml(), ("--", "--extra")),
    }
    for what, (text, extra) in cases.items():
        policy.write_text(text)
        served, in_process = home.run(policy, *extra), home.run(policy, *extra, VEIL_EMBEDDED_SERVER="off")
        assert served.returncode == in_process.returncode != 0, what
        assert served.stderr == in_process.stderr, what
    assert home.socket.exists(), "errors do not stop the server"


@pytest.fixture
def open_parent() -> Iterator[Path]:
    """A directory another uid may traverse (pytest's own are 0700)."""
    parent = Path(tempfile.mkdtemp(prefix="veil-test-server-"))
    parent.chmod(0o711)
    yield parent
    shutil.rmtree(parent, ignore_errors=True)


def test_a_stranger_is_refused(tmp_path: Path, open_parent: Path) -> None:
    policy = _secret_session(tmp_path)
    home = Home(open_parent / "home", idle="20")
    assert home.run(policy).returncode == 0
    pid = home.wait_served()

    def as_nobody() -> dict[str, Any]:
        """The answer another uid (nobody) gets, from a forked child that dropped root."""
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                os.setgid(65534)
                os.setuid(65534)
                answer: dict[str, Any] = exchange(home.socket, {"op": "nonce", "fingerprint": ""})
            except Exception as exc:
                answer = {"raised": f"{type(exc).__name__}: {exc}"}
            os.write(write, json.dumps(answer).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as said:
            result: dict[str, Any] = json.loads(said.read())
        os.waitpid(pid, 0)
        return result

    # The home is 0700 and the socket 0600: another uid cannot even connect.
    assert "Permission denied" in str(as_nobody().get("raised"))
    # With both opened up, the server itself refuses another uid (SO_PEERCRED).
    os.chmod(home.root, 0o711)
    os.chmod(home.socket, 0o666)
    answer = as_nobody()
    assert "error" in answer, answer
    assert answer["error"]["message"].endswith("serves uid 0 only"), answer
    assert home.run(policy).returncode == 0, "the owner is still served"
    home.socket.unlink()
    assert wait_gone(pid, 10)


def test_other_veil_code_makes_the_server_go_and_the_run_works_in_process(tmp_path: Path, home: Home) -> None:
    policy = _secret_session(tmp_path)
    assert home.run(policy).returncode == 0
    pid = home.wait_served()
    with pytest.raises(ServerUnavailable, match="other code"):
        exchange(home.socket, {"op": "nonce", "fingerprint": "another veil"})
    assert wait_gone(pid, 10) and not home.socket.exists()
    again = home.run(policy)
    assert again.returncode == 0 and "started the embedded CAS server" in again.stderr
    assert home.wait_served() != pid


def test_an_idle_server_exits_and_so_does_one_whose_socket_is_removed(tmp_path: Path) -> None:
    policy = _secret_session(tmp_path)
    idle = Home(tmp_path / "idle", idle="1")
    assert idle.run(policy).returncode == 0
    assert wait_gone(idle.wait_served(), 15) and not idle.socket.exists()

    removed = Home(tmp_path / "removed")
    assert removed.run(policy).returncode == 0
    pid = removed.wait_served()
    removed.socket.unlink()
    assert wait_gone(pid, 10)


def test_off_means_no_server(tmp_path: Path) -> None:
    off = Home(tmp_path / "off", idle="off")
    result = off.run(_secret_session(tmp_path))
    assert result.returncode == 0 and "embedded CAS server" not in result.stderr
    assert not off.socket.exists() and off.server_pids() == []


def _journal_session(tmp_path: Path) -> Path:
    environment = {"ENTRY": "$$VEIL::entry$$", "JOURNAL_SLEEP": "$$VEIL::sleep$$"}
    session = journal_session(tmp_path / "data", environment)
    session["secrets"] = [
        {"name": "entry", "kind": "ascii", "value": "x"},
        {"name": "sleep", "kind": "ascii", "value": "0"},
    ]
    policy = tmp_path / "session.yaml"
    policy.write_text(yaml.safe_dump(session))
    return policy


def _with_values(policy: Path, entry: str, sleep: str) -> None:
    session = yaml.safe_load(policy.read_text())
    session["secrets"] = [
        {"name": "entry", "kind": "ascii", "value": entry},
        {"name": "sleep", "kind": "ascii", "value": sleep},
    ]
    policy.write_text(yaml.safe_dump(session))


def test_volumes_and_their_tags_through_the_server_even_when_it_left_meanwhile(tmp_path: Path) -> None:
    home = Home(tmp_path / "home", idle="3")
    policy = _journal_session(tmp_path)
    _with_values(policy, "one", "0")
    first = home.run(policy)
    assert first.returncode == 0, first.stderr
    home.wait_served()
    _with_values(policy, "two", "0")
    second = home.run(policy)
    assert second.returncode == 0, second.stderr
    assert second.stdout == "entry one\nentry two\n"
    assert "started the embedded CAS server" not in second.stderr, "the second run was served"
    # A program that outlives the server (idle 3 s): its volume's tag is pushed in-process.
    _with_values(policy, "three", "6")
    pid = home.wait_served()
    third = home.run(policy)
    assert third.returncode == 0, third.stderr
    assert "started the embedded CAS server" not in third.stderr, "the third run was served"
    assert wait_gone(pid, 1), "the server left while the program ran"
    fourth = home.run(policy, VEIL_EMBEDDED_SERVER="off")
    assert fourth.returncode == 0, fourth.stderr
    assert fourth.stdout.startswith("entry one\nentry two\nentry three\nentry ")
    audit = veil("audit", "show", env=home.env()).stdout
    assert audit.count("volume.tag ") == 5  # created fresh, then the end of each of four runs
    for pid in home.server_pids():
        wait_gone(pid, 10)


def test_a_home_too_deep_for_a_socket_runs_in_process_and_starts_nothing(tmp_path: Path) -> None:
    deep = Home(tmp_path / ("d" * 60) / ("e" * 60) / "home")
    assert len(str(deep.socket)) > 107
    result = deep.run(_secret_session(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "embedded CAS server" not in result.stderr and deep.server_pids() == []
