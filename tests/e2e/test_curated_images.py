"""The curated images (tests/curated.py: Debian's nginx, redis and PostgreSQL, and a Python
app in a venv) converted unchanged with the commands docs/image.md gives, then run the way
an engine runs them: serving, restarted, recreated from the image with their data, refused
with a stale copy of it or a tampered binary; no plaintext of a protected path or of the
data in any blob or on the host's disk."""

import shutil
import signal
from pathlib import Path

import pytest

from tests import curated
from tests.cas_server import CasServer
from tests.conftest import requires_root
from tests.deploy import Deployed, deploy, http_get, redis, serve, sql
from tests.images import blobs_text, replace_in_layer, run_in_chroot

pytestmark = [
    requires_root,
    pytest.mark.skipif(not curated.available(), reason="needs mmdebstrap, umoci, skopeo, patchelf"),
]


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


def _with_data(deployed: Deployed, bundle: Path, path: str, data: Path) -> Path:
    """A fresh container given the data a host (or a Kubernetes volume) kept."""
    deployed.bundle(bundle)
    target = bundle / "rootfs" / path.lstrip("/")
    shutil.rmtree(target)
    shutil.copytree(data, target, symlinks=True)
    return bundle


def test_nginx_serves_from_encrypted_config_and_pages_as_www_data(
    tmp_path: Path, cas: CasServer, las: str
) -> None:
    """Debian's nginx as built (`user www-data`, sites-enabled a symlink): its workers read
    the encrypted pages, its logs and temp files go to memory, so the same root file
    system starts again; a tampered nginx binary is refused."""
    deployed = deploy("nginx", tmp_path, cas, las)
    _no_plaintext(deployed, curated.MARKERS["nginx"])
    bundle = deployed.bundle(tmp_path / "run1")
    assert not (bundle / "rootfs/var/www/html/index.html").exists()
    for _ in range(2):
        page, code, log, _ = serve(deployed, bundle, lambda: http_get(80))
        assert curated.MARKERS["nginx"] in page and code == 0, log

    replace_in_layer(deployed.out, "v1", "usr/sbin/nginx", b"#!/bin/sh\ncat /var/www/html/index.html\n")
    _refused(deployed, deployed.bundle(tmp_path / "tampered"), "measurement")


def test_redis_keeps_its_keys_on_a_data_volume(tmp_path: Path, cas: CasServer, las: str) -> None:
    """redis as its own user (`setpriv`), append-only file fsynced on every write, data on
    `--data /var/lib/redis`: keys survive a restart and a fresh container given the data;
    an older copy of the data is refused."""
    value = "REDIS-VALUE-PLAINTEXT-93d1e0"
    deployed = deploy("redis", tmp_path, cas, las)
    bundle = deployed.bundle(tmp_path / "run1")
    stored, code, log, _ = serve(deployed, bundle, lambda: redis("SET", "first", value))
    assert stored == "OK" and code == 0, log
    data = bundle / "rootfs/var/lib/redis"
    _no_plaintext(deployed, value.encode(), storage=data)
    after_one = tmp_path / "after-one"
    shutil.copytree(data, after_one, symlinks=True)

    def read_and_add() -> str:
        redis("SET", "second", "2")
        return redis("GET", "first")

    got, code, log, _ = serve(deployed, bundle, read_and_add)
    assert got == value and code == 0, log

    fresh = _with_data(deployed, tmp_path / "fresh", "/var/lib/redis", data)
    both, code, log, _ = serve(deployed, fresh, lambda: redis("MGET", "first", "second"))
    assert both.splitlines() == [value, "2"] and code == 0, log

    stale = _with_data(deployed, tmp_path / "stale", "/var/lib/redis", after_one)
    _refused(deployed, stale, "volume 'var-lib-redis'")


def test_postgresql_initialises_its_data_volume_and_keeps_it(
    tmp_path: Path, cas: CasServer, las: str
) -> None:
    """PostgreSQL (drops to `postgres`, refuses to run as root) makes its cluster on the empty
    data volume at first start; rows survive a restart and a fresh container given the
    data; an older copy of the data is refused."""
    row = "PG-ROW-PLAINTEXT-5a17c2"
    deployed = deploy("postgres", tmp_path, cas, las)
    bundle = deployed.bundle(tmp_path / "run1")

    def create() -> None:
        sql("CREATE TABLE IF NOT EXISTS notes (body text)")
        sql("INSERT INTO notes VALUES (%s)", row)

    _, code, log, _ = serve(deployed, bundle, create, stop=signal.SIGINT)
    assert code == 0, log
    data = bundle / "rootfs/var/lib/postgresql/data"
    _no_plaintext(deployed, row.encode(), storage=data)
    after_one = tmp_path / "after-one"
    shutil.copytree(data, after_one, symlinks=True)

    def select() -> list[tuple[object, ...]]:
        return sql("SELECT body FROM notes")

    rows, code, log, _ = serve(deployed, bundle, select, stop=signal.SIGINT)
    assert rows == [(row,)] and code == 0, log

    fresh = _with_data(deployed, tmp_path / "fresh", "/var/lib/postgresql/data", data)
    rows, code, log, _ = serve(deployed, fresh, select, stop=signal.SIGINT)
    assert rows == [(row,)] and code == 0, log

    stale = _with_data(deployed, tmp_path / "stale", "/var/lib/postgresql/data", after_one)
    _refused(deployed, stale, "volume 'var-lib-postgresql-data'")


def test_python_app_in_a_venv_runs_from_encrypted_code(tmp_path: Path, cas: CasServer, las: str) -> None:
    """An app and its venv (symlinks to the image's python, pip's thousand files) under
    `--encrypt /app`, the entrypoint inside it: it serves; any number of containers start
    from the image, since the code volume is read-only."""
    deployed = deploy("python", tmp_path, cas, las)
    _no_plaintext(deployed, curated.MARKERS["python"])
    for run in ("run1", "run2"):
        bundle = deployed.bundle(tmp_path / run)
        assert not (bundle / "rootfs/app/app.py").exists()
        body, _, log, _ = serve(deployed, bundle, lambda: http_get(8000))
        assert body == curated.MARKERS["python"] + b" from /app/venv\n", log
