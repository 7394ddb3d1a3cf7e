"""Connections that have not sent a request yet: timeouts and caps (docs/cas-api.md, "Limits").

A TLS handshake has HANDSHAKE_TIMEOUT, a request head HEADER_TIMEOUT (aiohttp's keep-alive
timer, which also runs from the moment a connection opens); and at most
MAX_PENDING_PER_PEER connections of one peer address, MAX_PENDING in all, may be open
without having sent a complete request head. A connection over a cap is closed at once,
so a slow-header client exhausts neither file descriptors nor memory, and other clients,
``/healthz`` included, keep being served.
"""

import asyncio
import logging
import socket
import ssl
import time
from collections import Counter
from typing import Any

from aiohttp import web

from veil.cas.server.limits import HANDSHAKE_TIMEOUT, MAX_PENDING, MAX_PENDING_PER_PEER

log = logging.getLogger(__name__)

_WARN_EVERY = 10.0


class PendingConnections:
    """Counts the connections of one aiohttp ``web.Server`` until their first request.

    It wraps the server's ``connection_made``, ``connection_lost`` and ``request_factory``
    (public attributes every request handler calls), so it must be attached before the
    first connection is accepted.
    """

    def __init__(
        self, server: web.Server, per_peer: int = MAX_PENDING_PER_PEER, total: int = MAX_PENDING
    ) -> None:
        self.per_peer, self.total = per_peer, total
        self._pending: dict[int, str] = {}  # id(handler) -> peer address
        self._by_peer: Counter[str] = Counter()
        self._warned = 0.0
        made, lost, factory = server.connection_made, server.connection_lost, server.request_factory

        def connection_made(handler: Any, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self._opened(handler, transport)

        def connection_lost(handler: Any, exc: BaseException | None) -> None:
            self._settled(handler)
            lost(handler, exc)

        def request_factory(*args: Any) -> web.BaseRequest:
            self._settled(args[2])  # (message, payload, protocol, writer, task)
            return factory(*args)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign,assignment]
        server.request_factory = request_factory

    @property
    def count(self) -> int:
        return len(self._pending)

    def _opened(self, handler: Any, transport: asyncio.Transport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        if self._by_peer[address] >= self.per_peer or len(self._pending) >= self.total:
            now = time.monotonic()
            if now - self._warned > _WARN_EVERY:
                self._warned = now
                log.warning(
                    "closing a new connection from %s: %d connections of that address and %d in all "
                    "have not sent a request yet (limits %d and %d)",
                    address,
                    self._by_peer[address],
                    len(self._pending),
                    self.per_peer,
                    self.total,
                )
            transport.abort()
            return
        self._pending[id(handler)] = address
        self._by_peer[address] += 1

    def _settled(self, handler: Any) -> None:
        address = self._pending.pop(id(handler), None)
        if address is not None:
            self._by_peer[address] -= 1
            if not self._by_peer[address]:
                del self._by_peer[address]


class GuardedSite(web.BaseSite):
    """A site on a listening socket whose TLS handshakes time out (aiohttp's own sites
    leave asyncio's default of 60 s)."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, ssl_context: ssl.SSLContext) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._sock = sock

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"https://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server, sock=self._sock, ssl=self._ssl_context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
        )


__all__ = ["GuardedSite", "PendingConnections"]
