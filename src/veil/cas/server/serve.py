"""Run the CAS API on an address until SIGINT/SIGTERM (uvloop, one process)."""

import asyncio
import signal
from collections.abc import Callable

import uvloop
from aiohttp import web

from veil.cas.server.app import CasApp


def serve(app: CasApp, host: str, port: int, host_names: list[str], ready: Callable[[str], None]) -> None:
    """Serve until a termination signal; ``ready`` is called with the URL once listening."""

    async def main() -> None:
        runner = web.AppRunner(app.build(), access_log=None, handle_signals=False)
        await runner.setup()
        context = app.me.identity.server_context(host_names)
        site = web.TCPSite(runner, host, port, ssl_context=context, backlog=1024, reuse_address=True)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, stop.set)
        bound = runner.addresses[0][1]
        ready(f"https://{host if ':' not in host else f'[{host}]'}:{bound}")
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    uvloop.run(main())
