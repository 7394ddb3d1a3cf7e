"""What a stranger with network access to the CAS can do: raw HTTPS with or without a client
certificate of her own, sim evidence signed with her own key, forged tag updates."""

import datetime as dt
import http.client
import json
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from tests.cas_server import CasServer
from veil.cas.identity import owner_id


@dataclass
class Stranger:
    """Someone who reached the CAS: she verified its CA (it is public) and holds her own key."""

    cas: CasServer
    ca_pem: str
    home: Path
    certificate_pem: str | None = None

    def __post_init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.home.mkdir(parents=True, exist_ok=True)

    @property
    def id(self) -> str:
        return owner_id(self.key.public_key())

    def csr(self) -> str:
        request = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mallory")]))
            .sign(self.key, hashes.SHA256())
        )
        return request.public_bytes(Encoding.PEM).decode()

    def context(self, certificate_pem: str | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cadata=self.ca_pem)
        chain = certificate_pem or self.certificate_pem
        if chain is not None:  # files of this call's own: threads may call at once
            with tempfile.TemporaryDirectory(dir=self.home) as scratch:
                cert, key = Path(scratch) / "client.crt", Path(scratch) / "client.key"
                cert.write_text(chain)
                key.write_bytes(self.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
                context.load_cert_chain(cert, key)
        return context

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        raw: bytes | None = None,
        timeout: float = 30,
        certificate_pem: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        context = self.context(certificate_pem)
        conn = http.client.HTTPSConnection("127.0.0.1", self.cas.port, context=context, timeout=timeout)
        payload = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        data = response.read()
        conn.close()
        try:
            answer = json.loads(data) if data else {}
        except ValueError:
            answer = {"raw": data.decode(errors="replace")}
        return response.status, answer

    def enrol(self) -> tuple[int, dict[str, Any]]:
        status, answer = self.request("POST", "/v1/owners", {"csr": self.csr()})
        if status == 201:
            self.certificate_pem = str(answer["certificate"])
        return status, answer

    def self_signed_certificate(self, uri: str) -> str:
        """A certificate naming ``uri`` as its subject alternative name, signed by herself."""
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "runtime")])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        return certificate.public_bytes(Encoding.PEM).decode()

    def raw_tls(self, source: str = "127.0.0.1") -> ssl.SSLSocket:
        """A TLS connection that has sent nothing yet (from ``source``, any 127/8 address)."""
        sock = socket.create_connection(("127.0.0.1", self.cas.port), timeout=30, source_address=(source, 0))
        return ssl.create_default_context(cadata=self.ca_pem).wrap_socket(sock, server_hostname="127.0.0.1")


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Does the peer close ``sock`` within ``seconds`` (read returns EOF or the reset)?"""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except (ConnectionResetError, ssl.SSLError, OSError):
        return True
