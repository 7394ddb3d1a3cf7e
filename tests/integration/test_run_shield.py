"""Two services of one session talk mutual TLS through their shields; another session cannot."""

import contextlib
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml
from cryptography import x509

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


def write(
    path: Path, name: str, services: list[dict[str, object]], secrets: list[dict[str, object]] | None = None
) -> Path:
    session = {"name": name, "version": "1", "security": {"tolerate": ["sim"]}, "services": services}
    path.write_text(yaml.safe_dump({**session, "secrets": secrets or []}))
    return path


@contextlib.contextmanager
def running(policy: Path, name: str, env: dict[str, str], *ports: int) -> Iterator[None]:
    """``veil run`` of one service in the background until the block ends."""
    server = subprocess.Popen(
        [sys.executable, "-m", "veil", "run", "-q", "--policy", str(policy), "--service", name],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for port in ports:
            wait_port(port)
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)


def run(policy: Path, name: str, env: dict[str, str]) -> str:
    done = veil("run", "-q", "--policy", str(policy), "--service", name, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


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
    env = {"VEIL_HOME": str(tmp_path / "home")}
    with running(policy, "db", env, tls, app):
        assert run(policy, "web", env) == "hello-through-tls"
        intruder = write(
            tmp_path / "other.yaml",
            "test/other",
            [service("web", [PYTHON, str(CLIENT), str(local), "let-me-in"], client_net)],
        )
        # the other session's runtime does not trust the server
        assert run(intruder, "web", env) == "(no reply)"


def _key(name: str) -> dict[str, object]:
    return {"name": name, "kind": "private-key"}


#: an application CA in the session, and certificates it issues; the shields present these
#: instead of the instance certificates and trust only that CA
APP_SECRETS: list[dict[str, object]] = [
    _key("ca-key"),
    _key("db-key"),
    _key("web-key"),
    {"name": "app-ca", "kind": "x509-ca", "private_key": "ca-key", "common_name": "Shop CA"},
    {"name": "db-cert", "kind": "x509", "private_key": "db-key", "issuer": "app-ca", "dns": ["db.shop"]},
    {"name": "web-cert", "kind": "x509", "private_key": "web-key", "issuer": "app-ca", "usage": ["client"]},
]


def test_identities_and_trust_from_policy_secrets(tmp_path: Path) -> None:
    app, tls, local, other = free_port(), free_port(), free_port(), free_port()

    def client(port: int, message: str, identity: str) -> dict[str, object]:
        shield = {
            "listen": f"127.0.0.1:{port}",
            "connect": f"127.0.0.1:{tls}",
            "server_name": "db.shop",
            "server_auth": "ca:app-ca",
            "identity": identity,
        }
        return service(f"web-{identity}", [PYTHON, str(CLIENT), str(port), message], {"clients": [shield]})

    server = {
        "listen": f"127.0.0.1:{tls}",
        "forward": f"127.0.0.1:{app}",
        "identity": "db-cert",
        "client_auth": "ca:app-ca",
    }
    policy = write(
        tmp_path / "shop.yaml",
        "test/shop",
        [
            service("db", [PYTHON, str(SERVER), str(app)], {"servers": [server]}),
            client(local, "hello-app-ca", "web-cert"),
            # same session, attested, but its instance certificate comes from the session
            # CA, which this server does not trust
            client(other, "instance-only", "instance"),
        ],
        APP_SECRETS,
    )
    env = {"VEIL_HOME": str(tmp_path / "home")}
    with running(policy, "db", env, tls, app):
        assert run(policy, "web-web-cert", env) == "hello-app-ca"
        assert run(policy, "web-instance", env) == "(no reply)"
        with (
            socket.create_connection(("127.0.0.1", tls), timeout=10) as raw,
            _anonymous().wrap_socket(raw) as sock,
        ):
            presented = x509.load_der_x509_certificate(sock.getpeercert(binary_form=True) or b"")
            with contextlib.suppress(ssl.SSLError, OSError):
                sock.sendall(b"x")
                sock.recv(1)  # the server asks for a certificate we do not have
        names = presented.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.DNSName) == ["db.shop"]
        assert presented.issuer.rfc4514_string() == "CN=Shop CA"


def _anonymous() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def test_a_shield_naming_a_missing_or_wrong_secret_is_refused_by_check(tmp_path: Path) -> None:
    shield = {
        "listen": "127.0.0.1:7000",
        "forward": "127.0.0.1:7001",
        "identity": "app-ca",
        "client_auth": "ca:nope",
    }
    policy = write(
        tmp_path / "bad.yaml",
        "test/bad",
        [service("db", [PYTHON, str(SERVER), "7001"], {"servers": [shield]})],
        APP_SECRETS,
    )
    checked = veil("session", "check", str(policy))
    assert checked.returncode == 1
    assert (
        "secret 'app-ca' is x509-ca; a shield's identity is an x509 secret" in checked.stdout + checked.stderr
    )
    assert "unknown secret 'nope'" in checked.stdout + checked.stderr
