"""A real `veil cas serve` on loopback for tests, owners with their own config dirs, and
helpers of the CAS tests (platforms, volume sessions, signed tag updates)."""

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from tests.conftest import session_dict, veil
from tests.net import free_port
from veil.crypto import PlatformSigningKey
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


@dataclass
class CasServer:
    data: Path
    port: int
    log: Path
    db: str | None = None
    process: subprocess.Popen[bytes] | None = field(default=None)
    extra: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> "CasServer":
        offset = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as log:
            argv = ["cas", "serve", "--listen", f"127.0.0.1:{self.port}", "--data", str(self.data)]
            argv += ["--db", self.db] if self.db else []
            argv += self.extra
            self.process = subprocess.Popen(
                [sys.executable, "-m", "veil", *argv],
                stdout=log,
                stderr=log,
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


def start_cas(
    root: Path, name: str = "cas", port: int | None = None, db: str | None = None, data: Path | None = None
) -> CasServer:
    """A CAS with its own data directory (or a shared one: replicas on one PostgreSQL)."""
    root.mkdir(parents=True, exist_ok=True)
    return CasServer(data or root / name, port or free_port(), root / f"{name}.log", db).start()


def pinned_owner(root: Path, cas: CasServer, name: str = "alice") -> Owner:
    owner = Owner(root / name)
    result = owner.veil("cas", "attest", cas.url, "--tolerate", "sim")
    assert result.returncode == 0, result.stderr
    return owner


def register_platform(tmp_path: Path, owner: Owner) -> Path:
    key_file = tmp_path / "node" / "las" / "platform.key"
    PlatformSigningKey.load_or_create(key_file)
    result = owner.veil("cas", "platform", "add", "--key-file", str(key_file))
    assert result.returncode == 0, result.stderr
    return tmp_path / "node"


def volume_session(tmp_path: Path, name: str) -> Path:
    document = session_dict(name=name)
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
