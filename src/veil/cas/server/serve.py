"""Run the CAS API (or the recovery API) on an address: uvloop, one or several processes.

With several workers, every process listens on the same port (SO_REUSEPORT: the kernel
spreads connections over them) and has its own store connection; the first process is
also the supervisor. Workers die with it (PR_SET_PDEATHSIG, so a ``kill -9`` leaves no
orphan serving), and if a worker dies the whole CAS stops with an error rather than serve
on with fewer processes unnoticed. Metrics are shared through files (prometheus_client's
multiprocess mode) so /metrics counts every worker's requests.
"""

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Callable

import uvloop
from aiohttp import web

from veil.cas.server.app import CasApp
from veil.cas.server.guard import GuardedSite, PendingConnections
from veil.cas.server.limits import HEADER_TIMEOUT
from veil.cas.server.metrics import use_multiprocess_metrics
from veil.errors import VeilError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_STOP_GRACE = 10.0


class WorkerFailed(VeilError):
    """A CAS worker process could not start or died while serving."""


def _url(host: str, port: int) -> str:
    return f"https://{host if ':' not in host else f'[{host}]'}:{port}"


def run_site(
    app: web.Application,
    context: ssl.SSLContext,
    host: str,
    port: int,
    ready: Callable[[str], None],
    finished: asyncio.Event | None = None,
    sock: socket.socket | None = None,
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> bool:
    """Serve ``app`` until one of ``stop_signals`` (False) or until ``finished`` is set
    (True); ``ready`` is called with the URL once listening (on ``sock`` when given)."""

    async def main() -> bool:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=HEADER_TIMEOUT)
        await runner.setup()
        assert runner.server is not None
        PendingConnections(runner.server)
        site = GuardedSite(runner, sock or listening_socket(host, port, shared=False), context)
        await site.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for number in stop_signals:
            loop.add_signal_handler(number, stop.set)
        ready(_url(host, runner.addresses[0][1]))
        waiting = [asyncio.ensure_future(stop.wait())]
        if finished is not None:
            waiting.append(asyncio.ensure_future(finished.wait()))
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiting:
                task.cancel()
            for number in stop_signals:
                loop.remove_signal_handler(number)
            await runner.cleanup()
        return not stop.is_set()

    return uvloop.run(main())


def serve(
    build: Callable[[], CasApp],
    context: ssl.SSLContext,
    host: str,
    port: int,
    ready: Callable[[str], None],
    workers: int = 1,
) -> None:
    """Serve the CAS API until a termination signal, in ``workers`` processes; ``build``
    makes one process's app (and opens its store) after the fork."""
    if workers <= 1:
        _run_app(build, context, host, port, ready)
        return
    metrics_dir = tempfile.mkdtemp(prefix="veil-cas-metrics-")
    use_multiprocess_metrics(metrics_dir)
    try:
        _serve_workers(build, context, host, port, ready, workers)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _run_app(
    build: Callable[[], CasApp],
    context: ssl.SSLContext,
    host: str,
    port: int,
    ready: Callable[[str], None],
    sock: socket.socket | None = None,
    stop_signals: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM),
) -> None:
    """Build this process's app, serve it, close its store."""
    app = build()
    try:
        run_site(app.build(), context, host, port, ready, sock=sock, stop_signals=stop_signals)
    finally:
        app.close()


def listening_socket(host: str, port: int, shared: bool = True) -> socket.socket:
    """A listening TCP socket, non-blocking as the event loop needs it; ``shared``: other
    processes of this user may bind the port too (SO_REUSEPORT, for workers)."""
    info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(info[0], socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(info[4])
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _die_with(parent: int) -> None:
    """Have the kernel kill this process when ``parent`` exits (however it exits)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _worker(build: Callable[[], CasApp], context: ssl.SSLContext, host: str, port: int, ready_fd: int) -> int:
    def ready(url: str) -> None:
        os.write(ready_fd, b"1")
        os.close(ready_fd)

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which stops us
    try:
        _run_app(build, context, host, port, ready, listening_socket(host, port), (signal.SIGTERM,))
    except BaseException:
        log.exception("CAS worker %d failed", os.getpid())
        return 1
    return 0


def _serve_workers(
    build: Callable[[], CasApp],
    context: ssl.SSLContext,
    host: str,
    port: int,
    ready: Callable[[str], None],
    workers: int,
) -> None:
    sock = listening_socket(host, port)
    port = sock.getsockname()[1]
    parent = os.getpid()
    children: dict[int, int] = {}  # pid -> read end of its readiness pipe
    try:
        for _ in range(workers - 1):
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read_fd)
                sock.close()
                _die_with(parent)
                os._exit(_worker(build, context, host, port, write_fd))
            os.close(write_fd)
            children[pid] = read_fd
        for pid, read_fd in children.items():
            started = os.read(read_fd, 1)
            os.close(read_fd)
            if not started:
                raise WorkerFailed(f"CAS worker {pid} did not start (see the log above)")
    except BaseException:
        _stop(list(children))
        raise
    exits: dict[int, int] = {}
    stopping = threading.Event()
    watcher = threading.Thread(target=_watch, args=(set(children), exits, stopping), daemon=True)
    watcher.start()
    try:
        _run_app(build, context, host, port, ready, sock)
    finally:
        stopping.set()
        _stop([pid for pid in children if pid not in exits])
        watcher.join(_STOP_GRACE)
    failed = {pid: status for pid, status in exits.items() if status != 0}
    if failed:
        raise WorkerFailed(
            "a CAS worker died while serving ("
            + ", ".join(f"process {pid}: status {status}" for pid, status in failed.items())
            + "); the CAS stopped"
        )


def _watch(children: set[int], exits: dict[int, int], stopping: threading.Event) -> None:
    """Reap workers; the first one that exits unasked stops the whole CAS (SIGTERM to self)."""
    while children:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return
        if pid not in children:
            continue
        children.discard(pid)
        exits[pid] = os.waitstatus_to_exitcode(status)
        if not stopping.is_set():
            log.error("CAS worker %d exited with status %d: stopping the CAS", pid, exits[pid])
            exits[pid] = exits[pid] or 1  # even a clean exit was not asked for
            os.kill(os.getpid(), signal.SIGTERM)


def _stop(pids: list[int]) -> None:
    """SIGTERM the workers, then SIGKILL whatever is left after a grace period."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + _STOP_GRACE
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break  # reaped by the watcher
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
