"""The embedded CAS server: the embedded CAS of one $VEIL_HOME, kept warm for `veil run`.

Started in the background by the first ``veil run --policy`` of a home (unless
VEIL_EMBEDDED_SERVER=off) as ``python -m veil.runtime.embedded_server HOME IDLE``; later runs
send it their session file and attestation over ``HOME/cas.sock`` and import neither the
CAS nor the session model (~0.1 s of every run). It holds nothing between requests: each
one opens the CAS under HOME and closes it, so that a change made meanwhile by another veil
command (or a restored database) is what the next request sees. Requests are served one at
a time, from the owner's uid only (SO_PEERCRED; the socket is 0600 in the 0700 home).

It exits after IDLE seconds without a request, when its socket is removed or replaced, or
when a request comes from other veil code (the client then works in-process and starts a
new server). The protocol is in veil.client.local; docs/sim-mode.md describes the server.
"""

import base64
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import select
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any

from veil.client.local import code_fingerprint, read_message
from veil.errors import VeilError
from veil.policy.errors import PolicyError
from veil.protocol import AttestationRefused, AttestationRequest, VolumeTagUpdate
from veil.runtime.run import EmbeddedHome, checked_session, prepare_policy_run

log = logging.getLogger("veil.embedded-server")

#: how long one connection may take to send its request
REQUEST_TIMEOUT = 5.0


class _Stale(Exception):
    """A request from other veil code: this server must go."""


def peer_uid(conn: socket.socket) -> int:
    _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return int(uid)


@dataclasses.dataclass
class EmbeddedServer:
    home: EmbeddedHome
    fingerprint: str

    def answer(self, request: Any) -> dict[str, Any]:
        """The answer to one request (an error as data: the client raises it)."""
        if not isinstance(request, dict):
            return _failure("a request is a JSON object")
        if request.get("fingerprint") != self.fingerprint:
            raise _Stale
        try:
            return self._dispatch(request)
        except PolicyError as exc:
            return {"error": {"kind": "policy", "problems": [dataclasses.asdict(p) for p in exc.problems]}}
        except AttestationRefused as exc:
            return {"error": {"kind": "refused", "message": exc.reason}}
        except VeilError as exc:
            return _failure(str(exc), exc.exit_code)
        except (KeyError, TypeError, ValueError) as exc:
            return _failure(f"a malformed request: {type(exc).__name__}: {exc}")

    def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "prepare":
            source, service = str(request["source"]), str(request["service"])
            session = checked_session(str(request["text"]), source, service, bool(request["extra_args"]))
        elif op not in ("nonce", "attest", "push_volume_tag"):
            return _failure(f"unknown operation {op!r}")
        cas, _key = self.home.open()
        try:
            if op == "prepare":
                prepared = prepare_policy_run(cas, session, str(request["text"]), source, service)
                return {
                    "message": prepared.message,
                    "config_id": prepared.config_id,
                    "launch": prepared.launch.to_json(),
                }
            if op == "nonce":
                return {"nonce": base64.b64encode(cas.new_nonce()).decode()}
            if op == "attest":
                return {"grant": cas.attest(AttestationRequest.from_json(request["request"])).to_json()}
            cas.push_volume_tag(VolumeTagUpdate.from_json(request["update"]))
            return {}
        finally:
            cas.close()


def _failure(message: str, exit_code: int = 1) -> dict[str, Any]:
    return {"error": {"kind": "failure", "message": message, "exit_code": exit_code}}


def _send(conn: socket.socket, answer: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(answer).encode())


def _lock(path: Path, wait: float) -> int | None:
    """The server's lock (one server per home); None if another holds it after ``wait`` s."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.05)


def serve(home: EmbeddedHome, idle: float) -> None:
    lock = _lock(home.root / "cas.sock.lock", wait=3.0)
    if lock is None:
        log.info("another embedded CAS server serves %s", home.root)
        return
    server = EmbeddedServer(home, code_fingerprint())
    path = home.socket
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(str(path))
    finally:
        os.umask(old_umask)
    listener.listen(16)
    identity = os.stat(path).st_ino
    owner = os.geteuid()
    log.info("serving %s (pid %d, exits after %.0f s idle)", path, os.getpid(), idle)
    last = time.monotonic()
    try:
        while True:
            if not select.select([listener], [], [], 1.0)[0]:
                if time.monotonic() - last > idle:
                    log.info("idle for %.0f s: exiting", idle)
                    return
                try:
                    if os.stat(path).st_ino != identity:
                        return
                except FileNotFoundError:
                    return
                continue
            conn, _ = listener.accept()
            with conn:
                last = time.monotonic()
                conn.settimeout(REQUEST_TIMEOUT)
                try:
                    request = read_message(conn)
                except (OSError, ValueError) as exc:
                    _send(conn, _failure(f"an unreadable request: {exc}"))
                    continue
                if peer_uid(conn) != owner:
                    _send(conn, _failure(f"the embedded CAS server of {home.root} serves uid {owner} only"))
                    continue
                try:
                    _send(conn, server.answer(request))
                except _Stale:
                    _send(conn, {"stale": True})
                    log.info("a request from other veil code: exiting")
                    return
                except Exception:
                    log.exception("internal error")
                    _send(conn, _failure("internal error in the embedded CAS server (see its log)"))
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == identity:
                path.unlink()
        os.close(lock)


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s veil embedded server: %(message)s")
    serve(EmbeddedHome(Path(sys.argv[1])), float(sys.argv[2]))


if __name__ == "__main__":
    main()
