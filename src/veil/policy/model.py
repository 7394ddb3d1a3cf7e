"""The session language as typed, immutable classes (first cut; docs/policy.md is the spec).

A Session is what an owner writes; the CAS stores it by its canonical hash. Validation of
single values lives here; rules that span the document (secret references, unique names)
live in ``veil.policy.rules``.
"""

import base64
import ipaddress
import re
import string
from collections.abc import Callable, Iterator
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from veil.protocol import LaunchDescriptor
from veil.tolerances import TOLERANCES

SESSION_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*(/[a-z0-9][a-z0-9._-]*)*")
SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")
SECRET_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
MEASUREMENT = re.compile(r"sha256:[0-9a-f]{64}")
SESSION_HASH = re.compile(r"[0-9a-f]{64}")
OWNER_ID = re.compile(r"[0-9a-f]{64}")
PLATFORM_ID = re.compile(r"[0-9a-f]{64}")


OWNER_KEYWORDS = ("CREATOR", "ANY", "NONE")


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


def _scalar_to_text(value: Any, what: str) -> Any:
    """YAML turns ``8080`` into an int; a number is text here. Booleans are refused, since
    ``yes`` would silently become ``True``."""
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a string; quote it ('{str(value).lower()}')")
    if isinstance(value, int | float):
        return str(value)
    return value


def _hex(size: int) -> Any:
    """A validator for a hex string of ``size`` bytes, normalised to lower case."""

    def check(value: Any) -> Any:
        if isinstance(value, str):
            text = value.lower().removeprefix("0x")
            if len(text) != 2 * size or not re.fullmatch(r"[0-9a-f]*", text):
                raise ValueError(f"expected {size} bytes as {2 * size} hex digits")
            return text
        return value

    return check


Hex16 = Annotated[str, BeforeValidator(_hex(16))]
Hex32 = Annotated[str, BeforeValidator(_hex(32))]
Hex48 = Annotated[str, BeforeValidator(_hex(48))]


class GpuAttestation(StrictModel):
    """An NVIDIA H100 GPU beside the CPU TEE (docs/attestation.md, "A GPU beside the CPU"):
    its SPDM measurement report must verify to NVIDIA's Device Identity CA and carry the
    attestation's nonce; the values given here must match."""

    platform: Literal["nvidia-gpu"]
    driver_version: str | None = None
    vbios_version: str | None = None
    #: the FWID of the GPU's attestation certificate
    fwid: Hex48 | None = None
    #: measurement index -> expected value (48 bytes); the others are not compared
    measurements: dict[int, Hex48] = Field(default_factory=dict)


def _no_gpus(value: list[GpuAttestation]) -> bool:
    return not value


class _GpuRequirement(StrictModel):
    #: GPUs that must attest beside the CPU TEE, with the same nonce (absent: none). Left
    #: out of the canonical form while empty, so sessions written before keep their hash.
    gpus: list[GpuAttestation] = Field(default_factory=list, exclude_if=_no_gpus)


class _HardwareEntry(_GpuRequirement):
    #: the program the runtime inside the TEE measured (bound into report_data), if pinned.
    workload: str | None = None

    @field_validator("workload")
    @classmethod
    def _workload(cls, value: str | None) -> str | None:
        if value is not None and not MEASUREMENT.fullmatch(value):
            raise ValueError("a workload measurement is 'sha256:' followed by 64 lower-case hex digits")
        return value


class SimAttestation(_GpuRequirement):
    """A program measured by the runtime and vouched for by a sim platform key."""

    platform: Literal["sim"]
    measurement: str

    @field_validator("measurement")
    @classmethod
    def _measurement(cls, value: str) -> str:
        if not MEASUREMENT.fullmatch(value):
            raise ValueError("a measurement is 'sha256:' followed by 64 lower-case hex digits")
        return value


class SnpMinTcb(StrictModel):
    bootloader: int = 0
    tee: int = 0
    snp: int = 0
    microcode: int = 0
    fmc: int | None = None


class SnpAttestation(_HardwareEntry):
    """An AMD SEV-SNP confidential VM: launch measurement and optional reference values."""

    platform: Literal["sev-snp"]
    measurement: Hex48
    host_data: Hex32 | None = None
    id_key_digest: Hex48 | None = None
    family_id: Hex16 | None = None
    image_id: Hex16 | None = None
    min_tcb: SnpMinTcb | None = None
    vmpl: Annotated[int, Field(ge=0, le=3)] | None = None
    min_guest_svn: int | None = None


class SvnRange(StrictModel):
    min: int = 0
    max: int = 65535


class SgxAttestation(_HardwareEntry):
    """An SGX enclave (e.g. under Gramine): MRENCLAVE, or MRSIGNER with product and SVN range."""

    platform: Literal["sgx"]
    mr_enclave: Hex32 | None = None
    mr_signer: Hex32 | None = None
    isv_prod_id: int | None = None
    isv_svn: SvnRange | None = None

    @model_validator(mode="after")
    def _identity(self) -> "SgxAttestation":
        if self.mr_enclave is None and (self.mr_signer is None or self.isv_prod_id is None):
            raise ValueError("an sgx entry needs mr_enclave, or mr_signer together with isv_prod_id")
        return self


class TdxAttestation(_HardwareEntry):
    """An Intel TDX trust domain: MRTD and optionally RTMRs (null = any) and the TDX module."""

    platform: Literal["tdx"]
    mr_td: Hex48
    rtmr: Annotated[list[Hex48 | None], Field(min_length=4, max_length=4)] | None = None
    mr_seam: Hex48 | None = None


ConcreteAttestation = Annotated[
    SimAttestation | SnpAttestation | SgxAttestation | TdxAttestation, Field(discriminator="platform")
]
_CONCRETE: TypeAdapter[ConcreteAttestation] = TypeAdapter(ConcreteAttestation)
PLATFORM_ENTRIES: dict[str, type[BaseModel]] = {
    "sim": SimAttestation,
    "sev-snp": SnpAttestation,
    "sgx": SgxAttestation,
    "tdx": TdxAttestation,
}
_PLACEHOLDER_OPENER = "$$VEIL::"


class TemplateAttestation(StrictModel):
    """An attestation entry whose values hold ``$$VEIL::name$$`` placeholders (e.g. a
    measurement another session exports): written like any entry, kept as written, and
    resolved and validated when a runtime attests."""

    platform: Literal["template"]
    entry: dict[str, Any]

    @model_validator(mode="after")
    def _known_keys(self) -> "TemplateAttestation":
        platform = self.entry.get("platform")
        model = PLATFORM_ENTRIES.get(str(platform))
        if model is None:
            raise ValueError(f"unknown platform '{platform}' (known: {', '.join(PLATFORM_ENTRIES)})")
        unknown = sorted(set(self.entry) - set(model.model_fields))
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)} in a {platform} entry")
        return self

    def strings(self) -> list[tuple[str, str]]:
        """(key, value) of every string value, where placeholders may stand."""
        return [(k, v) for k, v in self.entry.items() if isinstance(v, str)]

    def resolve(self, substitute: Callable[[str, str], str]) -> "ConcreteAttestation":
        """The entry with ``substitute(text, key)`` applied to its strings, validated as
        written for its platform (ValueError with the reason otherwise)."""
        resolved = {k: substitute(v, k) if isinstance(v, str) else v for k, v in self.entry.items()}
        try:
            entry: ConcreteAttestation = _CONCRETE.validate_python(resolved)
        except ValidationError as exc:
            reasons = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'][1:]) or 'entry'}: "
                + e["msg"].removeprefix("Value error, ")
                for e in exc.errors()
            )
            raise ValueError(f"with its secrets filled in, the entry is not valid ({reasons})") from None
        return entry


def _templated(entry: Any) -> Any:
    """An entry with a placeholder in a value becomes a TemplateAttestation."""
    if isinstance(entry, dict) and any(
        isinstance(v, str) and _PLACEHOLDER_OPENER in v for v in entry.values()
    ):
        return {"platform": "template", "entry": entry}
    return entry


AttestationEntry = Annotated[
    SimAttestation | SnpAttestation | SgxAttestation | TdxAttestation | TemplateAttestation,
    Field(discriminator="platform"),
    BeforeValidator(_templated),
]


class InjectedFile(StrictModel):
    path: str
    content: str
    mode: str = "0600"

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or "/../" in value or value.endswith("/.."):
            raise ValueError("an injected file path must be absolute and contain no '..'")
        if value.endswith("/"):
            raise ValueError("an injected file path must name a file, not a directory")
        return value

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:04o}" if value > 0o777 else f"0{value}"
        if not isinstance(value, str) or not re.fullmatch(r"0?[0-7]{3}", value):
            raise ValueError('mode is an octal string such as "0400"')
        return value.rjust(4, "0")

    @property
    def mode_bits(self) -> int:
        return int(self.mode, 8)


def _session_name(value: str) -> str:
    if not SESSION_NAME.fullmatch(value):
        raise ValueError("a session name is lower-case segments separated by '/', e.g. acme/payments")
    return value


SessionName = Annotated[str, AfterValidator(_session_name)]


def _session_hash(value: str | None) -> str | None:
    if value is not None and not SESSION_HASH.fullmatch(value):
        raise ValueError("session_hash is a session hash: 64 lower-case hex digits (veil session hash)")
    return value


def _owner_id(value: str | None) -> str | None:
    if value is not None and not OWNER_ID.fullmatch(value):
        raise ValueError("owner is an owner id: 64 lower-case hex digits (veil owner id)")
    return value


def _unset(value: object) -> bool:
    return value is None or value == []


HashPin = Annotated[str | None, AfterValidator(_session_hash)]
OwnerPin = Annotated[str | None, AfterValidator(_owner_id)]

# Keys added after language version 1 was first hashed are left out of the canonical form
# while unset (``exclude_if``), so every session written before keeps its hash.


class ExportTarget(StrictModel):
    """A session a secret or volume is exported to, pinned to one version of it
    (``session_hash``: any update of the importer ends the export) or to the owner who
    created it (``owner``); without either, the CAS pins it to that session's creator when
    the exporting session is stored (docs/policy.md, "Sharing between sessions")."""

    session: SessionName
    session_hash: HashPin = None
    owner: OwnerPin = Field(default=None, exclude_if=_unset)


class SecretImport(StrictModel):
    """Where an imported secret comes from: another session that exports it to this one,
    pinned like an export target."""

    session: SessionName
    secret: str
    session_hash: HashPin = Field(default=None, exclude_if=_unset)
    owner: OwnerPin = Field(default=None, exclude_if=_unset)


class VolumeImport(StrictModel):
    """Where an imported volume comes from: another session that exports it to this one,
    pinned like an export target."""

    session: SessionName
    volume: str
    session_hash: HashPin = Field(default=None, exclude_if=_unset)
    owner: OwnerPin = Field(default=None, exclude_if=_unset)


#: what names another session in sharing
SessionPin = ExportTarget | SecretImport | VolumeImport


class VolumeDefinition(StrictModel):
    """A protected volume of the session (the CAS generates its key and tracks its tag), or
    one imported from another session (which keeps key and tag)."""

    model_config = ConfigDict(populate_by_name=True)

    name: str
    #: imported volumes: the exporter's mode applies
    mode: Literal["encrypted", "authenticated"] = "encrypted"
    #: on first use (no tag in the CAS yet), accept an empty storage directory and create
    #: a fresh volume there; without it, such a volume is refused.
    accept_fresh: bool = False
    #: a ``binary`` secret of 32 bytes used as the volume key instead of a CAS-generated one
    #: (a volume made outside the CAS, e.g. by ``veil image convert``).
    key: str | None = None
    #: the volume's tag while the CAS holds none (the state it was shipped in).
    initial_tag: str | None = None
    #: when the CAS learns the volume's new tag: when the program ends ("unmount"), or at
    #: every commit, before the fsync that caused it returns ("fsync": no rollback window)
    freshness: Literal["unmount", "fsync"] = Field(default="unmount", exclude_if=lambda v: v == "unmount")
    #: mounted read-only, at exactly the tag the CAS holds, which never moves: any number of
    #: instances start from the same storage (code shipped in an image); writes get EROFS
    readonly: bool = Field(default=False, exclude_if=lambda v: not v)
    #: sessions whose services may mount this volume (with its key and its one tag)
    export: list[ExportTarget] = Field(default_factory=list)
    #: this volume is another session's volume, exported to this one
    import_: VolumeImport | None = Field(default=None, alias="import")

    @model_validator(mode="after")
    def _imported(self) -> "VolumeDefinition":
        if self.import_ is not None:
            own = sorted(self.model_fields_set - {"name", "import_"})
            if own:
                raise ValueError(
                    f"an imported volume has only 'name' and 'import'; remove {', '.join(own)} "
                    "(the exporting session decides)"
                )
        if self.readonly and (self.accept_fresh or self.freshness != "unmount"):
            raise ValueError(
                "a read-only volume is never created fresh and has no commits to report: "
                "remove accept_fresh and freshness"
            )
        return self

    @field_validator("initial_tag")
    @classmethod
    def _tag(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-f]{64}", value):
            raise ValueError("a volume tag is 64 lower-case hex digits (from `veil volume tag`)")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SERVICE_NAME.fullmatch(value):
            raise ValueError("a volume name uses a-z, 0-9, '.', '_' and '-' and starts alphanumeric")
        return value


class ServiceVolume(StrictModel):
    """Where a service sees a volume; the encrypted storage is that directory itself."""

    name: str
    path: str

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/") or "/../" in value or value.endswith("/..") or value == "/":
            raise ValueError("a volume path is an absolute directory other than /, without '..'")
        return value.rstrip("/")


_ADDRESS = re.compile(r"(unix:/.+|\[?[0-9A-Za-z.:\-]*\]?:[0-9]{1,5})")


def _address(value: str) -> str:
    if not _ADDRESS.fullmatch(value):
        raise ValueError("an address is HOST:PORT or unix:/PATH")
    if not value.startswith("unix:") and not 0 < int(value.rsplit(":", 1)[1]) < 65536:
        raise ValueError("a port is between 1 and 65535")
    return value


def _identity(value: str) -> str:
    if value != "instance" and not SECRET_NAME.fullmatch(value):
        raise ValueError("an identity is 'instance' or the name of an x509 secret")
    return value


def _trust(value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed and not (value.startswith("ca:") and SECRET_NAME.fullmatch(value[3:])):
        choices = " or ".join(f"'{a}'" for a in allowed)
        raise ValueError(f"expected {choices} or 'ca:SECRET' (an x509-ca secret)")
    return value


def _server_auth(value: str) -> str:
    return _trust(value, ("session-ca",))


def _client_auth(value: str) -> str:
    return _trust(value, ("session-ca", "none"))


def trusted_ca_secret(auth: str) -> str | None:
    """The x509-ca secret named by ``ca:SECRET``; None for session-ca and none."""
    return auth[3:] if auth.startswith("ca:") else None


class ShieldServer(StrictModel):
    """TLS terminated in the runtime for clients of the program: listen -> forward (plain)."""

    listen: Annotated[str, AfterValidator(_address)]
    forward: Annotated[str, AfterValidator(_address)]
    #: ``instance`` (the certificate issued at attestation) or the name of an x509 secret
    identity: Annotated[str, AfterValidator(_identity)] = "instance"
    #: ``session-ca``, ``ca:SECRET`` (an x509-ca secret) or ``none``
    client_auth: Annotated[str, AfterValidator(_client_auth)] = "session-ca"


class ShieldClient(StrictModel):
    """The program connects in plain to ``listen`` (loopback); the runtime opens TLS to
    ``connect`` and checks the server against the session CA and ``server_name``."""

    listen: Annotated[str, AfterValidator(_address)]
    connect: Annotated[str, AfterValidator(_address)]
    server_name: str
    #: ``session-ca`` or ``ca:SECRET`` (an x509-ca secret)
    server_auth: Annotated[str, AfterValidator(_server_auth)] = "session-ca"
    identity: Annotated[str, AfterValidator(_identity)] = "instance"

    @field_validator("listen")
    @classmethod
    def _loopback(cls, value: str) -> str:
        if not (
            value.startswith("127.")
            or value.startswith("[::1]:")
            or value.startswith("localhost:")
            or value.startswith("unix:")
        ):
            raise ValueError("a client shield listens on loopback (127.0.0.1:PORT) or a unix socket")
        return value


#: what a shield needs of a policy secret, by role: a presented identity needs the chain and
#: the key, a trusted CA its certificate
SHIELD_SECRET_FORMATS = {"identity": ("chain", "key"), "ca": ("crt",)}


class Network(StrictModel):
    servers: list[ShieldServer] = Field(default_factory=list)
    clients: list[ShieldClient] = Field(default_factory=list)

    def secret_uses(self) -> Iterator[tuple[tuple[str | int, ...], str, str]]:
        """(where in the network section, secret name, role) for every shield field naming
        a policy secret; role is ``identity`` (kind x509) or ``ca`` (kind x509-ca)."""
        shields: list[tuple[tuple[str, int], str, str, str]] = [
            *((("servers", i), s.identity, "client_auth", s.client_auth) for i, s in enumerate(self.servers)),
            *((("clients", i), c.identity, "server_auth", c.server_auth) for i, c in enumerate(self.clients)),
        ]
        for where, identity, auth_field, auth in shields:
            if identity != "instance":
                yield (*where, "identity"), identity, "identity"
            if (ca := trusted_ca_secret(auth)) is not None:
                yield (*where, auth_field), ca, "ca"


class Service(StrictModel):
    name: str
    attestation: Annotated[list[AttestationEntry], Field(min_length=1)]
    command: Annotated[list[str], Field(min_length=1)]
    environment: dict[str, str] = Field(default_factory=dict)
    pwd: str = "/"
    files: list[InjectedFile] = Field(default_factory=list)
    volumes: list[ServiceVolume] = Field(default_factory=list)
    #: scratch directories: each gets a tmpfs in the program's mount namespace, holding a
    #: copy of what the directory held (logs, caches, pid files: never written to the
    #: measured root, gone with the program; docs/image.md). Left out of the hash when
    #: empty, so sessions written before it keep theirs.
    tmpfs: list[str] = Field(default_factory=list, exclude_if=lambda v: not v)
    network: Network = Field(default_factory=Network)
    #: whether `veil run ... -- ARGS` may append arguments; they are neither measured nor
    #: part of the session, so a host could choose them.
    allow_extra_args: bool = False
    #: what the runtime measures: the program (``command``) or the whole root file system
    #: it runs in (``image``, for converted images; docs/image.md).
    measure: Literal["command", "image"] = "command"

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SERVICE_NAME.fullmatch(value):
            raise ValueError("a service name uses a-z, 0-9, '.', '_' and '-' and starts alphanumeric")
        return value

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, value: Any) -> Any:
        if isinstance(value, str):
            raise ValueError('command is a list of arguments, e.g. ["/usr/bin/prog", "--flag"]')
        if isinstance(value, list):
            return [_scalar_to_text(v, "a command argument") for v in value]
        return value

    @field_validator("environment", mode="before")
    @classmethod
    def _environment(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for key in value:
                if not key or "=" in key or "\0" in key:
                    raise ValueError(f"'{key}' is not a valid environment variable name")
            return {k: _scalar_to_text(v, f"environment value {k}") for k, v in value.items()}
        return value

    @field_validator("pwd")
    @classmethod
    def _pwd(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("pwd must be an absolute path")
        return value

    @field_validator("tmpfs")
    @classmethod
    def _tmpfs(cls, value: list[str]) -> list[str]:
        cleaned = []
        for path in value:
            if not path.startswith("/") or path.rstrip("/") == "" or ".." in path.split("/") or "\0" in path:
                raise ValueError(
                    f"'{path}': a tmpfs path is an absolute directory other than /, without '..'"
                )
            cleaned.append(path.rstrip("/"))
        if len(set(cleaned)) != len(cleaned):
            raise ValueError("a tmpfs path is listed twice")
        return cleaned

    def launch(self) -> LaunchDescriptor:
        """What the CAS tells a runtime to measure for this service (the command as
        written, its pwd, the session's PATH, what to measure and the volume paths an image
        measurement leaves out); `veil session measure` computes from the same."""
        return LaunchDescriptor(
            list(self.command),
            self.pwd,
            self.environment.get("PATH"),
            self.measure,
            [v.path for v in self.volumes],
            gpu_evidence=any(
                e.entry.get("gpus") if isinstance(e, TemplateAttestation) else e.gpus
                for e in self.attestation
            ),
        )


ASCII_CHARSETS = {
    "alphanumeric": string.ascii_letters + string.digits,
    "letters": string.ascii_letters,
    "digits": string.digits,
    "hex": "0123456789abcdef",
    "printable": "".join(chr(c) for c in range(0x21, 0x7F)),
}
KEY_TYPES = ("P-256", "P-384", "Ed25519", "RSA-2048", "RSA-3072")
CERTIFICATE_KINDS = ("x509", "x509-ca")
_KIND_FIELDS = {
    "binary": {"size", "value", "encoding"},
    "private-key": {"key_type", "migrate"},
    "ascii": {"size", "value", "encoding", "charset"},
    "x509": {"private_key", "issuer", "common_name", "dns", "ip", "usage", "valid_days", "renew_before_days"},
    "x509-ca": {"private_key", "issuer", "common_name", "valid_days", "renew_before_days"},
}
_OPTIONAL_FIELDS = set().union(*_KIND_FIELDS.values())


class SecretDefinition(StrictModel):
    """A secret the CAS generates or holds: ascii / binary values (``size`` or ``value``),
    private keys, and X.509 certificates and CAs issued by the session CA or a session CA secret."""

    model_config = ConfigDict(populate_by_name=True)

    name: str
    kind: Literal["ascii", "binary", "private-key", "x509", "x509-ca"]
    size: Annotated[int, Field(ge=1, le=65536)] | None = None
    value: str | None = None
    encoding: Literal["utf-8", "hex", "base64"] | None = None
    key_type: Literal["P-256", "P-384", "Ed25519", "RSA-2048", "RSA-3072"] | None = None
    #: private keys: keep the key when the session is updated (otherwise a new key is made)
    migrate: bool | None = None
    private_key: str | None = None
    issuer: str | None = None
    common_name: str | None = None
    dns: list[str] | None = None
    ip: list[str] | None = None
    usage: list[Literal["server", "client"]] | None = None
    valid_days: Annotated[int, Field(ge=1, le=3650)] | None = None
    #: certificates are issued again this many days before they end (default: when a third
    #: of their validity is left), at the next provisioning of a service of the session
    renew_before_days: Annotated[int, Field(ge=1, le=3649)] | None = None
    #: generated ascii values: a named set (alphanumeric, letters, digits, hex, printable)
    #: or the characters to draw from
    charset: str | None = None
    #: sessions whose services may use this secret
    export: list[ExportTarget] = Field(default_factory=list)
    #: readable by anyone, without authentication (not for private keys; for an x509
    #: secret, the certificate and chain only)
    export_public: bool = False
    #: this secret is another session's, exported to this one (``kind`` must match)
    import_: SecretImport | None = Field(default=None, alias="import")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SECRET_NAME.fullmatch(value):
            raise ValueError("a secret name uses letters, digits, '_', '.' and '-'")
        return value

    @field_validator("value", mode="before")
    @classmethod
    def _value(cls, value: Any) -> Any:
        return _scalar_to_text(value, "a secret value")

    @field_validator("ip")
    @classmethod
    def _ips(cls, value: list[str] | None) -> list[str] | None:
        for address in value or []:
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(f"'{address}' is not an IP address") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "SecretDefinition":
        if self.import_ is not None:
            own = sorted(self.model_fields_set - {"name", "kind", "import_"})
            if own:
                raise ValueError(
                    f"an imported secret has only 'name', 'kind' and 'import'; remove {', '.join(own)} "
                    "(the exporting session decides)"
                )
            return self
        if self.export_public and self.kind == "private-key":
            raise ValueError("a private key cannot be export_public")
        misplaced = sorted(
            f for f in _OPTIONAL_FIELDS - _KIND_FIELDS[self.kind] if getattr(self, f) is not None
        )
        if misplaced:
            raise ValueError(
                f"{', '.join(repr(f) for f in misplaced)} does not apply to a {self.kind} secret"
            )
        if self.kind in CERTIFICATE_KINDS and self.private_key is None:
            raise ValueError(f"a {self.kind} secret names its key: private_key: <a private-key secret>")
        if self.renew_before_days is not None and self.renew_before_days >= self.effective_valid_days:
            raise ValueError("renew_before_days must be less than the validity (valid_days)")
        if self.charset is not None:
            if self.value is not None:
                raise ValueError("'charset' applies to generated values (size), not to an explicit value")
            if len(set(self.effective_charset)) < 2 or not all(
                " " <= c <= "~" for c in self.effective_charset
            ):
                raise ValueError(
                    f"charset is one of {', '.join(ASCII_CHARSETS)} or at least two printable "
                    "ASCII characters"
                )
        if self.value is not None and self.size is not None:
            raise ValueError("give either 'size' (generated) or 'value' (explicit), not both")
        if self.value is None and self.encoding is not None:
            raise ValueError("'encoding' applies only to an explicit 'value'")
        if self.kind == "binary" and self.value is not None and self.encoding not in ("hex", "base64"):
            raise ValueError("an explicit binary value needs 'encoding: hex' or 'encoding: base64'")
        if self.kind == "ascii" and self.encoding not in (None, "utf-8"):
            raise ValueError("an ascii secret's value is text; 'encoding' must be utf-8 or absent")
        return self

    @property
    def generated(self) -> bool:
        return self.value is None

    @property
    def generated_size(self) -> int:
        return self.size if self.size is not None else 32

    @property
    def binary_size(self) -> int | None:
        """The length in bytes of a binary secret (None if an explicit value is malformed)."""
        if self.value is None:
            return self.generated_size
        try:
            if self.encoding == "hex":
                return len(bytes.fromhex(self.value))
            return len(base64.b64decode(self.value, validate=True))
        except ValueError:
            return None

    @property
    def effective_charset(self) -> str:
        """The characters a generated ascii value is drawn from (each equally likely)."""
        charset = self.charset or "alphanumeric"
        return "".join(sorted(set(ASCII_CHARSETS.get(charset, charset))))

    @property
    def effective_key_type(self) -> str:
        return self.key_type or "P-256"

    @property
    def effective_issuer(self) -> str:
        return self.issuer or "session-ca"

    @property
    def effective_usage(self) -> list[str]:
        return list(self.usage) if self.usage else ["server", "client"]

    @property
    def effective_valid_days(self) -> int:
        return self.valid_days or (3650 if self.kind == "x509-ca" else 365)


class RequireAtLeast(StrictModel):
    model_config = ConfigDict(populate_by_name=True)

    require_at_least: Annotated[int, Field(ge=1, alias="require-at-least")]


class AccessPolicy(StrictModel):
    read: list[str] = Field(default_factory=lambda: ["CREATOR"])
    #: who may update the session; creating ``NAME/child`` sessions needs the same right
    update: list[str] = Field(default_factory=lambda: ["CREATOR"])
    #: how many of the ``update`` owners must approve (sign the new hash of) an update:
    #: ``any`` one of them (default), ``require-all``, or ``{require-at-least: N}``
    governance: Literal["any", "require-all"] | RequireAtLeast = "any"

    @model_validator(mode="after")
    def _quorum(self) -> "AccessPolicy":
        if self.governance == "any":
            return self
        if "ANY" in self.update or "NONE" in self.update:
            raise ValueError(
                "governance needs 'update' to list owners (CREATOR or key hashes), not ANY or NONE"
            )
        owners = len(set(self.update))
        if isinstance(self.governance, RequireAtLeast) and self.governance.require_at_least > owners:
            raise ValueError(
                f"require-at-least {self.governance.require_at_least} is more than the {owners} owner(s) "
                "listed under 'update'"
            )
        return self

    def required_approvals(self) -> int:
        """How many distinct ``update`` owners must approve an update."""
        if self.governance == "any":
            return 1
        if self.governance == "require-all":
            return len(set(self.update))
        return self.governance.require_at_least

    @field_validator("read", "update")
    @classmethod
    def _owners(cls, value: list[str]) -> list[str]:
        for owner in value:
            if owner not in OWNER_KEYWORDS and not re.fullmatch(r"[0-9a-f]{64}", owner):
                raise ValueError(
                    f"'{owner}' is neither CREATOR, ANY, NONE nor an owner key hash (64 hex digits)"
                )
        return value


class Security(StrictModel):
    tolerate: list[str] = Field(default_factory=list)
    #: with a tolerated TCB status other than UpToDate, only these advisories are accepted
    #: (absent: any advisory of a tolerated status).
    allowed_advisories: list[str] | None = None
    #: the registered sim platforms (ids from `veil cas platform list`) whose evidence the
    #: network CAS accepts for this session; the embedded CAS also accepts its own node
    sim_platforms: list[str] = Field(default_factory=list, exclude_if=_unset)

    @field_validator("sim_platforms")
    @classmethod
    def _platform_ids(cls, value: list[str]) -> list[str]:
        for item in value:
            if not PLATFORM_ID.fullmatch(item):
                raise ValueError(
                    f"'{item[:80]}' is not a platform id (64 lower-case hex digits, `veil cas platform list`)"
                )
        return sorted(set(value))

    @field_validator("tolerate")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        for item in value:
            if item not in TOLERANCES:
                raise ValueError(f"unknown tolerance '{item}' (known: {', '.join(TOLERANCES)})")
        return sorted(set(value))


class Session(StrictModel):
    name: str
    version: Literal["1"]
    predecessor: str | None = None
    access_policy: AccessPolicy = Field(default_factory=AccessPolicy)
    security: Security = Field(default_factory=Security)
    services: list[Service] = Field(default_factory=list)
    secrets: list[SecretDefinition] = Field(default_factory=list)
    volumes: list[VolumeDefinition] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SESSION_NAME.fullmatch(value):
            raise ValueError("a session name is lower-case segments separated by '/', e.g. acme/payments")
        return value

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> Any:
        return _scalar_to_text(value, "version")

    @field_validator("predecessor")
    @classmethod
    def _predecessor(cls, value: str | None) -> str | None:
        if value is not None and not SESSION_HASH.fullmatch(value):
            raise ValueError("predecessor is a session hash: 64 lower-case hex digits")
        return value

    def service(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)

    def no_service(self, name: str) -> str:
        """What to say of a service name this session does not have."""
        return f"no service '{name}' (services: {', '.join(s.name for s in self.services) or 'none'})"

    def secret(self, name: str) -> SecretDefinition | None:
        return next((s for s in self.secrets if s.name == name), None)

    def volume(self, name: str) -> VolumeDefinition | None:
        return next((v for v in self.volumes if v.name == name), None)

    @property
    def tolerates_sim(self) -> bool:
        return "sim" in self.security.tolerate
