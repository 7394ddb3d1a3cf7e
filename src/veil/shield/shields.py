"""Shield proxies on one asyncio loop in a background thread of the runtime."""

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from veil.crypto import tls
from veil.crypto.tls import load_chain_in_memory
from veil.errors import VeilError
from veil.policy.model import Network, ShieldClient, ShieldServer, trusted_ca_secret
from veil.shield.relay import Side


class ShieldError(VeilError):
    """A shield cannot start (address in use, bad address) or was misconfigured."""


@dataclass(frozen=True)
class TlsIdentity:
    """The runtime's TLS identity: instance certificate and key, and the session CA; and the
    PEM material of the policy secrets its shields name (``NAME:chain``, ``NAME:key``,
    ``NAME:crt``, from the configuration bundle)."""

    certificate_pem: bytes
    key_pem: bytes = field(repr=False)
    ca_pem: bytes
    secrets: Mapping[str, bytes] = field(default_factory=dict, repr=False)

    def _secret(self, name: str, fmt: str) -> bytes:
        try:
            return self.secrets[f"{name}:{fmt}"]
        except KeyError:
            raise ShieldError(f"the configuration carries no {fmt} of secret '{name}'") from None

    def _present(self, context: ssl.SSLContext, identity: str) -> None:
        if identity == "instance":
            load_chain_in_memory(context, self.certificate_pem, self.key_pem)
        else:
            load_chain_in_memory(context, self._secret(identity, "chain"), self._secret(identity, "key"))

    def _trust(self, context: ssl.SSLContext, auth: str) -> None:
        ca = trusted_ca_secret(auth)
        if ca is None:
            context.load_verify_locations(cadata=self.ca_pem.decode("ascii"))
        else:
            # the named CA is the trust anchor even when it is not self-signed (issued by the
            # session CA or another CA secret): trusting its issuer would widen the circle
            context.load_verify_locations(cadata=self._secret(ca, "crt").decode("ascii"))
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN

    def server_context(self, spec: ShieldServer) -> ssl.SSLContext:
        context = tls.server_context()
        self._present(context, spec.identity)
        if spec.client_auth == "none":
            context.verify_mode = ssl.CERT_NONE
        else:
            self._trust(context, spec.client_auth)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def client_context(self, spec: ShieldClient) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the name
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        self._present(context, spec.identity)
        self._trust(context, spec.server_auth)
        return context


def split_address(address: str) -> tuple[str, int] | str:
    """(host, port), or a unix socket path."""
    if address.startswith("unix:"):
        return address[len("unix:") :]
    host, _, port = address.rpartition(":")
    # ":PORT" means every interface: a server shield is what remote clients reach
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104


async def _connect(
    loop: asyncio.AbstractEventLoop,
    live: set[Side],
    address: str,
    context: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> Side:
    target = split_address(address)
    if isinstance(target, str):
        _, side = await loop.create_unix_connection(
            lambda: Side(live), target, ssl=context, server_hostname=server_name
        )
    else:
        _, side = await loop.create_connection(
            lambda: Side(live), target[0], target[1], ssl=context, server_hostname=server_name
        )
    return side


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (measured faster, docs/benchmarks.md), else asyncio's own loop."""
    try:
        import uvloop  # noqa: PLC0415

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


class ShieldSet:
    """All shields of a service; ``start`` returns once every listener is bound."""

    def __init__(self, network: Network, identity: TlsIdentity) -> None:
        self.network = network
        self.identity = identity
        self._loop = _new_loop()
        self._servers: list[asyncio.AbstractServer] = []
        self._live: set[Side] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="veil-shield", daemon=True)
        self.connections = 0
        self.refused = 0

    def start(self) -> None:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start_all(), self._loop)
        try:
            future.result(timeout=30)
        except ShieldError:
            self.stop()
            raise
        except ssl.SSLError as exc:
            self.stop()
            raise ShieldError(f"a shield's certificate, key or CA is unusable: {exc}") from None
        except OSError as exc:
            self.stop()
            raise ShieldError(f"a shield cannot listen: {exc.strerror or exc}") from None

    async def _start_all(self) -> None:
        for server in self.network.servers:
            self._servers.append(
                await self._listen(
                    server.listen, self._server_handler(server), self.identity.server_context(server)
                )
            )
        for client in self.network.clients:
            self._servers.append(await self._listen(client.listen, self._client_handler(client), None))

    async def _listen(
        self, address: str, on_made: Callable[[Side], None], context: ssl.SSLContext | None
    ) -> asyncio.AbstractServer:
        def accepted() -> Side:
            side = Side(self._live)
            side.on_made = on_made
            return side

        target = split_address(address)
        if isinstance(target, str):
            return await self._loop.create_unix_server(accepted, target, ssl=context)
        return await self._loop.create_server(accepted, target[0], target[1], ssl=context, reuse_address=True)

    def _attach(self, accepted: Side, upstream: Awaitable[Side]) -> None:
        """Connect the other side of ``accepted``, then relay; a failed connection closes
        ``accepted`` (and counts as refused)."""

        async def attach() -> None:
            try:
                accepted.link(await upstream)
            except (OSError, ssl.SSLError):
                self.refused += 1
                accepted.close()

        self.connections += 1
        task = self._loop.create_task(attach())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _server_handler(self, spec: ShieldServer) -> Callable[[Side], None]:
        # asyncio completes the TLS handshake (and the client certificate check) before the
        # protocol hears of the connection: a refused peer never reaches the program.
        return lambda accepted: self._attach(accepted, _connect(self._loop, self._live, spec.forward))

    def _client_handler(self, spec: ShieldClient) -> Callable[[Side], None]:
        context = self.identity.client_context(spec)
        return lambda accepted: self._attach(
            accepted,
            _connect(self._loop, self._live, spec.connect, context, spec.server_name),
        )

    def stop(self) -> None:
        async def close_all() -> None:
            for server in self._servers:
                server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for side in list(self._live):
                if side.transport is not None:
                    side.transport.abort()
            for server in self._servers:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 5)

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()
