"""The client of the embedded CAS server (``veil.runtime.embedded_server``): the same CAS,
kept warm in a process of the user's own, reached over a Unix socket under $VEIL_HOME.

One request per connection: a JSON object, then EOF; one JSON object back. Every request
carries the fingerprint of the veil code that sent it; a server running other code says
"stale" and exits, and the client does the work in-process. Errors come back as the
exceptions the in-process path raises (a policy error's problems, a refusal's reason), so
the user sees the same lines either way. This module imports neither the CAS nor the
session model: that is its point (docs/benchmarks.md, "CLI start-up").
"""

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import veil
from veil.errors import VeilError
from veil.interpreter import own_module
from veil.policy.errors import PolicyError, PolicyProblem
from veil.protocol import (
    AttestationGrant,
    AttestationRefused,
    AttestationRequest,
    LaunchDescriptor,
    VolumeTagUpdate,
)

#: $VEIL_EMBEDDED_SERVER: "off" never starts nor uses the server; else the seconds an idle
#: server waits before it exits (default 120)
SETTING = "VEIL_EMBEDDED_SERVER"
DEFAULT_IDLE_SECONDS = 120
#: largest request or answer (a session file, evidence, a sealed bundle)
MAX_MESSAGE = 4 << 20


class ServerUnavailable(Exception):
    """No server answered (none runs, or it runs other code): do the work in-process."""


class RemoteFailure(VeilError):
    """A failure the server reported, with the exit code it carries."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def idle_seconds() -> float | None:
    """How long a started server waits for work; None: the server is off."""
    value = os.environ.get(SETTING, "").strip().lower()
    if value in ("off", "0", "no", "false"):
        return None
    try:
        return float(value) if value else DEFAULT_IDLE_SECONDS
    except ValueError:
        return DEFAULT_IDLE_SECONDS


def code_fingerprint() -> str:
    """The veil code this process runs: the interpreter, the version, and the size and
    modification time of every module of the package (~1 ms)."""
    root = Path(veil.__file__).parent
    parts = [os.path.realpath(sys.executable), veil.__version__]
    stack = [str(root)]
    while stack:
        for entry in sorted(os.scandir(stack.pop()), key=lambda e: e.name):
            if entry.is_dir(follow_symlinks=False) and entry.name != "__pycache__":
                stack.append(entry.path)
            elif entry.name.endswith(".py"):
                info = entry.stat()
                parts.append(f"{entry.path}:{info.st_size}:{info.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def exchange(path: Path, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
    """Send one request, read one answer. ServerUnavailable if nothing listens."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except OSError as exc:
            raise ServerUnavailable(str(exc)) from None
        try:
            sock.sendall(json.dumps(request).encode())
            sock.shutdown(socket.SHUT_WR)
            answer = read_message(sock)
        except (OSError, ValueError) as exc:
            raise ServerUnavailable(f"the embedded CAS server did not answer: {exc}") from None
    if not isinstance(answer, dict) or answer.get("stale"):
        raise ServerUnavailable("the embedded CAS server runs other code")
    return answer


def read_message(sock: socket.socket) -> Any:
    """One JSON value, sent whole before EOF, at most MAX_MESSAGE bytes."""
    chunks: list[bytes] = []
    size = 0
    while chunk := sock.recv(1 << 16):
        size += len(chunk)
        if size > MAX_MESSAGE:
            raise ValueError("message too large")
        chunks.append(chunk)
    return json.loads(b"".join(chunks))


def raise_error(error: dict[str, Any]) -> None:
    """The exception the in-process path would have raised."""
    kind, message = error.get("kind"), str(error.get("message", "the embedded CAS server failed"))
    if kind == "policy":
        raise PolicyError([PolicyProblem(**problem) for problem in error.get("problems", [])])
    if kind == "refused":
        raise AttestationRefused(message)
    raise RemoteFailure(message, int(error.get("exit_code", 1)))


@dataclass(frozen=True)
class Prepared:
    """The session brought to the file's version; what the service runs."""

    message: str
    config_id: str
    launch: LaunchDescriptor


@dataclass
class LocalCasClient:
    """The CasClient interface (and the policy run's preparation) over the server's socket.

    ``push_in_process`` pushes a volume tag to the same CAS without the server: a program
    that ran longer than the server's idle time finds it gone when it ends."""

    socket_path: Path
    fingerprint: str
    push_in_process: Callable[[VolumeTagUpdate], None]

    @property
    def sim(self) -> bool:
        return True

    def _call(self, op: str, **fields: Any) -> dict[str, Any]:
        answer = exchange(self.socket_path, {"op": op, "fingerprint": self.fingerprint, **fields})
        if "error" in answer:
            raise_error(answer["error"])
        return answer

    def _call_after_prepare(self, op: str, **fields: Any) -> dict[str, Any]:
        try:
            return self._call(op, **fields)
        except ServerUnavailable as exc:
            raise RemoteFailure(f"the embedded CAS server stopped answering: {exc}", 1) from None

    def prepare(self, text: str, source: str, service: str, extra_args: bool) -> Prepared:
        """ServerUnavailable if no server answers: nothing was done, do it in-process."""
        answer = self._call("prepare", text=text, source=source, service=service, extra_args=extra_args)
        return Prepared(
            str(answer["message"]), str(answer["config_id"]), LaunchDescriptor.from_json(answer["launch"])
        )

    def nonce(self) -> bytes:
        return base64.b64decode(self._call_after_prepare("nonce")["nonce"])

    def attest(self, request: AttestationRequest) -> AttestationGrant:
        answer = self._call_after_prepare("attest", request=request.to_json())
        return AttestationGrant.from_json(answer["grant"])

    def push_volume_tag(self, update: VolumeTagUpdate) -> None:
        try:
            self._call("push_volume_tag", update=update.to_json())
        except ServerUnavailable:
            self.push_in_process(update)


#: longest Unix socket path Linux takes (sun_path, with its NUL)
MAX_SOCKET_PATH = 107
#: the server's log is started afresh past this size
MAX_LOG = 1 << 20


def can_serve(socket_path: Path) -> bool:
    """Whether a server can listen at ``socket_path`` (a deep home cannot: the run then
    stays in-process rather than start a server that cannot bind)."""
    return len(os.fsencode(socket_path)) <= MAX_SOCKET_PATH


def start_server(home: Path, idle: float) -> None:
    """Start the server for ``home`` in the background, in a session of its own; it exits
    by itself once idle (or when another one already serves ``home``)."""
    argv, environment = own_module("veil.runtime.embedded_server", str(home), str(idle))
    log_path = home / "embedded-server.log"
    restart = log_path.exists() and log_path.stat().st_size > MAX_LOG
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if restart else os.O_APPEND), 0o600)
    with os.fdopen(log, "ab") as output:
        subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
            env=environment,
        )
