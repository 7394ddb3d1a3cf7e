"""Running the curated images (tests/curated.py) as a host would: converted with the
command docs/image.md gives, their session on a network CAS, started chrooted against a
LAS, probed until they serve. Shared by tests/e2e/test_curated_images.py and
bench/image.py."""

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psycopg
import yaml

from tests import curated
from tests.cas_server import CasServer, Owner, pinned_owner
from tests.conftest import veil
from tests.images import start_in_chroot, unpack
from tests.net import free_port

T = TypeVar("T")
POSTGRES = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@contextmanager
def las_server(home: Path) -> Iterator[str]:
    """A `veil las serve` on a free loopback port; its address."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "veil", "las", "serve", "--listen", f"127.0.0.1:{port}"],
        env={"VEIL_HOME": str(home), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None and time.time() < deadline, "the LAS did not start"
            time.sleep(0.1)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def runtime_env(cas: CasServer, owner: Owner, las: str) -> tuple[dict[str, str], dict[str, bytes]]:
    """The environment and injected files a host gives the runtime of a converted image."""
    env = {
        "VEIL_CAS_ADDR": cas.url,
        "VEIL_CAS_CA": "/run/veil/cas.pem",
        "VEIL_LAS_ADDR": las,
        "VEIL_MODE": "sim",
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    return env, {"/run/veil/cas.pem": owner.pin(cas.url)["ca_certificate"].encode()}


@dataclass
class Deployed:
    """A curated image converted (or not: ``env`` and ``files`` empty), and what the host
    gives it when it starts."""

    name: str
    out: Path
    tag: str
    env: dict[str, str]
    files: dict[str, bytes]
    summary: dict[str, object]
    #: how long `veil image convert` took
    convert_seconds: float = 0.0

    def bundle(self, path: Path) -> Path:
        unpack(self.out, self.tag, path)
        return path


def convert(
    name: str, out: Path, template: Path, session: str | None = None
) -> tuple[subprocess.CompletedProcess[str], float]:
    """``veil image convert`` of the curated image with its documented flags, for
    ``session`` (default NAME/demo); the time it took."""
    started = time.perf_counter()
    converted = veil(
        "image", "convert", curated.build(name), f"oci:{out}:v1", "--session", session or f"{name}/demo",
        "--service", name, "--template", str(template), "--json", *curated.IMAGES[name].convert,
    )  # fmt: skip
    return converted, time.perf_counter() - started


def deploy(name: str, root: Path, cas: CasServer, las: str, session: str | None = None) -> Deployed:
    """Convert ``name``, register the LAS's platform, create the session (default
    NAME/demo) as a new owner whose home is under ``root``."""
    out, template = root / "out", root / "session.yaml"
    converted, seconds = convert(name, out, template, session)
    assert converted.returncode == 0, converted.stderr
    added = cas.admin.veil("cas", "platform", "add", cas.url, "--las", las)
    assert added.returncode == 0, added.stderr
    alice = pinned_owner(root, cas)
    document = yaml.safe_load(template.read_text())
    document["security"]["sim_platforms"] = [added.stdout.strip()]
    template.write_text(yaml.safe_dump(document))
    created = alice.veil("session", "create", str(template))
    assert created.returncode == 0, created.stderr
    env, files = runtime_env(cas, alice, las)
    return Deployed(name, out, "v1", env, files, json.loads(converted.stdout), seconds)


def unconverted(name: str) -> Deployed:
    """The source image as it is, started without veil (the anchor of the benchmarks)."""
    _, layout, tag = curated.build(name).split(":")
    return Deployed(name, Path(layout), tag, {}, {}, {})


def serve(
    deployed: Deployed, bundle: Path, during: Callable[[], T], stop: int = 15
) -> tuple[T, int, str, float]:
    """Start the image in ``bundle``, retry ``during`` until it succeeds (the server is up
    and did what was asked), stop it with signal ``stop``. Returns what ``during``
    returned, the exit code, the log and the seconds from start to that success."""
    port = curated.IMAGES[deployed.name].port
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} is taken"
    log = bundle.parent / f"{bundle.name}.log"
    started = time.perf_counter()
    process = start_in_chroot(bundle, deployed.env, deployed.files, log)
    try:
        deadline = time.time() + 120
        while True:
            try:
                result = during()
                ready = time.perf_counter() - started
                break
            except (OSError, psycopg.OperationalError, AssertionError):
                assert process.poll() is None, f"{deployed.name} stopped: {log.read_text()[-3000:]}"
                assert time.time() < deadline, f"{deployed.name} did not serve: {log.read_text()[-3000:]}"
                time.sleep(0.02)
    finally:
        process.send_signal(stop)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
    return result, code, log.read_text(), ready


def http_get(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        body: bytes = response.read()
        return body


def redis(*args: str) -> str:
    result = subprocess.run(["redis-cli", "-p", "6379", *args], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0 and not result.stdout.startswith(("ERR", "LOADING")), result.stdout
    return result.stdout.strip()


def sql(statement: str, *params: object) -> list[tuple[object, ...]]:
    """Run one statement on the curated PostgreSQL; its rows (none for a command)."""
    with psycopg.connect(POSTGRES, connect_timeout=5) as db:
        cursor = db.execute(statement, params or None)
        return cursor.fetchall() if cursor.description else []


#: one request that shows each curated image serving
PROBES: dict[str, Callable[[], object]] = {
    "nginx": lambda: http_get(80),
    "redis": lambda: redis("PING"),
    "postgres": lambda: sql("SELECT 1"),
    "python": lambda: http_get(8000),
}
#: how each is stopped cleanly (PostgreSQL's fast shutdown is SIGINT)
STOP = {"nginx": 15, "redis": 15, "postgres": 2, "python": 15}
