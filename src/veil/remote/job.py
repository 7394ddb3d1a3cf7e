"""A remote job as the submitter keeps it, and the session that lets exactly its program in.

The record lives in ``$VEIL_HOME/remote/JOB/`` (mode 0700): ``job.json`` (where the job
runs, its session, the tags its volumes were sent with) and one key file per volume
(0600). The keys never leave this machine except inside the job's session on the CAS,
which only the submitter may read and which hands them to the attested program alone.
"""

import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from veil.remote.ssh import RemoteError

#: the volumes of a job, in the order they are mounted
VOLUMES = ("code", "input", "output")
#: the service of a job's session
SERVICE = "job"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
#: where a job run in a container image sees its directory (under /run, which the measured
#: root file system leaves out)
IMAGE_JOB_DIR = "/run/veil-job"
#: the tag of a job's converted image in the OCI layout sent to the host
IMAGE_TAG = "job"
#: the placeholders of a job's command line, replaced by the host's paths
PLACEHOLDERS = {"{code}": "code", "{input}": "input", "{output}": "output", "{scratch}": "scratch"}


def new_job_name() -> str:
    return time.strftime("job-%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def check_job_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise RemoteError(
            f"job name '{name}' is not valid: lower-case letters, digits, '.', '_' and '-', "
            "starting with a letter or digit, at most 63 characters"
        )
    return name


def session_name(owner_id: str, job: str) -> str:
    """A namespace per submitter (``remote-`` and 12 hex digits of the owner id): two
    submitters on one CAS never compete for names, and one cannot create sessions in the
    other's namespace."""
    return f"remote-{owner_id[:12]}/{job}"


@dataclass
class Job:
    name: str
    host: str
    cas: str
    session: str
    remote_dir: str
    output: str
    command: list[str]
    volumes: list[str]
    #: the tags the read-only volumes were sent with
    tags: dict[str, str] = field(default_factory=dict)
    detached: bool = False
    #: leave the job's files on the host (`--keep`)
    keep: bool = False
    created: float = field(default_factory=time.time)
    ssh: dict[str, str | None] = field(default_factory=dict)
    #: the container image the job runs in (`--image`), as given; None: a program of the host
    image: str | None = None

    @property
    def config_id(self) -> str:
        return f"{self.session}/{SERVICE}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Job":
        return cls(**raw)


class JobStore:
    """The submitter's jobs under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, name: str) -> Path:
        return self.root / check_job_name(name)

    def create(self, job: Job) -> Path:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory = self.directory(job.name)
        try:
            directory.mkdir(mode=0o700)
        except FileExistsError:
            raise RemoteError(f"a job named '{job.name}' exists already ({directory})") from None
        self.save(job)
        return directory

    def save(self, job: Job) -> None:
        target = self.directory(job.name) / "job.json"
        temporary = target.with_suffix(".tmp")
        temporary.write_text(json.dumps(job.to_json(), indent=2) + "\n")
        temporary.replace(target)

    def load(self, name: str) -> Job:
        path = self.directory(name) / "job.json"
        try:
            return Job.from_json(json.loads(path.read_text()))
        except FileNotFoundError:
            raise RemoteError(
                f"no job named '{name}' here ({self.root}); `veil remote list` shows them"
            ) from None
        except (ValueError, TypeError) as exc:
            raise RemoteError(f"{path} is not a job record: {exc}") from None

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.parent.name for p in self.root.glob("*/job.json"))

    def key_file(self, name: str, volume: str) -> Path:
        return self.directory(name) / f"{volume}.key"

    def save_key(self, name: str, volume: str, key: bytes) -> None:
        """Keep a volume's key (a new file, 0600, synced)."""
        descriptor = os.open(self.key_file(name, volume), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as out:
            out.write(key)
            out.flush()
            os.fsync(out.fileno())

    def key(self, name: str, volume: str) -> bytes:
        path = self.key_file(name, volume)
        try:
            key = path.read_bytes()
        except FileNotFoundError:
            raise RemoteError(
                f"job '{name}': no key for its {volume} volume here ({path}); only the submitter "
                "who made the job holds it"
            ) from None
        if len(key) != 32:
            raise RemoteError(f"{path} is not a 32-byte volume key")
        return key


def substitute(command: list[str], remote_dir: str) -> list[str]:
    """The command with ``{code}``, ``{input}``, ``{output}`` and ``{scratch}`` replaced by
    the job's directories as its program sees them (in ``remote_dir``)."""
    result = []
    for argument in command:
        replaced = argument
        for placeholder, directory in PLACEHOLDERS.items():
            replaced = replaced.replace(placeholder, f"{remote_dir}/{directory}")
        result.append(replaced)
    return result


@dataclass(frozen=True)
class JobImage:
    """What a job run in a converted container image takes from it: the image's
    environment, its scratch directories (docs/image.md), and the measurement of its root."""

    environment: dict[str, str]
    tmpfs: list[str]
    measurement: str


@dataclass(frozen=True)
class JobSession:
    """What the session of a job says."""

    name: str
    command: list[str]
    #: the job's directory as its program sees it (the host's, or IMAGE_JOB_DIR)
    remote_dir: str
    attestation: list[dict[str, Any]]
    keys: dict[str, bytes]
    tags: dict[str, str]
    tolerate: list[str]
    sim_platforms: list[str]
    #: the job runs in this image: its root file system is measured, not a program
    image: JobImage | None = None

    def text(self) -> str:
        """The session's YAML: only its creator reads or updates it; the program runs with
        an environment of its own (no host variables), HOME and TMPDIR on a tmpfs that
        vanishes with it, code and input read-only at exactly the tags sent, output fresh."""
        scratch = f"{self.remote_dir}/scratch"
        volumes: list[dict[str, Any]] = []
        for name in self.keys:
            volume: dict[str, Any] = {"name": name, "mode": "encrypted", "key": f"{name}_key"}
            if name == "output":
                volume["accept_fresh"] = True
            else:
                volume |= {"readonly": True, "initial_tag": self.tags[name]}
            volumes.append(volume)
        environment = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
        if self.image is not None:
            environment |= self.image.environment
        service: dict[str, Any] = {
            "name": SERVICE,
            **({"measure": "image"} if self.image is not None else {}),
            "attestation": self.attestation,
            "command": self.command,
            "environment": environment | {"HOME": scratch, "TMPDIR": scratch},
            "pwd": scratch,
            "tmpfs": [scratch, *(self.image.tmpfs if self.image is not None else [])],
            "volumes": [{"name": n, "path": f"{self.remote_dir}/{n}"} for n in self.keys],
        }
        document: dict[str, Any] = {
            "name": self.name,
            "version": "1",
            "access_policy": {"read": ["CREATOR"], "update": ["CREATOR"]},
            "security": {"tolerate": self.tolerate, "sim_platforms": self.sim_platforms},
            "services": [service],
            "volumes": volumes,
            "secrets": [
                {"name": f"{n}_key", "kind": "binary", "value": key.hex(), "encoding": "hex"}
                for n, key in self.keys.items()
            ],
        }
        return "# a veil remote job (veil remote run); its keys are the job's volume keys\n" + yaml.safe_dump(
            document, sort_keys=False, width=1000
        )
