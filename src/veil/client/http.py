"""The network CAS client: HTTPS (TLS 1.3) to a pinned CAS, keep-alive, JSON bodies.

``HttpCasClient`` speaks the runtime's side (nonce, launch, attest, volume tags);
``OwnerClient`` adds the owner's side, authenticated by the owner's client certificate.
Every connection verifies the CAS against the pinned CA certificate only, so a CAS that
does not hold the pinned key is refused at the TLS handshake.
"""

import http.client
import json
import ssl
import threading
from typing import Any
from urllib.parse import quote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import NameOID

from veil.client.config import ClientConfig, ClientConfigError
from veil.crypto import tls
from veil.crypto.tls import load_chain_in_memory
from veil.errors import VeilError
from veil.protocol import (
    AttestationGrant,
    AttestationRefused,
    AttestationRequest,
    LaunchDescriptor,
    ProtocolError,
    VolumeTagUpdate,
    b64,
    unb64,
)

_TIMEOUT = 60.0


class CasRequestFailed(VeilError):
    """The CAS answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int = 0, body: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or {}


class CasNotTrusted(CasRequestFailed):
    """The server does not present the pinned CAS identity."""


class CasConnection:
    """One keep-alive HTTPS connection per thread to ``url``, verified against ``ca_pem``."""

    def __init__(self, url: str, ca_pem: str | None, client_chain: tuple[bytes, bytes] | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ClientConfigError(f"{url} is not an https:// URL")
        self.url = url
        self._host = parts.hostname
        self._port = parts.port or 443
        self._context = tls.client_context(ca_pem)
        if client_chain is not None:
            load_chain_in_memory(self._context, client_chain[0], client_chain[1])
        self._local = threading.local()
        #: the last answer's Veil-Sim header
        self.sim = False

    def _connection(self) -> http.client.HTTPSConnection:
        conn: http.client.HTTPSConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPSConnection(
                self._host, self._port, context=self._context, timeout=_TIMEOUT
            )
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                raw = response.read()
                break
            except ssl.SSLCertVerificationError as exc:
                self.close()
                raise CasNotTrusted(
                    f"the server at {self.url} is not the pinned CAS ({exc.verify_message}); if the CAS "
                    f"was reinstalled on purpose, verify it again with: veil cas attest {self.url}"
                ) from None
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()  # the CAS closed an idle keep-alive connection: retry once
                if attempt == 2:
                    raise CasRequestFailed(f"the CAS at {self.url} closed the connection") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                raise CasRequestFailed(f"cannot reach the CAS at {self.url}: {reason}") from None
        self.sim = response.getheader("Veil-Sim") == "true"
        if not raw:
            return response.status, {}
        try:
            return response.status, json.loads(raw)
        except ValueError:
            raise CasRequestFailed(
                f"the CAS answered {response.status} with a body that is not JSON"
            ) from None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """A request that must succeed (2xx); otherwise CasRequestFailed with the CAS's words."""
        status, answer = self.request(method, path, body)
        if status // 100 != 2:
            raise _failure(status, answer)
        return answer


def _failure(status: int, answer: Any) -> CasRequestFailed:
    body = answer if isinstance(answer, dict) else {}
    message = str(body.get("error", f"the CAS answered HTTP {status}"))
    problems = body.get("problems")
    if isinstance(problems, list) and problems:
        message += "\n" + "\n".join(str(p) for p in problems)
    return CasRequestFailed(message, status, body)


class HttpCasClient:
    """The runtime's CAS client over the network (``CasClient``)."""

    def __init__(self, connection: CasConnection) -> None:
        self.connection = connection

    @classmethod
    def pinned(cls, url: str, config: ClientConfig, ca_pem: str | None = None) -> "HttpCasClient":
        """A client for ``url`` trusting only its pin (or ``ca_pem``, e.g. from VEIL_CAS_CA)."""
        return cls(CasConnection(url, ca_pem or config.pin(url).ca_certificate))

    @property
    def sim(self) -> bool:
        return self.connection.sim

    def nonce(self) -> bytes:
        return unb64(self.connection.call("POST", "/v1/nonces").get("nonce"), "nonce")

    def launch(self, config_id: str) -> LaunchDescriptor:
        answer = self.connection.call("GET", f"/v1/launch?config_id={quote(config_id, safe='')}")
        try:
            return LaunchDescriptor.from_json(answer)
        except ProtocolError as exc:
            raise CasRequestFailed(
                f"the CAS sent a malformed launch descriptor for {config_id}: {exc}"
            ) from None

    def attest(self, request: AttestationRequest) -> AttestationGrant:
        status, answer = self.connection.request("POST", "/v1/attest", request.to_json())
        if status == 403 and isinstance(answer, dict) and "reason" in answer:
            raise AttestationRefused(str(answer["reason"]))
        if status != 200:
            raise _failure(status, answer)
        return AttestationGrant.from_json(answer)

    def push_volume_tag(self, update: VolumeTagUpdate) -> None:
        self.connection.call("POST", "/v1/volume-tags", update.to_json())


def public_secret(url: str, config: ClientConfig, session: str, secret: str, fmt: str | None) -> bytes:
    """A secret its session marks ``export_public``, read without an owner identity."""
    query = f"session={quote(session, safe='')}&secret={quote(secret, safe='')}"
    if fmt:
        query += f"&format={quote(fmt, safe='')}"
    answer = CasConnection(url, config.pin(url).ca_certificate).call("GET", f"/v1/public?{query}")
    return unb64(answer.get("value"), "value")


def enrol_owner(url: str, config: ClientConfig, token: str | None = None) -> str:
    """The owner certificate for ``url``: the stored one, or a new one from the CAS, which
    issues it to admitted owners (or, with the bootstrap ``token``, to a new administrator)."""
    return enrol(url, config, token)[0] if token is not None else _stored_or_enrolled(url, config)


def _stored_or_enrolled(url: str, config: ClientConfig) -> str:
    certificate = config.pin(url).owner_certificate
    return certificate if certificate is not None else enrol(url, config)[0]


def enrol(url: str, config: ClientConfig, token: str | None = None) -> tuple[str, list[str]]:
    """Ask the CAS for an owner certificate (with the bootstrap ``token`` if given); keep
    it in the pin. Returns (certificate, roles)."""
    pin = config.pin(url)
    key = config.owner_key()
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "veil owner")]))
        .sign(key, hashes.SHA256())
    )
    body = {"csr": csr.public_bytes(Encoding.PEM).decode()} | ({"token": token} if token is not None else {})
    answer = CasConnection(url, pin.ca_certificate).call("POST", "/v1/owners", body)
    pin.owner_certificate = str(answer["certificate"])
    config.save()
    return pin.owner_certificate, [str(r) for r in answer.get("roles", [])]


class OwnerClient:
    """Owner actions on a pinned CAS, authenticated with the owner's client certificate."""

    def __init__(self, url: str, config: ClientConfig) -> None:
        certificate = enrol_owner(url, config)
        key_pem = config.owner_key().private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        self.url = url
        self.connection = CasConnection(url, config.pin(url).ca_certificate, (certificate.encode(), key_pem))

    def create_session(self, text: str) -> dict[str, Any]:
        result: dict[str, Any] = self.connection.call("POST", "/v1/sessions", {"text": text})
        return result

    def update_session(self, text: str, approvals: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"text": text, "approvals": approvals or []}
        result: dict[str, Any] = self.connection.call("PUT", "/v1/sessions", body)
        return result

    def session_versions(self, name: str, digest: str | None = None) -> list[dict[str, Any]]:
        query = f"name={quote(name, safe='')}" + (f"&hash={quote(digest, safe='')}" if digest else "")
        return list(self.connection.call("GET", f"/v1/sessions/versions?{query}")["versions"])

    def get_session(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.connection.call("GET", f"/v1/sessions?name={quote(name, safe='')}")
        return result

    def volume_tag(self, session: str, volume: str) -> str | None:
        """The tag the CAS holds for a volume of a session you may read (None: none yet)."""
        query = f"session={quote(session, safe='')}&volume={quote(volume, safe='')}"
        tag = self.connection.call("GET", f"/v1/volume-tags?{query}").get("tag")
        return None if tag is None else str(tag)

    def list_sessions(self) -> list[str]:
        return [str(n) for n in self.connection.call("GET", "/v1/sessions")["sessions"]]

    def register_platform(self, public_key: bytes, name: str = "") -> str:
        body = {"kind": "sim", "public_key": b64(public_key), "name": name}
        return str(self.connection.call("POST", "/v1/platforms", body)["platform_id"])

    def list_platforms(self) -> list[dict[str, Any]]:
        return list(self.connection.call("GET", "/v1/platforms")["platforms"])

    def remove_platform(self, platform_id: str) -> None:
        self.connection.call("DELETE", f"/v1/platforms/{quote(platform_id, safe='')}")

    def list_owners(self) -> list[dict[str, Any]]:
        return list(self.connection.call("GET", "/v1/owners")["owners"])

    def set_owner_roles(self, owner: str, roles: list[str]) -> dict[str, Any]:
        result: dict[str, Any] = self.connection.call(
            "PUT", f"/v1/owners/{quote(owner, safe='')}", {"roles": roles}
        )
        return result

    def remove_owner(self, owner: str) -> None:
        self.connection.call("DELETE", f"/v1/owners/{quote(owner, safe='')}")

    def audit_export(self) -> dict[str, Any]:
        result: dict[str, Any] = self.connection.call("GET", "/v1/audit")
        return result


__all__ = ["CasConnection", "CasNotTrusted", "CasRequestFailed", "HttpCasClient", "OwnerClient"]
