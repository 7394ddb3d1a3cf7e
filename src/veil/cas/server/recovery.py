"""Recovery mode: a CAS that cannot obtain its master key serves only what an owner needs
to restore it with the recovery key (docs/cas-storage.md, "Recovery").

TLS uses a throw-away certificate: trust comes from the evidence, which binds the
ephemeral key the master key is encrypted to.
"""

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

from veil.cas.custody import RECOVERY_DOMAIN, Custody, transfer_info, transfer_report_data
from veil.cas.errors import MasterKeyError
from veil.cas.identity import CasIdentity
from veil.cas.server.serve import run_site
from veil.crypto import AeadKey, BundleKeyPair, DecryptionFailed, open_to_key
from veil.crypto.x509ca import CertificateAuthority
from veil.errors import VeilError
from veil.protocol import NONCE_LEN, EvidenceSource, b64, unb64

log = logging.getLogger(__name__)

_MAX_NONCES = 1024


class RecoveryApp:
    def __init__(
        self,
        custody: Custody,
        evidence: EvidenceSource,
        measurement: str,
        platform_public_key: bytes | None,
    ) -> None:
        self.custody = custody
        self.evidence = evidence
        self.measurement = measurement
        self.platform_public_key = platform_public_key
        self._keys = BundleKeyPair.generate()
        self._nonces: set[bytes] = set()
        #: set once an owner restored the key
        self.master: AeadKey | None = None

    def build(self, restored: asyncio.Event) -> web.Application:
        self._restored = restored
        app = web.Application(client_max_size=1 << 16)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_post("/v1/recovery/evidence", self.evidence_page)
        app.router.add_post("/v1/recovery", self.recover)
        return app

    @staticmethod
    def _json(body: dict[str, Any], status: int = 200) -> web.Response:
        return web.json_response(body, status=status)

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise MasterKeyError("the request body must be a JSON object")
        return body

    async def healthz(self, request: web.Request) -> web.Response:
        return self._json({"status": "ok", "state": "recovery"})

    async def readyz(self, request: web.Request) -> web.Response:
        return self._json({"state": "recovery"}, 503)

    async def evidence_page(self, request: web.Request) -> web.Response:
        try:
            nonce = unb64((await self._body(request)).get("nonce"), "nonce")
            if len(nonce) != NONCE_LEN:
                raise MasterKeyError(f"the nonce must be {NONCE_LEN} bytes")
        except VeilError as exc:
            return self._json({"error": str(exc)}, 400)
        recovery = self.custody.recovery()
        if recovery is None:
            return self._json({"error": "no recovery key was set for this database"}, 409)
        if len(self._nonces) >= _MAX_NONCES:  # anyone may ask: keep memory bounded
            self._nonces.pop()
        self._nonces.add(nonce)
        report_data = transfer_report_data(RECOVERY_DOMAIN, nonce, self._keys.public_bytes)
        evidence = self.evidence.collect(report_data, self.measurement)
        body: dict[str, Any] = {
            "state": "recovery",
            "public_key": b64(self._keys.public_bytes),
            "measurement": self.measurement,
            "evidence": {"platform": evidence.platform, "data": b64(evidence.data)},
            "recovery": recovery,
        }
        if self.platform_public_key is not None:
            body["platform_public_key"] = b64(self.platform_public_key)
        return self._json(body)

    async def recover(self, request: web.Request) -> web.Response:
        try:
            body = await self._body(request)
            nonce = unb64(body.get("nonce"), "nonce")
            sealed = unb64(body.get("master_key"), "master_key")
            if nonce not in self._nonces:
                raise MasterKeyError("unknown nonce: ask for evidence first (POST /v1/recovery/evidence)")
            try:
                master = AeadKey(open_to_key(sealed, self._keys, transfer_info(RECOVERY_DOMAIN, nonce)))
            except DecryptionFailed:
                raise MasterKeyError("the master key does not decrypt with this CAS's recovery key") from None
            self.custody.adopt(master)
        except VeilError as exc:
            log.warning("recovery refused: %s", exc)
            return self._json({"error": str(exc)}, 400)
        self.master = master
        self._restored.set()
        return self._json({"state": "restored"})


def wait_for_recovery(
    app: RecoveryApp, host: str, port: int, host_names: list[str], ready: Callable[[str], None]
) -> AeadKey | None:
    """Serve the recovery API until an owner restored the master key (returned) or a
    termination signal (None)."""
    restored = asyncio.Event()
    throwaway = CasIdentity(CertificateAuthority.create("veil CAS (recovery mode)"))
    if not run_site(app.build(restored), throwaway.server_context(host_names), host, port, ready, restored):
        return None
    return app.master
