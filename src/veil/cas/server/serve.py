"""Run the CAS API (or the recovery API) on an address (uvloop, one process)."""

import asyncio
import signal
import ssl
from collections.abc import Callable

import uvloop
from aiohttp import web

from veil.cas.server.app import CasApp


def run_site(
    app: web.Application,
    context: ssl.SSLContext,
    host: str,
    port: int,
    ready: Callable[[str], None],
    finished: asyncio.Event | None = None,
) -> bool:
    """Serve ``app`` until SIGINT/SIGTERM (False) or until ``finished`` is set (True);
    ``ready`` is called with the URL once listening."""

    async def main() -> bool:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=context, backlog=1024, reuse_address=True)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, stop.set)
        bound = runner.addresses[0][1]
        ready(f"https://{host if ':' not in host else f'[{host}]'}:{bound}")
        waiting = [asyncio.ensure_future(stop.wait())]
        if finished is not None:
            waiting.append(asyncio.ensure_future(finished.wait()))
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiting:
                task.cancel()
            for number in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(number)
            await runner.cleanup()
        return not stop.is_set()

    return uvloop.run(main())


def serve(app: CasApp, host: str, port: int, host_names: list[str], ready: Callable[[str], None]) -> None:
    """Serve the CAS API until a termination signal."""
    run_site(app.build(), app.me.identity.server_context(host_names), host, port, ready)
