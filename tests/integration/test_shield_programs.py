"""Real programs from Debian behind the shield: memcached, redis-server with redis-cli and
redis-benchmark; a loopback capture; 1,000 concurrent connections without leaked fds."""

import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_shield import identity
from tests.net import free_port, wait_port
from veil.crypto.x509ca import CertificateAuthority
from veil.policy.model import Network, ShieldClient, ShieldServer
from veil.shield import ShieldSet

pytestmark = pytest.mark.skipif(
    not all(
        shutil.which(p) for p in ("memcached", "redis-server", "redis-cli", "redis-benchmark", "tcpdump")
    ),
    reason="needs memcached, redis-server, redis-tools and tcpdump (scripts/os-packages.txt)",
)


class Shielded:
    """program <- server shield (TLS) <- client shield <- plain client on ``local``."""

    def __init__(self, app_port: int, service: str) -> None:
        self.ca = CertificateAuthority.create("veil session CA test/app")
        self.tls, self.local = free_port(), free_port()
        self.server = ShieldSet(
            Network(servers=[ShieldServer(listen=f"127.0.0.1:{self.tls}", forward=f"127.0.0.1:{app_port}")]),
            identity(self.ca, service),
        )
        self.client = ShieldSet(
            Network(
                clients=[
                    ShieldClient(
                        listen=f"127.0.0.1:{self.local}", connect=f"127.0.0.1:{self.tls}", server_name=service
                    )
                ]
            ),
            identity(self.ca, "web"),
        )
        self.server.start()
        self.client.start()

    def stop(self) -> None:
        self.client.stop()
        self.server.stop()


@pytest.fixture
def memcached() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        ["memcached", "-u", "root", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-c", "4096"]
    )
    wait_port(port)
    yield port
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
    )
    wait_port(port)
    yield port
    process.terminate()
    process.wait(timeout=10)


def memcached_roundtrip(port: int, key: str, value: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"set %s 0 0 %d\r\n%s\r\nget %s\r\n" % (key.encode(), len(value), value, key.encode()))
        reply = b""
        while not reply.endswith(b"END\r\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
        return reply


def test_memcached_behind_a_server_shield_with_a_client_shield_in_front(memcached: int) -> None:
    shielded = Shielded(memcached, "cache")
    try:
        reply = memcached_roundtrip(shielded.local, "greeting", b"hello-memcached")
        assert reply == b"STORED\r\nVALUE greeting 0 15\r\nhello-memcached\r\nEND\r\n"
    finally:
        shielded.stop()


def test_redis_cli_and_redis_benchmark_through_shields(redis: int) -> None:
    shielded = Shielded(redis, "redis")
    try:
        cli = ["redis-cli", "-h", "127.0.0.1", "-p", str(shielded.local)]
        assert (
            subprocess.run([*cli, "SET", "k", "through-tls"], capture_output=True, text=True).stdout.strip()
            == "OK"
        )
        assert (
            subprocess.run([*cli, "GET", "k"], capture_output=True, text=True).stdout.strip() == "through-tls"
        )
        bench = subprocess.run(
            [
                "redis-benchmark",
                "-h",
                "127.0.0.1",
                "-p",
                str(shielded.local),
                "-t",
                "set,get",
                "-n",
                "3000",
                "-c",
                "10",
                "-q",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert bench.returncode == 0
        assert "SET:" in bench.stdout and "GET:" in bench.stdout and "requests per second" in bench.stdout
    finally:
        shielded.stop()


def test_a_capture_on_loopback_shows_no_plaintext_on_the_shielded_path(redis: int, tmp_path: Path) -> None:
    shielded = Shielded(redis, "redis")
    marker = "VEIL-CAPTURE-MARKER-7f3a"
    captures = {}
    try:
        for name, port in (("shielded", shielded.tls), ("program", redis)):
            pcap = tmp_path / f"{name}.pcap"
            dump = subprocess.Popen(
                ["tcpdump", "-i", "lo", "-U", "-n", "-w", str(pcap), f"tcp port {port}"],
                stderr=subprocess.PIPE,
                text=True,
            )
            assert dump.stderr is not None
            while "listening on" not in dump.stderr.readline():
                pass
            time.sleep(0.2)
            subprocess.run(
                ["redis-cli", "-h", "127.0.0.1", "-p", str(shielded.local), "SET", "secret", marker],
                capture_output=True,
                check=True,
            )
            time.sleep(1.0)
            dump.send_signal(signal.SIGINT)
            dump.wait(timeout=10)
            captures[name] = pcap.read_bytes()
    finally:
        shielded.stop()
    assert len(captures["shielded"]) > 1000, "the capture saw the TLS traffic"
    assert marker.encode() not in captures["shielded"]
    assert marker.encode() in captures["program"], (
        "control: the same capture sees plaintext on the program's port"
    )


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_thousand_concurrent_connections_and_abrupt_disconnects_leak_nothing(memcached: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    shielded = Shielded(memcached, "cache")
    try:
        baseline = _fds()
        sockets = []
        for _ in range(1000):
            sockets.append(socket.create_connection(("127.0.0.1", shielded.local), timeout=30))
        for index, sock in enumerate(sockets):
            sock.sendall(b"set k%d 0 0 1\r\nx\r\n" % index)
        for sock in sockets:
            assert sock.recv(100) == b"STORED\r\n"
        for index, sock in enumerate(sockets):
            if index % 2:  # abrupt: RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        deadline = time.time() + 30
        while _fds() > baseline and time.time() < deadline:
            time.sleep(0.2)
        assert _fds() <= baseline, f"{_fds() - baseline} descriptors left open"
        assert shielded.client.connections == 1000
        assert memcached_roundtrip(shielded.local, "after", b"ok").startswith(b"STORED")
    finally:
        shielded.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
