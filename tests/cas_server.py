"""A real `veil cas serve` on loopback for tests, owners with their own config dirs, and
helpers of the CAS tests (platforms, volume sessions, signed tag updates).

Every CAS starts closed, as in production: its administrator is the owner ``admin`` (a home
beside the data directory, passed with ``--admin``), who admits the other owners of a test
(``pinned_owner``) and registers node platforms (``register_platform``)."""

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from tests.conftest import session_dict, veil
from tests.net import free_port
from veil.cas.custody import Custody, PlatformSealer
from veil.cas.postgres import PostgresStore
from veil.cas.sealing import SealedRecords
from veil.cas.storage import RecordStore, SqliteStore
from veil.client.config import ClientConfig
from veil.crypto import PlatformSigningKey
from veil.errors import VeilError
from veil.protocol import VolumeTagUpdate
from veil.runtime.attest import Provisioned


@dataclass
class Owner:
    """A user with an own $XDG_CONFIG_HOME (owner key, pins)."""

    home: Path

    @property
    def env(self) -> dict[str, str]:
        return {"XDG_CONFIG_HOME": str(self.home)}

    def veil(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return veil(*args, env={**self.env, **(env or {})})

    def pin(self, url: str) -> dict[str, Any]:
        config = json.loads((self.home / "veil" / "cas.json").read_text())
        return dict(config["pins"][url])

    @property
    def id(self) -> str:
        """The owner id (`veil owner id`); makes the owner key on first use."""
        return ClientConfig.load(self.home / "veil").owner_id()


@dataclass
class CasServer:
    data: Path
    port: int
    log: Path
    db: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None)
    extra: list[str] = field(default_factory=list)
    #: the administrator's home (default: ``admin`` beside the data directory); None: no --admin
    admin_home: Path | None = None
    with_admin: bool = True
    #: extra environment of the CAS process
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def admin(self) -> Owner:
        """The administrator named with --admin, pinned to this CAS on first use."""
        owner = Owner(self.admin_home or self.data.parent / "admin")
        pins = owner.home / "veil" / "cas.json"
        if not pins.exists() or self.url not in json.loads(pins.read_text())["pins"]:
            result = owner.veil("cas", "attest", self.url, "--tolerate", "sim")
            assert result.returncode == 0, result.stderr
        return owner

    def admit(self, owner: Owner, *roles: str) -> None:
        """The administrator admits ``owner`` (with ``roles``, default owner)."""
        argv = ["cas", "owner", "add", owner.id, "--cas", self.url]
        for role in roles:
            argv += ["--role", role]
        result = self.admin.veil(*argv)
        assert result.returncode == 0, result.stderr

    def start(self) -> "CasServer":
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            argv = ["cas", "serve", "--listen", f"127.0.0.1:{self.port}", "--data", str(self.data)]
            argv += ["--db", self.db] if self.db else []
            if self.with_admin:
                argv += ["--admin", Owner(self.admin_home or self.data.parent / "admin").id]
            argv += self.extra
            self.process = subprocess.Popen(
                [sys.executable, "-m", "veil", *argv],
                stdout=log,
                stderr=log,
                env={**os.environ, **self.env},
            )
        deadline = time.time() + 30
        while b"listening on" not in self.log.read_bytes()[offset:]:
            if self.process.poll() is not None or time.time() > deadline:
                raise AssertionError(f"the CAS did not start:\n{self.log.read_text()}")
            time.sleep(0.05)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=30)
        self.process = None
        assert_no_secret_logged(self.log, issued_secrets(self.data, self.db))


#: record kinds whose values are secret, and the fields in them that are not
_SECRET_KINDS = ("secret", "volume", "session-ca")
_PUBLIC_FIELDS = {"fingerprint", "tag", "initial_tag", "certificate", "certificate_pem", "chain", "kind"}


def issued_secrets(data: Path, db: str | None) -> set[str]:
    """Every secret value the CAS of ``data`` holds (secrets, volume keys, CA keys), in the
    forms a careless log line would show (as stored, raw text, hex); empty when the master
    key cannot be opened here (a test broke it on purpose)."""
    store: RecordStore = SqliteStore(data / "cas.db") if db is None else PostgresStore(db)
    try:
        sealer = PlatformSealer(PlatformSigningKey.load_or_create(data / "platform.key"))
        try:
            master = Custody(store, data / "master.sealed", sealer).unseal()
        except VeilError:
            return set()
        if master is None:
            return set()
        records = SealedRecords(store, master)
        found: set[str] = set()
        for kind in _SECRET_KINDS:
            for key in store.keys(kind):
                record = records.get(kind, key)
                if record is not None:
                    found |= _secret_forms(record[1])
        return found
    finally:
        store.close()


def _secret_forms(value: object) -> set[str]:
    found: set[str] = set()
    if isinstance(value, dict):
        for name, item in value.items():
            if name not in _PUBLIC_FIELDS:
                found |= _secret_forms(item)
    elif isinstance(value, list):
        for item in value:
            found |= _secret_forms(item)
    elif isinstance(value, str) and len(value) >= 12 and "CERTIFICATE" not in value:
        found.add(value)
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:
            return found
        found.add(raw.hex())
        text = raw.decode("utf-8", "replace")
        if len(raw) >= 8 and text.isprintable():
            found.add(text)
    return found


def assert_no_secret_logged(log: Path, secrets: set[str]) -> None:
    """No line of the CAS's log shows any of ``secrets``."""
    if not secrets or not log.exists():
        return
    text = log.read_text(errors="replace")
    leaked = [value for value in secrets if value in text]
    assert not leaked, f"{log}: the CAS logged {len(leaked)} secret value(s)"


def start_cas(
    root: Path, name: str = "cas", port: int | None = None, db: str | None = None, data: Path | None = None
) -> CasServer:
    """A CAS with its own data directory (or a shared one: replicas on one PostgreSQL)."""
    root.mkdir(parents=True, exist_ok=True)
    return CasServer(data or root / name, port or free_port(), root / f"{name}.log", db).start()


def pinned_owner(root: Path, cas: CasServer, name: str = "alice", admit: bool = True) -> Owner:
    """An owner who verified and pinned ``cas``; admitted by its administrator unless not ``admit``."""
    owner = Owner(root / name)
    result = owner.veil("cas", "attest", cas.url, "--tolerate", "sim")
    assert result.returncode == 0, result.stderr
    if admit:
        cas.admit(owner)
    return owner


def node_platform(tmp_path: Path, name: str = "node") -> tuple[Path, str]:
    """A node's VEIL_HOME with its sim platform key, and the platform id (not registered)."""
    key = PlatformSigningKey.load_or_create(tmp_path / name / "las" / "platform.key")
    return tmp_path / name, key.key_id


@contextlib.contextmanager
def las_on_socket(socket_path: Path, home: Path) -> Iterator[Path]:
    """A `veil las serve` on the Unix socket ``socket_path`` (its platform key under
    ``home``), until the block ends; the socket."""
    las = subprocess.Popen(
        [sys.executable, "-m", "veil", "las", "serve", "--socket", str(socket_path), "--home", str(home)],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        while not socket_path.exists():
            assert las.poll() is None and time.time() < deadline, "the LAS did not start"
            time.sleep(0.05)
        yield socket_path
    finally:
        las.terminate()
        las.wait(timeout=30)


def register_platform(tmp_path: Path, cas: CasServer, name: str = "node") -> Path:
    """The administrator registers the node's platform key; its VEIL_HOME."""
    home, _ = node_platform(tmp_path, name)
    key_file = home / "las" / "platform.key"
    result = cas.admin.veil("cas", "platform", "add", "--key-file", str(key_file), "--cas", cas.url)
    assert result.returncode == 0, result.stderr
    return home


def volume_session(tmp_path: Path, name: str, sim_platforms: list[str] | None = None) -> Path:
    document = session_dict(name=name, sim_platforms=sim_platforms)
    document["volumes"] = [{"name": "data", "mode": "encrypted", "accept_fresh": True}]
    document["services"][0]["volumes"] = [{"name": "data", "path": "/srv/data"}]
    path = tmp_path / f"{name.replace('/', '_')}.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def signed_update(
    provisioned: Provisioned, config_id: str, previous: str | None, tag: str
) -> VolumeTagUpdate:
    pem = provisioned.instance_certificate.public_bytes(Encoding.PEM).decode()
    unsigned = VolumeTagUpdate(config_id, "data", previous, tag, pem, b"")
    signature = provisioned.instance_key.sign(unsigned.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    return VolumeTagUpdate(config_id, "data", previous, tag, pem, signature)
