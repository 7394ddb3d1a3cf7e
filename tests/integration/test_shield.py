"""The network shield with real TLS on loopback: mutual TLS, and every refusal."""

import datetime as dt
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.net import free_port
from veil.crypto.x509ca import CertificateAuthority
from veil.policy.model import Network, ShieldClient, ShieldServer
from veil.shield import ShieldError, ShieldSet, TlsIdentity


def identity(
    ca: CertificateAuthority, service: str, validity: dt.timedelta = dt.timedelta(hours=1)
) -> TlsIdentity:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue_instance_certificate(key.public_key(), "test/app", service, validity)
    return TlsIdentity(
        cert.public_bytes(Encoding.PEM),
        key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
        ca.certificate_pem.encode(),
    )


class Echo(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self) -> None:
        self.seen = 0

        class Handler(socketserver.BaseRequestHandler):
            def handle(inner) -> None:
                self.seen += 1
                while data := inner.request.recv(65536):
                    inner.request.sendall(data)

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


@dataclass
class Setup:
    ca: CertificateAuthority
    echo: Echo
    server_port: int
    shields: list[ShieldSet]

    def server(self, client_auth: str = "session-ca") -> ShieldSet:
        net = Network(
            servers=[
                ShieldServer(
                    listen=f"127.0.0.1:{self.server_port}", forward=self.echo.address, client_auth=client_auth
                )
            ]
        )
        return self._start(net, identity(self.ca, "db"))

    def client(self, server_name: str = "db", ident: TlsIdentity | None = None) -> tuple[ShieldSet, int]:
        port = free_port()
        net = Network(
            clients=[
                ShieldClient(
                    listen=f"127.0.0.1:{port}",
                    connect=f"127.0.0.1:{self.server_port}",
                    server_name=server_name,
                )
            ]
        )
        return self._start(net, ident or identity(self.ca, "web")), port

    def _start(self, net: Network, ident: TlsIdentity) -> ShieldSet:
        shields = ShieldSet(net, ident)
        shields.start()
        self.shields.append(shields)
        return shields


@pytest.fixture
def setup() -> Iterator[Setup]:
    s = Setup(CertificateAuthority.create("veil session CA test/app"), Echo(), free_port(), [])
    yield s
    for shields in s.shields:
        shields.stop()
    s.echo.shutdown()


def talk(port: int, payload: bytes) -> bytes:
    """Send ``payload``, read as many bytes back (or until the shield closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload) and (chunk := sock.recv(65536)):
            received += chunk
        return received


def tls_talk(port: int, context: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="db") as sock,
    ):
        sock.sendall(b"hello")
        return sock.recv(100)


def test_two_services_talk_through_mutual_tls(setup: Setup) -> None:
    setup.server()
    _, port = setup.client()
    payload = bytes(range(256)) * 4000
    assert talk(port, payload) == payload
    assert setup.echo.seen == 1


def test_plaintext_on_the_protected_port_never_reaches_the_program(setup: Setup) -> None:
    setup.server()
    assert talk(setup.server_port, b"PLAINTEXT REQUEST\r\n") == b""
    assert setup.echo.seen == 0


def _tls_context(ca: CertificateAuthority, ident: TlsIdentity | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.certificate_pem)
    if ident is not None:
        path = f"/dev/shm/veil-test-{id(ident)}.pem"
        with open(path, "wb") as handle:
            handle.write(ident.key_pem + ident.certificate_pem)
        context.load_cert_chain(path)
    return context


def _refused(setup: Setup, ident: TlsIdentity | None) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        reply = tls_talk(setup.server_port, _tls_context(setup.ca, ident))
        if not reply:
            raise ConnectionError("closed")
    assert setup.echo.seen == 0


def test_a_client_without_a_certificate_is_refused(setup: Setup) -> None:
    setup.server()
    _refused(setup, None)


def test_a_client_certificate_of_another_sessions_ca_is_refused(setup: Setup) -> None:
    setup.server()
    other = CertificateAuthority.create("veil session CA other/session")
    _refused(setup, identity(other, "web"))


def test_an_expired_client_certificate_is_refused(setup: Setup) -> None:
    setup.server()
    _refused(setup, identity(setup.ca, "web", validity=dt.timedelta(minutes=-4)))


def test_a_server_with_the_wrong_name_is_refused_by_the_client_shield(setup: Setup) -> None:
    setup.server()
    client, port = setup.client(server_name="payments")
    assert talk(port, b"ping") == b""
    assert client.refused == 1
    assert setup.echo.seen == 0


def test_without_client_auth_any_tls_client_is_served(setup: Setup) -> None:
    setup.server(client_auth="none")
    assert tls_talk(setup.server_port, _tls_context(setup.ca, None)) == b"hello"


def test_a_busy_port_is_a_clear_error(setup: Setup) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", setup.server_port))
        holder.listen()
        with pytest.raises(ShieldError, match="cannot listen"):
            setup.server()


def test_a_shield_whose_secret_material_is_missing_is_a_clear_error(setup: Setup) -> None:
    net = Network(
        servers=[
            ShieldServer(
                listen=f"127.0.0.1:{setup.server_port}", forward=setup.echo.address, identity="db-cert"
            )
        ]
    )
    with pytest.raises(ShieldError, match="no chain of secret 'db-cert'"):
        ShieldSet(net, identity(setup.ca, "db")).start()
    with pytest.raises(ConnectionRefusedError):
        talk(setup.server_port, b"ping")  # nothing listens


def test_a_named_ca_is_the_only_trust_anchor(setup: Setup) -> None:
    """``client_auth: ca:SECRET`` trusts that CA, not the session CA above it."""
    app_ca = CertificateAuthority.create("Shop CA")
    server = identity(setup.ca, "db")
    net = Network(
        servers=[
            ShieldServer(
                listen=f"127.0.0.1:{setup.server_port}", forward=setup.echo.address, client_auth="ca:app-ca"
            )
        ]
    )
    setup._start(
        net,
        TlsIdentity(
            server.certificate_pem,
            server.key_pem,
            server.ca_pem,
            {"app-ca:crt": app_ca.certificate_pem.encode()},
        ),
    )
    _refused(setup, identity(setup.ca, "web"))
    assert tls_talk(setup.server_port, _tls_context(setup.ca, identity(app_ca, "web"))) == b"hello"
