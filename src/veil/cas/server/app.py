"""HTTP handlers of the network CAS (docs/cas-api.md, openapi.yaml): thin, over ``Cas``.

Each handler parses JSON, calls one use case and maps its result or error to a response.
Every route declares who may call it (``Access``), and the middleware enforces that before
the handler runs: principals present a client certificate the CAS issued (POST /v1/owners)
and must be admitted with the route's role; runtimes need no TLS client identity, since
evidence and instance-key signatures authenticate them.
"""

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Any

import yaml
from aiohttp import web
from cryptography import x509

from veil import __version__
from veil.cas.audit import AuditChainBroken
from veil.cas.errors import (
    AccessDenied,
    Conflict,
    NotFound,
    PredecessorMismatch,
    StorageCorrupted,
    VolumeTagRefused,
)
from veil.cas.identity import CasIdentity, EnrolmentRefused, owner_from_csr, owner_id
from veil.cas.principals import Principal, PrincipalRefused, Role, check_owner_id
from veil.cas.replicas import JoinRequest, grant_join
from veil.cas.server.limits import BODY_TIMEOUT, PARSE_TIMEOUT, parse_json_body
from veil.cas.server.metrics import CasMetrics
from veil.cas.service import Cas, parse_submitted
from veil.cas.sharing import SessionRecord
from veil.errors import VeilError
from veil.policy import PolicyError
from veil.policy.governance import Approval
from veil.protocol import (
    NONCE_LEN,
    AttestationRefused,
    AttestationRequest,
    EvidenceSource,
    ProtocolError,
    VolumeTagUpdate,
    b64,
    cas_report_data,
    unb64,
)
from veil.tee.ear import ResultSigner

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Access(StrEnum):
    """Who may call a route (``x-veil-access`` in openapi.yaml)."""

    #: no credential: health, identity, the CAS's evidence, public secrets, enrolment requests
    ANYONE = "anyone"
    #: no credential either: the request is authenticated by evidence or an instance key
    RUNTIME = "runtime"
    #: any admitted principal (what it sees depends on its roles)
    PRINCIPAL = "principal"
    OWNER = "owner"
    ADMIN = "admin"


_ROLE_OF = {Access.OWNER: Role.OWNER, Access.ADMIN: Role.ADMIN}


NO_RECOVERY_KEY = (
    "no recovery key is set: if every node that can unseal the master key is lost, every secret and "
    "volume key of this CAS is lost with it; start once with --recovery-key FILE.pub "
    "(`veil cas recovery keygen`)"
)


@dataclass(frozen=True)
class CasSelf:
    """What the CAS says about itself: identity, measurement, and how it proves them."""

    identity: CasIdentity
    measurement: str
    evidence: EvidenceSource
    #: sim only: the key that signs the CAS's own sim evidence (proves nothing but consistency)
    platform_public_key: bytes | None
    #: whether the database holds the master key encrypted to an owners' recovery key
    recovery_key: bool = True
    #: when the certificates it presents expire (POSIX time), by name ("ca", "server")
    expiry: dict[str, float] = field(default_factory=dict)


#: request key of extra log fields a handler adds (session, config id, volume)
LOG_FIELDS = "veil.log"
#: routes a load balancer or Prometheus polls: logged at debug level when they succeed
_PROBES = {"/healthz", "/readyz", "/metrics"}
_ERROR_CHARS = 300
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _request_id(request: web.Request) -> str:
    """The caller's X-Request-Id when it is a plain token, else a new one."""
    given = request.headers.get("X-Request-Id", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


class _Fail(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.body = body


def openapi_document() -> dict[str, Any]:
    text = resources.files("veil.cas.server").joinpath("openapi.yaml").read_text()
    document: dict[str, Any] = yaml.safe_load(text)
    return document


def _status_of(exc: VeilError) -> int:
    if isinstance(exc, PrincipalRefused):
        return 403
    if isinstance(exc, PolicyError):
        return 422
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, AccessDenied | AttestationRefused):
        return 403
    if isinstance(exc, Conflict | PredecessorMismatch | VolumeTagRefused):
        return 409
    return 400


class CasApp:
    def __init__(self, cas: Cas, me: CasSelf, open_enrolment: bool = False) -> None:
        self.cas = cas
        self.me = me
        #: anyone may enrol an owner key and becomes an owner (development only)
        self.open_enrolment = open_enrolment
        cas.result_signer = ResultSigner(me.identity.ca.key, me.identity.digest)
        self.metrics = CasMetrics(lambda: len(cas.records.keys("session")), cas.sim_mode, me.expiry)
        self._owners: dict[bytes, str] = {}
        self._openapi = json.dumps(openapi_document()).encode()
        self._access: dict[tuple[str, str], Access] = {}
        #: parses submitted sessions off the event loop (docs/cas-api.md, "Limits")
        self._parser = ThreadPoolExecutor(max_workers=2, thread_name_prefix="veil-cas-parse")

    def close(self) -> None:
        """Close this process's store connection."""
        self._parser.shutdown(wait=False, cancel_futures=True)
        self.cas.records.store.close()

    # -- plumbing -----------------------------------------------------------------------

    def routes(self) -> list[tuple[str, str, Handler, Access]]:
        """Every route with who may call it; the middleware enforces the access."""
        return [
            ("GET", "/healthz", self.healthz, Access.ANYONE),
            ("GET", "/readyz", self.readyz, Access.ANYONE),
            ("GET", "/metrics", self.metrics_page, Access.ANYONE),
            ("GET", "/v1/openapi.json", self.openapi, Access.ANYONE),
            ("GET", "/v1/cas", self.cas_info, Access.ANYONE),
            ("GET", "/v1/.well-known/jwks.json", self.jwks, Access.ANYONE),
            ("POST", "/v1/cas/evidence", self.cas_evidence, Access.ANYONE),
            ("POST", "/v1/owners", self.enrol, Access.ANYONE),
            ("GET", "/v1/owners", self.owners_list, Access.ADMIN),
            ("PUT", "/v1/owners/{owner}", self.owner_set, Access.ADMIN),
            ("DELETE", "/v1/owners/{owner}", self.owner_remove, Access.ADMIN),
            ("POST", "/v1/nonces", self.nonce, Access.RUNTIME),
            ("GET", "/v1/launch", self.launch, Access.RUNTIME),
            ("POST", "/v1/attest", self.attest, Access.RUNTIME),
            ("POST", "/v1/volume-tags", self.volume_tag, Access.RUNTIME),
            ("GET", "/v1/volume-tags", self.volume_tag_get, Access.OWNER),
            ("POST", "/v1/replicas/join", self.replica_join, Access.RUNTIME),
            ("GET", "/v1/sessions", self.sessions_get, Access.OWNER),
            ("POST", "/v1/sessions", self.session_create, Access.OWNER),
            ("PUT", "/v1/sessions", self.session_update, Access.OWNER),
            ("GET", "/v1/sessions/versions", self.session_versions, Access.OWNER),
            ("GET", "/v1/platforms", self.platforms_list, Access.OWNER),
            ("POST", "/v1/platforms", self.platform_add, Access.ADMIN),
            ("DELETE", "/v1/platforms/{platform_id}", self.platform_remove, Access.ADMIN),
            ("GET", "/v1/audit", self.audit, Access.PRINCIPAL),
            ("GET", "/v1/public", self.public_secret, Access.ANYONE),
        ]

    def build(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=4 << 20)
        for method, path, handler, access in self.routes():
            app.router.add_route(method, path, handler)
            self._access[(method, path)] = access
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = _request_id(request)
        request[LOG_FIELDS] = {}
        error: str | None = None
        try:
            self._admit(request)
            response = await handler(request)
        except _Fail as fail:
            response = self._json(fail.body, fail.status)
            error = str(fail.body.get("error", ""))
        except PolicyError as exc:
            response = self._json(
                {"error": "the session is not valid", "problems": [str(p) for p in exc.problems]}, 422
            )
            error = f"the session is not valid ({len(exc.problems)} problems)"  # problems may quote values
        except VeilError as exc:
            response = self._json({"error": str(exc)}, _status_of(exc))
            error = str(exc)
            if isinstance(exc, AuditChainBroken | StorageCorrupted):
                self.metrics.integrity_errors.labels(type(exc).__name__).inc()
        except web.HTTPException as exc:
            response = self._json({"error": exc.reason}, exc.status)
            error = exc.reason
        except Exception:
            log.exception(
                "internal error on %s %s",
                request.method,
                request.path,
                extra={"fields": {"request_id": request_id}},
            )
            response = self._json({"error": "internal error (see the CAS log)"}, 500)
            error = "internal error"
        if self.cas.sim_mode:
            response.headers["Veil-Sim"] = "true"
        response.headers["X-Request-Id"] = request_id
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        elapsed = time.perf_counter() - started
        self.metrics.requests.labels(name, str(response.status)).observe(elapsed)
        self._log_request(request, request_id, name, response.status, elapsed, error)
        return response

    def _log_request(
        self,
        request: web.Request,
        request_id: str,
        route: str,
        status: int,
        elapsed: float,
        error: str | None,
    ) -> None:
        """One line per request (docs/operations.md, "Logs"): never a body, never a secret."""
        quiet = route in _PROBES and status < 400
        level = logging.DEBUG if quiet else logging.WARNING if status >= 500 else logging.INFO
        if not log.isEnabledFor(level):
            return
        principal = request.get("principal")
        fields: dict[str, Any] = {
            "request_id": request_id,
            "method": request.method,
            "route": route,
            "path": request.path,
            "status": status,
            "result": "ok" if status < 400 else "refused" if status in (401, 403) else "error",
            "duration_ms": round(elapsed * 1000, 2),
            "remote": request.remote or "",
        }
        if principal is not None:
            fields["owner"] = principal.owner
        fields.update(request[LOG_FIELDS])
        if error:
            fields["error"] = error[:_ERROR_CHARS]
        log.log(level, "request", extra={"fields": fields})

    def _json(self, body: dict[str, Any], status: int = 200) -> web.Response:
        return web.Response(body=json.dumps(body).encode(), status=status, content_type="application/json")

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            if request.content.is_eof():  # the whole body came with the head: no wait
                raw = await request.read()
            else:
                async with asyncio.timeout(BODY_TIMEOUT):
                    raw = await request.read()
        except TimeoutError:
            raise _Fail(
                408, {"error": f"the request body did not arrive within {BODY_TIMEOUT:g} s"}
            ) from None
        try:
            body = parse_json_body(raw)
        except ValueError as exc:
            raise _Fail(400, {"error": str(exc)}) from None
        if not isinstance(body, dict):
            raise _Fail(400, {"error": "the request body must be a JSON object"})
        return body

    @staticmethod
    def _text(body: dict[str, Any], name: str) -> str:
        value = body.get(name)
        if not isinstance(value, str):
            raise _Fail(400, {"error": f"field '{name}' is missing or not a string"})
        return value

    def _admit(self, request: web.Request) -> None:
        """Enforce the route's access: a principal with the route's role (401 without a
        client certificate, 403 when not admitted or without the role)."""
        resource = request.match_info.route.resource
        key = (request.method, resource.canonical) if resource is not None else None
        access = self._access.get(key) if key else None
        if access in (Access.PRINCIPAL, Access.OWNER, Access.ADMIN):
            owner = self._owner(request)
            role = _ROLE_OF.get(access)
            principal = (
                self.cas.principals.require(owner, role) if role is not None else self._any_principal(owner)
            )
            request["principal"] = principal

    def _any_principal(self, owner: str) -> Principal:
        principal = self.cas.principals.get(owner)
        if principal is None:
            return self.cas.principals.require(owner, Role.OWNER)  # raises, saying how to be admitted
        return principal

    @staticmethod
    def _principal(request: web.Request) -> Principal:
        principal: Principal = request["principal"]
        return principal

    def _caller(self, request: web.Request) -> str:
        return self._principal(request).owner

    def _owner(self, request: web.Request) -> str:
        """The authenticated owner id: the key hash of the client certificate, or 401."""
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not der:
            raise _Fail(
                401,
                {"error": "this API needs an owner client certificate (veil enrols one on first use)"},
            )
        owner = self._owners.get(der)
        if owner is None:
            public_key = x509.load_der_x509_certificate(der).public_key()
            owner = owner_id(public_key)  # type: ignore[arg-type]
            if len(self._owners) > 10_000:
                self._owners.clear()
            self._owners[der] = owner
        return owner

    # -- health, metrics, documents ------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return self._json({"status": "ok", "sim": self.cas.sim_mode})

    async def readyz(self, request: web.Request) -> web.Response:
        try:
            self.cas.records.keys("audit-head")
        except Exception as exc:  # the store is down, whatever the driver raises
            return self._json({"error": f"store not ready: {type(exc).__name__}"}, 503)
        warnings = [] if self.me.recovery_key else [NO_RECOVERY_KEY]
        answer = {"status": "ready", "sim": self.cas.sim_mode, "recovery_key": self.me.recovery_key}
        return self._json({**answer, "warnings": warnings})

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.render(), content_type="text/plain")

    async def openapi(self, request: web.Request) -> web.Response:
        return web.Response(body=self._openapi, content_type="application/json")

    # -- the CAS itself ------------------------------------------------------------------

    def _identity_fields(self) -> dict[str, Any]:
        return {
            "ca_certificate": self.me.identity.certificate_pem,
            "identity": self.me.identity.digest,
            "measurement": self.me.measurement,
            "sim": self.cas.sim_mode,
        }

    async def cas_info(self, request: web.Request) -> web.Response:
        return self._json({**self._identity_fields(), "version": __version__})

    async def cas_evidence(self, request: web.Request) -> web.Response:
        nonce = unb64((await self._body(request)).get("nonce"), "nonce")
        if len(nonce) != NONCE_LEN:
            raise ProtocolError(f"the nonce must be {NONCE_LEN} bytes")
        report_data = cas_report_data(nonce, self.me.identity.digest, self.me.measurement)
        evidence = self.me.evidence.collect(report_data, self.me.measurement)
        body = {
            **self._identity_fields(),
            "evidence": {"platform": evidence.platform, "data": b64(evidence.data)},
        }
        if self.me.platform_public_key is not None:
            body["platform_public_key"] = b64(self.me.platform_public_key)
        return self._json(body)

    async def enrol(self, request: web.Request) -> web.Response:
        """A client certificate for an admitted owner key; the bootstrap token admits its
        holder as an administrator; ``--open-enrolment`` admits anyone as an owner."""
        body = await self._body(request)
        try:
            owner, public_key = owner_from_csr(self._text(body, "csr"))
        except EnrolmentRefused as exc:
            raise _Fail(422, {"error": str(exc)}) from None
        token = body.get("token")
        if token is not None:
            if not isinstance(token, str):
                raise _Fail(400, {"error": "field 'token' must be a string"})
            principal = self.cas.principals.redeem_bootstrap_token(token, owner)
        else:
            found = self.cas.principals.get(owner)
            if found is None and self.open_enrolment:
                found = self.cas.principals.set_roles(owner, [Role.OWNER], "open-enrolment")
            principal = found or self.cas.principals.require(owner, Role.OWNER)
        certificate = self.me.identity.issue_owner_certificate(public_key)
        return self._json({"owner": owner, "certificate": certificate, "roles": sorted(principal.roles)}, 201)

    # -- principals (administrators) -----------------------------------------------------

    async def owners_list(self, request: web.Request) -> web.Response:
        return self._json({"owners": [p.to_json() for p in self.cas.principals.all()]})

    async def owner_set(self, request: web.Request) -> web.Response:
        owner = check_owner_id(request.match_info["owner"])
        roles = (await self._body(request)).get("roles")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise _Fail(400, {"error": "field 'roles' must be a list of role names"})
        principal = self.cas.principals.set_roles(owner, roles, self._caller(request))
        return self._json(principal.to_json())

    async def owner_remove(self, request: web.Request) -> web.Response:
        owner = check_owner_id(request.match_info["owner"])
        self.cas.principals.remove(owner, self._caller(request))
        return web.Response(status=204)

    # -- runtimes ------------------------------------------------------------------------

    async def nonce(self, request: web.Request) -> web.Response:
        return self._json({"nonce": b64(self.cas.new_nonce())}, 201)

    async def launch(self, request: web.Request) -> web.Response:
        config_id = request.query.get("config_id")
        if not config_id:
            raise _Fail(400, {"error": "query parameter config_id=SESSION/SERVICE is required"})
        request[LOG_FIELDS]["config_id"] = config_id
        launch = self.cas.launch_descriptor(config_id)
        return self._json({"config_id": config_id, **launch.to_json(), "sim": self.cas.sim_mode})

    async def jwks(self, request: web.Request) -> web.Response:
        """The key that signs attestation results (EARs): the CAS identity key."""
        assert self.cas.result_signer is not None
        return self._json(self.cas.result_signer.jwks())

    async def attest(self, request: web.Request) -> web.Response:
        attestation = AttestationRequest.from_json(await self._body(request))
        request[LOG_FIELDS]["config_id"] = attestation.config_id
        try:
            grant = self.cas.attest(attestation)
        except AttestationRefused as exc:
            self.metrics.attestations.labels("refuse").inc()
            raise _Fail(403, {"error": str(exc), "reason": exc.reason}) from None
        self.metrics.attestations.labels("grant").inc()
        return self._json(grant.to_json())

    async def replica_join(self, request: web.Request) -> web.Response:
        join = JoinRequest.from_json(await self._body(request))
        try:
            sealed = grant_join(self.cas, self.me.measurement, self.me.platform_public_key, join)
        except VeilError:
            self.metrics.replica_joins.labels("refuse").inc()
            raise
        self.metrics.replica_joins.labels("grant").inc()
        return self._json({"master_key": b64(sealed)})

    async def volume_tag(self, request: web.Request) -> web.Response:
        update = VolumeTagUpdate.from_json(await self._body(request))
        request[LOG_FIELDS].update(config_id=update.config_id, volume=update.volume)
        self.cas.push_volume_tag(update)
        return web.Response(status=204)

    # -- owners --------------------------------------------------------------------------

    async def volume_tag_get(self, request: web.Request) -> web.Response:
        session, volume = request.query.get("session"), request.query.get("volume")
        if not session or not volume:
            raise _Fail(400, {"error": "query parameters session=SESSION and volume=VOLUME are required"})
        request[LOG_FIELDS].update(session=session, volume=volume)
        tag = self.cas.volume_tag_for_reader(session, volume, self._caller(request))
        return self._json({"session": session, "volume": volume, "tag": tag, "sim": self.cas.sim_mode})

    def _session_info(self, record: SessionRecord) -> dict[str, Any]:
        return {
            "name": record.name,
            "hash": record.hash,
            "revision": record.revision,
            "creator": record.creator,
            "sim": self.cas.sim_mode,
        }

    async def sessions_get(self, request: web.Request) -> web.Response:
        owner = self._caller(request)
        name = request.query.get("name")
        if name is None:
            return self._json({"sessions": self.cas.list_sessions(owner)})
        record = self.cas.get_session(name, owner)
        return self._json(
            {
                **self._session_info(record),
                "text": record.text,
                "session_ca": self.cas.session_ca_pem(name, owner),
            }
        )

    async def _parsed(self, text: str) -> None:
        """Parse a submitted session in a worker thread, within PARSE_TIMEOUT, so that no
        document stalls the event loop; the use case then finds the result cached."""
        future = asyncio.get_running_loop().run_in_executor(self._parser, parse_submitted, text, "<session>")
        try:
            await asyncio.wait_for(future, PARSE_TIMEOUT)
        except TimeoutError:
            raise _Fail(
                413,
                {"error": f"the session took longer than {PARSE_TIMEOUT:g} s to parse; a session is small"},
            ) from None

    async def session_create(self, request: web.Request) -> web.Response:
        owner = self._caller(request)
        text = self._text(await self._body(request), "text")
        await self._parsed(text)
        record = self.cas.create_session(text, owner)
        request[LOG_FIELDS]["session"] = record.name
        return self._json({**self._session_info(record), "warnings": self.cas.sharing_warnings(record)}, 201)

    async def session_update(self, request: web.Request) -> web.Response:
        owner = self._caller(request)
        body = await self._body(request)
        approvals = body.get("approvals", [])
        if not isinstance(approvals, list):
            raise _Fail(400, {"error": "field 'approvals' must be a list"})
        text = self._text(body, "text")
        await self._parsed(text)
        record = self.cas.update_session(text, owner, approvals=[Approval.from_json(a) for a in approvals])
        request[LOG_FIELDS]["session"] = record.name
        return self._json({**self._session_info(record), "warnings": self.cas.sharing_warnings(record)})

    async def session_versions(self, request: web.Request) -> web.Response:
        owner = self._caller(request)
        name = request.query.get("name")
        if not name:
            raise _Fail(400, {"error": "query parameter name=SESSION is required"})
        wanted = request.query.get("hash")
        versions = self.cas.session_history(name, owner)
        if wanted is not None:
            versions = [v for v in versions if v.hash == wanted]
            if not versions:
                raise _Fail(404, {"error": f"session '{name}' has no version {wanted}"})
        rows = [
            {"hash": v.hash, "revision": v.revision, "time": v.time, "by": v.by}
            | ({"text": v.text} if wanted is not None else {})
            for v in versions
        ]
        return self._json({"name": name, "versions": rows, "sim": self.cas.sim_mode})

    async def platforms_list(self, request: web.Request) -> web.Response:
        return self._json({"platforms": self.cas.platforms(), "sim": self.cas.sim_mode})

    async def platform_add(self, request: web.Request) -> web.Response:
        owner = self._caller(request)
        body = await self._body(request)
        if body.get("kind") != "sim":
            raise _Fail(
                400, {"error": "only sim platforms are registered; hardware is verified by its vendor chain"}
            )
        public_key = unb64(body.get("public_key"), "public_key")
        if len(public_key) != 32:
            raise _Fail(400, {"error": "a sim platform key is a 32-byte Ed25519 public key"})
        name = body.get("name", "")
        if not isinstance(name, str) or len(name) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise _Fail(
                400, {"error": "field 'name' must be text of at most 200 characters, no control ones"}
            )
        return self._json({"platform_id": self.cas.register_sim_platform(public_key, owner, name)}, 201)

    async def platform_remove(self, request: web.Request) -> web.Response:
        platform_id = request.match_info["platform_id"]
        self.cas.remove_platform(platform_id, self._caller(request))
        return web.Response(status=204)

    async def public_secret(self, request: web.Request) -> web.Response:
        """A secret its session marks export_public: no authentication."""
        session, secret = request.query.get("session"), request.query.get("secret")
        if not session or not secret:
            raise _Fail(400, {"error": "query parameters session=NAME and secret=NAME are required"})
        fmt = request.query.get("format")
        value = self.cas.public_secret(session, secret, fmt)
        return self._json(
            {"session": session, "secret": secret, "value": b64(value), "sim": self.cas.sim_mode}
        )

    async def audit(self, request: web.Request) -> web.Response:
        """Administrators and auditors read the whole log; an owner the entries of the
        sessions it may read (a filtered view)."""
        principal = self._principal(request)
        if principal.has(Role.AUDITOR):
            return self._json(self.cas.audit.export(self.me.identity.sign))
        return self._json(self.cas.audit_for(principal.owner, self.me.identity.sign))


__all__ = ["CasApp", "CasSelf", "openapi_document"]
