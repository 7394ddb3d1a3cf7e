"""The client's configuration under $XDG_CONFIG_HOME/veil: owner key and pinned CASes.

``owner.key``: the owner's P-256 key (PEM, 0600), made on first use; the owner identity is
the SHA-256 of its public key. ``cas.json``: the default CAS URL and, per URL, the pinned
CA certificate of that CAS with what ``veil cas attest`` checked, and the owner
certificate that CAS issued for the owner key.
"""

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)

from veil.crypto.files import create_private_file_once, load_private_ec_key_file, replace_private_file
from veil.crypto.x509ca import spki_sha256
from veil.errors import VeilError


class ClientConfigError(VeilError):
    """The client configuration is missing something or is unsafe."""


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME")
    if not base:
        try:
            base = str(Path.home() / ".config")
        except RuntimeError:  # no $HOME and no passwd entry: a runtime in a bare image
            if os.geteuid() != 0:
                raise ClientConfigError("no home directory: set XDG_CONFIG_HOME") from None
            base = "/root/.config"
    return Path(base) / "veil"


@dataclass
class CasPin:
    url: str
    ca_certificate: str
    identity: str
    measurement: str
    sim: bool
    owner_certificate: str | None = None
    #: an Intel CAS's TCB status when it was pinned (with --collateral), else "not evaluated"
    tcb_status: str | None = None


@dataclass
class ClientConfig:
    directory: Path
    default_url: str | None
    pins: dict[str, CasPin]

    @classmethod
    def load(cls, directory: Path | None = None) -> "ClientConfig":
        directory = directory or config_dir()
        path = directory / "cas.json"
        if not path.exists():
            return cls(directory, None, {})
        try:
            raw = json.loads(path.read_text())
            pins = {url: CasPin(**pin) for url, pin in raw.get("pins", {}).items()}
        except (ValueError, TypeError) as exc:
            raise ClientConfigError(f"{path} is not a veil client configuration: {exc}") from None
        return cls(directory, raw.get("default"), pins)

    def save(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        document = {"default": self.default_url, "pins": {u: asdict(p) for u, p in self.pins.items()}}
        replace_private_file(self.directory / "cas.json", json.dumps(document, indent=2).encode())

    def resolve_url(self, url: str | None) -> str:
        """The URL to use: the one given, else $VEIL_CAS_ADDR, else the configured default."""
        chosen = url or os.environ.get("VEIL_CAS_ADDR") or self.default_url
        if not chosen:
            raise ClientConfigError(
                "no CAS given: pass --cas URL (or set VEIL_CAS_ADDR, or run veil cas attest URL)"
            )
        return normalize_url(chosen)

    def pin(self, url: str) -> CasPin:
        found = self.pins.get(url)
        if found is None:
            raise ClientConfigError(
                f"the CAS at {url} is not pinned; verify it first with: veil cas attest {url}"
            )
        return found

    @property
    def owner_key_file(self) -> Path:
        return self.directory / "owner.key"

    def owner_key(self) -> ec.EllipticCurvePrivateKey:
        """The owner key, created (0600) on first use."""
        path = self.owner_key_file
        if not path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
            if create_private_file_once(path, pem):
                return key
        return load_private_ec_key_file(path)

    def owner_id(self) -> str:
        return spki_sha256(self.owner_key().public_key())


def normalize_url(url: str) -> str:
    url = url.rstrip("/")
    if "://" not in url:
        url = "https://" + url
    if not url.startswith("https://"):
        raise ClientConfigError(f"{url}: the CAS is reached over https only")
    return url
