"""Two services of one session talk mutual TLS through their shields; another session cannot."""

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import PYTHON, TESTS, measurement_of, requires_root, veil
from tests.net import free_port, wait_port

pytestmark = requires_root

SERVER, CLIENT = TESTS / "programs" / "echo_server.py", TESTS / "programs" / "echo_client.py"


def service(name: str, command: list[str], network: dict[str, object]) -> dict[str, object]:
    return {
        "name": name,
        "attestation": [{"platform": "sim", "measurement": measurement_of(command)}],
        "command": command,
        "network": network,
    }


def write(path: Path, name: str, services: list[dict[str, object]]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {"name": name, "version": "1", "security": {"tolerate": ["sim"]}, "services": services}
        )
    )
    return path


def test_mutual_tls_between_services_and_another_session_refused(tmp_path: Path) -> None:
    app, tls, local = free_port(), free_port(), free_port()
    client_net = {
        "clients": [{"listen": f"127.0.0.1:{local}", "connect": f"127.0.0.1:{tls}", "server_name": "db"}]
    }
    policy = write(
        tmp_path / "shop.yaml",
        "test/shop",
        [
            service(
                "db",
                [PYTHON, str(SERVER), str(app)],
                {"servers": [{"listen": f"127.0.0.1:{tls}", "forward": f"127.0.0.1:{app}"}]},
            ),
            service("web", [PYTHON, str(CLIENT), str(local), "hello-through-tls"], client_net),
        ],
    )
    env = {**os.environ, "VEIL_HOME": str(tmp_path / "home")}
    db = subprocess.Popen(
        [sys.executable, "-m", "veil", "run", "-q", "--policy", str(policy), "--service", "db"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_port(tls)
        wait_port(app)
        web = veil(
            "run",
            "-q",
            "--policy",
            str(policy),
            "--service",
            "web",
            env={"VEIL_HOME": str(tmp_path / "home")},
        )
        assert web.returncode == 0, web.stderr
        assert web.stdout.strip() == "hello-through-tls"

        intruder = write(
            tmp_path / "other.yaml",
            "test/other",
            [
                service("web", [PYTHON, str(CLIENT), str(local), "let-me-in"], client_net),
            ],
        )
        refused = veil(
            "run",
            "-q",
            "--policy",
            str(intruder),
            "--service",
            "web",
            env={"VEIL_HOME": str(tmp_path / "home")},
        )
        assert refused.stdout.strip() == "(no reply)", "the other session's runtime does not trust the server"
    finally:
        db.terminate()
        db.wait(timeout=30)
