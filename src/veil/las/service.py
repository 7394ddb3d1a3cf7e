"""``veil las serve``: the node's sim quoting service on a unix socket (or loopback TCP).

It holds the node's sim platform key (created on first start) and signs sim evidence for
any local runtime that asks: in sim mode nothing on the node is protected, so the socket's
file permissions (0660, root) are the only gate. Routes: GET /v1/platform, POST /v1/evidence.
"""

import asyncio
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import uvloop
from aiohttp import web

from veil.crypto import PlatformSigningKey
from veil.protocol import b64
from veil.tee import SimEvidenceSource


def build_app(key: PlatformSigningKey) -> web.Application:
    source = SimEvidenceSource(key)

    async def platform(request: web.Request) -> web.Response:
        return web.json_response(
            {"platform_id": key.key_id, "public_key": b64(key.public_bytes), "sim": True},
            headers={"Veil-Sim": "true"},
        )

    async def evidence(request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
            report_data = bytes.fromhex(body["report_data"])
            measurement = str(body["measurement"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "expected {report_data: hex, measurement}"}, status=400)
        if len(report_data) != 64:
            return web.json_response({"error": "report_data must be 64 bytes"}, status=400)
        made = source.collect(report_data, measurement)
        return web.json_response(
            {"platform": made.platform, "data": b64(made.data)}, headers={"Veil-Sim": "true"}
        )

    app = web.Application()
    app.router.add_get("/v1/platform", platform)
    app.router.add_post("/v1/evidence", evidence)
    return app


def serve_las(
    key: PlatformSigningKey,
    socket_path: Path | None,
    listen: tuple[str, int] | None,
    ready: Callable[[str], None],
) -> None:
    async def main() -> None:
        runner = web.AppRunner(build_app(key), access_log=None, handle_signals=False)
        await runner.setup()
        where = []
        if socket_path is not None:
            socket_path.parent.mkdir(parents=True, exist_ok=True)
            socket_path.unlink(missing_ok=True)
            await web.UnixSite(runner, str(socket_path)).start()
            os.chmod(socket_path, 0o660)
            where.append(f"unix:{socket_path}")
        if listen is not None:
            await web.TCPSite(runner, listen[0], listen[1]).start()
            where.append(f"http://{listen[0]}:{listen[1]}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(number, stop.set)
        ready(", ".join(where))
        try:
            await stop.wait()
        finally:
            await runner.cleanup()
            if socket_path is not None:
                socket_path.unlink(missing_ok=True)

    uvloop.run(main())
