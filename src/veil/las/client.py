"""Talking to a LAS (``VEIL_LAS_ADDR``): ``unix:PATH``, a socket path, or ``HOST:PORT``."""

import base64
import http.client
import json
import socket
from dataclasses import dataclass
from typing import Any

from veil.errors import VeilError
from veil.protocol import Evidence


class LasUnavailable(VeilError):
    """The LAS cannot be reached or answered with an error."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=30)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


@dataclass(frozen=True)
class LasClient:
    address: str

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.address.startswith("unix:") or self.address.startswith("/"):
            conn: http.client.HTTPConnection = _UnixConnection(self.address.removeprefix("unix:"))
        else:
            host, _, port = self.address.removeprefix("http://").rpartition(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body).encode())
            response = conn.getresponse()
            answer: dict[str, Any] = json.loads(response.read() or b"{}")
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise LasUnavailable(f"cannot reach the LAS at {self.address}: {exc}") from None
        finally:
            conn.close()
        if response.status != 200:
            raise LasUnavailable(f"the LAS at {self.address} refused: {answer.get('error', response.status)}")
        return answer

    def platform_public_key(self) -> bytes:
        return base64.b64decode(self._call("GET", "/v1/platform")["public_key"])

    def collect(self, report_data: bytes, measurement: str) -> Evidence:
        answer = self._call(
            "POST", "/v1/evidence", {"report_data": report_data.hex(), "measurement": measurement}
        )
        return Evidence(str(answer["platform"]), base64.b64decode(answer["data"]))
