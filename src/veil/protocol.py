"""Messages of the attestation and provisioning protocol (docs/protocol.md).

Shared by the CAS (which verifies and answers) and the client/runtime (which asks), so both
sides compute the report_data binding with the same code.
"""

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from veil.crypto import canonical_json, sha256, sha512
from veil.errors import VeilError

REPORT_DATA_DOMAIN = b"veil-report-data-v1\0"
KEYS_DOMAIN = b"veil-runtime-keys-v1\0"
BUNDLE_INFO_DOMAIN = b"veil-bundle-v1\0"
CAS_IDENTITY_DOMAIN = b"veil-cas-identity-v1\0"
NONCE_LEN = 32


class ProtocolError(VeilError):
    """A protocol message is malformed."""


class AttestationRefused(VeilError):
    """The CAS refused to provision a runtime; ``reason`` says which check failed."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"attestation refused: {reason}")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(value: object, what: str) -> bytes:
    """Strict base64 of a wire field; a ProtocolError naming the field otherwise."""
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise ProtocolError(f"{what} is not valid base64") from None


def _field(raw: dict[str, Any], name: str, kind: type) -> Any:
    value = raw.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ProtocolError(f"field '{name}' is missing or not a {kind.__name__}")
    return value


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def runtime_key_digest(instance_public_key_der: bytes, bundle_public_key: bytes) -> bytes:
    """Binds both ephemeral public keys of a runtime (TLS instance key, bundle HPKE key)."""
    return sha256(KEYS_DOMAIN + _lp(instance_public_key_der) + _lp(bundle_public_key))


def expected_report_data(nonce: bytes, key_digest: bytes, workload_digest: bytes) -> bytes:
    """The 64 bytes a runtime puts into its evidence: nonce, keys and workload, hashed."""
    if len(nonce) != NONCE_LEN or len(key_digest) != 32 or len(workload_digest) != 32:
        raise ProtocolError("report_data inputs have the wrong length")
    return sha512(REPORT_DATA_DOMAIN + nonce + key_digest + workload_digest)


def cas_report_data(nonce: bytes, identity_digest: str, measurement: str) -> bytes:
    """What a CAS's own evidence binds: the client's nonce, the CAS identity key and the
    CAS software measurement (``veil cas attest``)."""
    return expected_report_data(
        nonce,
        sha256(CAS_IDENTITY_DOMAIN + bytes.fromhex(identity_digest)),
        bytes.fromhex(measurement.removeprefix("sha256:")),
    )


def bundle_info(nonce: bytes, config_id: str) -> bytes:
    """HPKE info: a bundle opens only for the exchange (nonce) and service it was made for."""
    return BUNDLE_INFO_DOMAIN + nonce + config_id.encode("utf-8")


def split_config_id(config_id: str) -> tuple[str, str]:
    session, sep, service = config_id.rpartition("/")
    if not sep or not session or not service:
        raise ProtocolError(f"'{config_id}' is not SESSION/SERVICE")
    return session, service


@dataclass(frozen=True)
class Evidence:
    """Platform evidence as collected: the platform name and its opaque bytes."""

    platform: str
    data: bytes


class EvidenceSource(Protocol):
    """A platform that produces evidence over 64 bytes of report_data."""

    def collect(self, report_data: bytes, measurement: str) -> Evidence: ...


#: devices (GPUs) one attestation may carry evidence of
MAX_DEVICES = 16


@dataclass(frozen=True)
class AttestationRequest:
    config_id: str
    nonce: bytes
    evidence: Evidence
    instance_public_key_der: bytes
    bundle_public_key: bytes
    #: hardware platforms: the runtime's measurement of the program ("sha256:..."), bound
    #: into report_data; sim evidence carries it inside the signed statement instead.
    workload: str = ""
    #: evidence of devices beside the CPU TEE (``nvidia-gpu``), each bound to ``nonce``
    devices: tuple[Evidence, ...] = ()

    @property
    def key_digest(self) -> bytes:
        return runtime_key_digest(self.instance_public_key_der, self.bundle_public_key)

    def to_json(self) -> dict[str, Any]:
        return {
            "config_id": self.config_id,
            "nonce": b64(self.nonce),
            "evidence": {"platform": self.evidence.platform, "data": b64(self.evidence.data)},
            "instance_public_key": b64(self.instance_public_key_der),
            "bundle_public_key": b64(self.bundle_public_key),
            "workload": self.workload,
            **(
                {"devices": [{"platform": d.platform, "data": b64(d.data)} for d in self.devices]}
                if self.devices
                else {}
            ),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "AttestationRequest":
        evidence = _field(raw, "evidence", dict)
        return cls(
            config_id=_field(raw, "config_id", str),
            nonce=unb64(raw.get("nonce"), "nonce"),
            evidence=Evidence(
                _field(evidence, "platform", str), unb64(evidence.get("data"), "evidence.data")
            ),
            instance_public_key_der=unb64(raw.get("instance_public_key"), "instance_public_key"),
            bundle_public_key=unb64(raw.get("bundle_public_key"), "bundle_public_key"),
            workload=str(raw.get("workload", "")),
            devices=_devices(raw.get("devices", [])),
        )


def _devices(raw: object) -> tuple[Evidence, ...]:
    if not isinstance(raw, list) or len(raw) > MAX_DEVICES:
        raise ProtocolError(f"field 'devices' must be a list of at most {MAX_DEVICES} evidence objects")
    devices = []
    for item in raw:
        if not isinstance(item, dict):
            raise ProtocolError("each of 'devices' must be an object with 'platform' and 'data'")
        devices.append(Evidence(_field(item, "platform", str), unb64(item.get("data"), "devices.data")))
    return tuple(devices)


@dataclass(frozen=True)
class AttestationGrant:
    bundle_ciphertext: bytes
    instance_certificate_pem: str
    session_ca_pem: str
    sim: bool
    #: the network CAS's signed attestation result (EAR, a JWT), for relying parties
    ear: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": b64(self.bundle_ciphertext),
            "instance_certificate": self.instance_certificate_pem,
            "session_ca": self.session_ca_pem,
            "sim": self.sim,
            **({"ear": self.ear} if self.ear is not None else {}),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "AttestationGrant":
        ear = raw.get("ear")
        if ear is not None and not isinstance(ear, str):
            raise ProtocolError("'ear' must be a string")
        return cls(
            bundle_ciphertext=unb64(raw.get("bundle"), "bundle"),
            instance_certificate_pem=_field(raw, "instance_certificate", str),
            session_ca_pem=_field(raw, "session_ca", str),
            sim=_field(raw, "sim", bool),
            ear=ear,
        )


@dataclass(frozen=True)
class LaunchDescriptor:
    """What a service runs, as the CAS states it before attestation (no secret values):
    the command template, pwd and PATH, what to measure (``command`` or ``image``) and,
    for an image, the volume paths the measurement leaves out."""

    command: list[str]
    pwd: str
    path: str | None
    measure: str = "command"
    volume_paths: list[str] = field(default_factory=list)
    #: an attestation entry of the service requires GPUs: send their evidence (NVML)
    gpu_evidence: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "pwd": self.pwd,
            "path": self.path,
            "measure": self.measure,
            "volume_paths": self.volume_paths,
            **({"gpu_evidence": True} if self.gpu_evidence else {}),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "LaunchDescriptor":
        command = raw.get("command")
        if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
            raise ProtocolError("field 'command' is missing or not a non-empty list of strings")
        path = raw.get("path")
        if path is not None and not isinstance(path, str):
            raise ProtocolError("field 'path' is not a string")
        measure = raw.get("measure", "command")
        if measure not in ("command", "image"):
            raise ProtocolError("field 'measure' is neither 'command' nor 'image'")
        volume_paths = raw.get("volume_paths", [])
        if not isinstance(volume_paths, list) or not all(isinstance(p, str) for p in volume_paths):
            raise ProtocolError("field 'volume_paths' is not a list of strings")
        gpu_evidence = raw.get("gpu_evidence", False)
        if not isinstance(gpu_evidence, bool):
            raise ProtocolError("field 'gpu_evidence' is not a boolean")
        return cls(command, _field(raw, "pwd", str), path, measure, volume_paths, gpu_evidence)


@dataclass(frozen=True)
class BundleFile:
    path: str
    mode: int
    content: bytes = field(repr=False)


@dataclass(frozen=True)
class BundleVolume:
    """A volume the runtime mounts: its key (from the CAS) and the tag the CAS expects."""

    name: str
    path: str
    mode: str
    key: bytes = field(repr=False)
    #: None: no tag stored yet (first use); the runtime may create it if ``accept_fresh``.
    tag: str | None
    accept_fresh: bool
    #: "unmount": the runtime reports the new tag when the program ends; "fsync": at every commit
    freshness: str = "unmount"
    #: mounted read-only at exactly ``tag``, never reported
    readonly: bool = False


@dataclass(frozen=True)
class VolumeTagUpdate:
    """A runtime reporting a volume's new tag, signed with its instance key.

    The CAS applies it only if ``previous`` is the stored tag (compare-and-swap) and the
    certificate was issued by the session's CA for a service that uses the volume.
    """

    config_id: str
    volume: str
    previous: str | None
    tag: str
    certificate_pem: str
    signature: bytes

    def signed_bytes(self) -> bytes:
        return canonical_json(
            {
                "domain": "veil-volume-tag-v1",
                "config_id": self.config_id,
                "volume": self.volume,
                "previous": self.previous,
                "tag": self.tag,
            }
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "config_id": self.config_id,
            "volume": self.volume,
            "previous": self.previous,
            "tag": self.tag,
            "certificate": self.certificate_pem,
            "signature": b64(self.signature),
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "VolumeTagUpdate":
        previous = raw.get("previous")
        if previous is not None and not isinstance(previous, str):
            raise ProtocolError("field 'previous' must be a string or null")
        return cls(
            config_id=_field(raw, "config_id", str),
            volume=_field(raw, "volume", str),
            previous=previous,
            tag=_field(raw, "tag", str),
            certificate_pem=_field(raw, "certificate", str),
            signature=unb64(raw.get("signature"), "signature"),
        )


@dataclass(frozen=True)
class ConfigurationBundle:
    """What an attested runtime receives: exactly what it needs to start the program."""

    session: str
    service: str
    session_hash: str
    argv: list[str] = field(repr=False)
    environment: dict[str, str] = field(repr=False)
    pwd: str
    files: list[BundleFile] = field(repr=False)
    allow_extra_args: bool = False
    volumes: list[BundleVolume] = field(default_factory=list, repr=False)
    #: scratch directories, each a tmpfs holding a copy of what it held
    tmpfs: list[str] = field(default_factory=list)
    #: the service's ``network`` section (shield rules) as plain JSON
    network: dict[str, Any] = field(default_factory=dict)
    #: PEM material of the policy secrets the shields use, by ``NAME:FORMAT`` (chain and
    #: key of an identity, crt of a trusted CA)
    network_secrets: dict[str, str] = field(default_factory=dict, repr=False)

    def to_bytes(self) -> bytes:
        return canonical_json(
            {
                "session": self.session,
                "service": self.service,
                "session_hash": self.session_hash,
                "argv": self.argv,
                "environment": self.environment,
                "pwd": self.pwd,
                "files": [
                    {"path": f.path, "mode": f.mode, "content": base64.b64encode(f.content).decode()}
                    for f in self.files
                ],
                "allow_extra_args": self.allow_extra_args,
                "tmpfs": self.tmpfs,
                "network": self.network,
                "network_secrets": self.network_secrets,
                "volumes": [
                    {
                        "name": v.name,
                        "path": v.path,
                        "mode": v.mode,
                        "key": base64.b64encode(v.key).decode(),
                        "tag": v.tag,
                        "accept_fresh": v.accept_fresh,
                        "freshness": v.freshness,
                        "readonly": v.readonly,
                    }
                    for v in self.volumes
                ],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> "ConfigurationBundle":
        try:
            raw: dict[str, Any] = json.loads(data)
            return cls(
                session=str(raw["session"]),
                service=str(raw["service"]),
                session_hash=str(raw["session_hash"]),
                argv=[str(a) for a in raw["argv"]],
                environment={str(k): str(v) for k, v in raw["environment"].items()},
                pwd=str(raw["pwd"]),
                files=[
                    BundleFile(str(f["path"]), int(f["mode"]), base64.b64decode(f["content"]))
                    for f in raw["files"]
                ],
                allow_extra_args=bool(raw["allow_extra_args"]),
                tmpfs=[str(p) for p in raw.get("tmpfs", [])],
                network=dict(raw.get("network", {})),
                network_secrets={str(k): str(v) for k, v in raw.get("network_secrets", {}).items()},
                volumes=[
                    BundleVolume(
                        str(v["name"]),
                        str(v["path"]),
                        str(v["mode"]),
                        base64.b64decode(v["key"]),
                        None if v["tag"] is None else str(v["tag"]),
                        bool(v["accept_fresh"]),
                        str(v.get("freshness", "unmount")),
                        bool(v.get("readonly", False)),
                    )
                    for v in raw.get("volumes", [])
                ],
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ProtocolError(f"malformed configuration bundle: {exc}") from None
