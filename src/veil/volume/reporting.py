"""Reporting each commit's tag before fsync returns (a volume's ``freshness: fsync``).

The mount daemon cannot talk to the CAS itself: the runtime that started it holds the CAS
connection and the instance key that signs tag updates. So the two share a socket pair:
the daemon sends ``{previous, tag}`` after a commit and waits; the runtime pushes it to the
CAS (compare-and-swap) and answers "ok" or the refusal. A refusal, or a runtime gone, fails
the fsync (EIO), and the volume takes no more writes: its state could not be made the one
the CAS holds.

Messages travel on a SOCK_SEQPACKET pair (``pair()``), one report per packet.
"""

import json
import logging
import socket
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)
_MAX = 4096


def pair() -> tuple[socket.socket, socket.socket]:
    """(the runtime's end, the daemon's end)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


class ReportRefused(OSError):
    """The CAS did not take the tag, or nobody answered."""


class TagReporter:
    """The daemon's side: one report at a time, waited for."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def __call__(self, previous: str | None, tag: str) -> None:
        try:
            self._sock.sendall(json.dumps({"previous": previous, "tag": tag}).encode())
            answer = self._sock.recv(_MAX)
        except OSError as exc:
            raise ReportRefused(f"the runtime did not take the tag: {exc}") from None
        if answer != b"ok":
            raise ReportRefused(answer.decode(errors="replace") or "the runtime is gone")


def serve_reports(
    sock: socket.socket, push: Callable[[str | None, str], None], name: str
) -> threading.Thread:
    """The runtime's side, in a thread: push every reported tag; answer each report."""

    def loop() -> None:
        while True:
            try:
                message = sock.recv(_MAX)
            except OSError:
                return
            if not message:
                return
            try:
                request = json.loads(message)
                push(request["previous"], str(request["tag"]))
            except Exception as exc:  # any refusal goes back to the daemon, which fails the fsync
                log.error("volume '%s': the CAS did not take a commit's tag: %s", name, exc)
                answer = f"refused: {exc}"[:_MAX].encode()
            else:
                answer = b"ok"
            try:
                sock.sendall(answer)
            except OSError:
                return

    thread = threading.Thread(target=loop, name=f"veil-report-{name}", daemon=True)
    thread.start()
    return thread


__all__ = ["ReportRefused", "TagReporter", "pair", "serve_reports"]
