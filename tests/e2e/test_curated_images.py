"""The curated images (tests/curated.py: Debian's nginx, redis and PostgreSQL, and a Python
app in a venv) converted unchanged with the commands docs/image.md gives, then run the way
an engine runs them: serving, restarted, recreated from the image with their data, refused
with a stale copy of it or a tampered binary; no plaintext of a protected path or of the
data in any blob or on the host's disk."""

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
import yaml

from tests import curated
from tests.cas_server import CasServer, pinned_owner
from tests.conftest import requires_root, veil
from tests.e2e.conftest import runtime_env
from tests.images import blobs_text, replace_in_layer, run_in_chroot, start_in_chroot, unpack

pytestmark = [
    requires_root,
    pytest.mark.skipif(not curated.available(), reason="needs mmdebstrap, umoci, skopeo, patchelf"),
]

T = TypeVar("T")
POSTGRES = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@dataclass
class Deployed:
    """A curated image converted, its session on the CAS, and what the host gives it."""

    name: str
    out: Path
    env: dict[str, str]
    files: dict[str, bytes]
    summary: dict[str, object]

    def bundle(self, path: Path) -> Path:
        unpack(self.out, "v1", path)
        return path


def _deploy(name: str, tmp_path: Path, cas: CasServer, las: str) -> Deployed:
    source = curated.build(name)
    out, template = tmp_path / "out", tmp_path / "session.yaml"
    converted = veil(
        "image", "convert", source, f"oci:{out}:v1", "--session", f"shop/{name}", "--service", name,
        "--template", str(template), "--json", *curated.IMAGES[name].convert,
    )  # fmt: skip
    assert converted.returncode == 0, converted.stderr
    added = cas.admin.veil("cas", "platform", "add", cas.url, "--las", las)
    assert added.returncode == 0, added.stderr
    alice = pinned_owner(tmp_path, cas)
    document = yaml.safe_load(template.read_text())
    document["security"]["sim_platforms"] = [added.stdout.strip()]
    template.write_text(yaml.safe_dump(document))
    created = alice.veil("session", "create", str(template))
    assert created.returncode == 0, created.stderr
    env, files = runtime_env(cas, alice, las)
    return Deployed(name, out, env, files, json.loads(converted.stdout))


def _serve(
    deployed: Deployed, bundle: Path, during: Callable[[], T], stop: int = signal.SIGTERM
) -> tuple[T, int, str]:
    """Start the image in ``bundle``, retry ``during`` until it succeeds (the server is up
    and did what the test asked), stop it with ``stop``; its result, exit code and log."""
    port = curated.IMAGES[deployed.name].port
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} is taken"
    log = bundle.parent / f"{bundle.name}.log"
    process = start_in_chroot(bundle, deployed.env, deployed.files, log)
    try:
        deadline = time.time() + 120
        while True:
            try:
                result = during()
                break
            except (OSError, psycopg.OperationalError, AssertionError):
                assert process.poll() is None, f"{deployed.name} stopped: {log.read_text()[-3000:]}"
                assert time.time() < deadline, f"{deployed.name} did not serve: {log.read_text()[-3000:]}"
                time.sleep(0.2)
    finally:
        process.send_signal(stop)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
    return result, code, log.read_text()


def _no_plaintext(deployed: Deployed, *markers: bytes, storage: Path | None = None) -> None:
    for blob in blobs_text(deployed.out):
        for marker in markers:
            assert marker not in blob
    if storage is not None:
        for path in storage.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert not any(marker in data for marker in markers), path


def _refused(deployed: Deployed, bundle: Path, expected: str) -> None:
    """Started with what it must not accept, the runtime stops before the program runs."""
    ran = run_in_chroot(bundle, deployed.env, deployed.files)
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert expected in ran.stderr, ran.stderr


def _replace_data(bundle: Path, path: str, data: Path) -> None:
    """Give a fresh container the data a host (or a Kubernetes volume) kept."""
    target = bundle / "rootfs" / path.lstrip("/")
    shutil.rmtree(target)
    shutil.copytree(data, target, symlinks=True)


def _get(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        body: bytes = response.read()
        return body


def test_nginx_serves_from_encrypted_config_and_pages_as_www_data(
    tmp_path: Path, cas: CasServer, las: str
) -> None:
    """Debian's nginx as built (`user www-data`, sites-enabled a symlink): its workers read
    the encrypted pages, its logs and temp files go to memory, so the same root file
    system starts again; a tampered nginx binary is refused."""
    deployed = _deploy("nginx", tmp_path, cas, las)
    _no_plaintext(deployed, curated.MARKERS["nginx"])
    bundle = deployed.bundle(tmp_path / "run1")
    assert not (bundle / "rootfs/var/www/html/index.html").exists()
    page, code, log = _serve(deployed, bundle, lambda: _get(80))
    assert curated.MARKERS["nginx"] in page, page
    assert code == 0, log

    again, code, log = _serve(deployed, bundle, lambda: _get(80))
    assert curated.MARKERS["nginx"] in again and code == 0, log

    replace_in_layer(deployed.out, "v1", "usr/sbin/nginx", b"#!/bin/sh\ncat /var/www/html/index.html\n")
    _refused(deployed, deployed.bundle(tmp_path / "tampered"), "measurement")


def _redis(*args: str) -> str:
    result = subprocess.run(["redis-cli", "-p", "6379", *args], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0 and not result.stdout.startswith(("ERR", "LOADING")), result.stdout
    return result.stdout.strip()


def test_redis_keeps_its_keys_on_a_data_volume(tmp_path: Path, cas: CasServer, las: str) -> None:
    """redis as its own user (`setpriv`), append-only file fsynced on every write, data on
    `--data /var/lib/redis`: keys survive a restart and a fresh container given the data;
    an older copy of the data is refused."""
    value = "REDIS-VALUE-PLAINTEXT-93d1e0"
    deployed = _deploy("redis", tmp_path, cas, las)
    bundle = deployed.bundle(tmp_path / "run1")
    stored, code, log = _serve(deployed, bundle, lambda: _redis("SET", "first", value))
    assert stored == "OK" and code == 0, log
    data = bundle / "rootfs/var/lib/redis"
    _no_plaintext(deployed, value.encode(), storage=data)
    after_one = tmp_path / "after-one"
    shutil.copytree(data, after_one, symlinks=True)

    def read_and_add() -> str:
        _redis("SET", "second", "2")
        return _redis("GET", "first")

    got, code, log = _serve(deployed, bundle, read_and_add)
    assert got == value and code == 0, log

    fresh = deployed.bundle(tmp_path / "fresh")
    _replace_data(fresh, "/var/lib/redis", data)
    both, code, log = _serve(deployed, fresh, lambda: _redis("MGET", "first", "second"))
    assert both.splitlines() == [value, "2"] and code == 0, log

    stale = deployed.bundle(tmp_path / "stale")
    _replace_data(stale, "/var/lib/redis", after_one)
    _refused(deployed, stale, "volume 'var-lib-redis'")


def test_postgresql_initialises_its_data_volume_and_keeps_it(
    tmp_path: Path, cas: CasServer, las: str
) -> None:
    """PostgreSQL (drops to `postgres`, refuses to run as root) makes its cluster on the empty
    data volume at first start; rows survive a restart and a fresh container given the
    data; an older copy of the data is refused."""
    row = "PG-ROW-PLAINTEXT-5a17c2"
    deployed = _deploy("postgres", tmp_path, cas, las)
    bundle = deployed.bundle(tmp_path / "run1")

    def create() -> None:
        with psycopg.connect(POSTGRES, connect_timeout=5) as db:
            db.execute("CREATE TABLE IF NOT EXISTS notes (body text)")
            db.execute("INSERT INTO notes VALUES (%s)", (row,))

    _, code, log = _serve(deployed, bundle, create, stop=signal.SIGINT)
    assert code == 0, log
    data = bundle / "rootfs/var/lib/postgresql/data"
    _no_plaintext(deployed, row.encode(), storage=data)
    after_one = tmp_path / "after-one"
    shutil.copytree(data, after_one, symlinks=True)

    def select() -> list[tuple[object, ...]]:
        with psycopg.connect(POSTGRES, connect_timeout=5) as db:
            return db.execute("SELECT body FROM notes").fetchall()

    rows, code, log = _serve(deployed, bundle, select, stop=signal.SIGINT)
    assert rows == [(row,)] and code == 0, log

    fresh = deployed.bundle(tmp_path / "fresh")
    _replace_data(fresh, "/var/lib/postgresql/data", data)
    rows, code, log = _serve(deployed, fresh, select, stop=signal.SIGINT)
    assert rows == [(row,)] and code == 0, log

    stale = deployed.bundle(tmp_path / "stale")
    _replace_data(stale, "/var/lib/postgresql/data", after_one)
    _refused(deployed, stale, "volume 'var-lib-postgresql-data'")


def test_python_app_in_a_venv_runs_from_encrypted_code(tmp_path: Path, cas: CasServer, las: str) -> None:
    """An app and its venv (symlinks to the image's python, pip's thousand files) under
    `--encrypt /app`, the entrypoint inside it: it serves; any number of containers start
    from the image, since the code volume is read-only."""
    deployed = _deploy("python", tmp_path, cas, las)
    _no_plaintext(deployed, curated.MARKERS["python"])
    for run in ("run1", "run2"):
        bundle = deployed.bundle(tmp_path / run)
        assert not (bundle / "rootfs/app/app.py").exists()
        body, _, log = _serve(deployed, bundle, lambda: _get(8000))
        assert body == curated.MARKERS["python"] + b" from /app/venv\n", log
