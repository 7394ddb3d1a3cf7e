"""Network shield: direct vs veil's shields vs stunnel4 configured the same way.

Topology for the shielded paths: load -> client tunnel (plain on loopback) -> TLS 1.3 with
mutual authentication (P-256 certificates of one CA, server name checked) -> server tunnel
-> program. Each tunnel runs in its own process, as in production. Measures redis-benchmark
GET and SET (requests/s and p50 latency, 50 clients) and bulk throughput (one connection,
512 MiB pushed to a sink). Needs redis-server, redis-benchmark and stunnel4
(`make bench-shield` installs them).

Run: .venv/bin/python bench/shield.py [--requests 100000] [--bulk-mib 512]
"""

import argparse
import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from veil.crypto.x509ca import CertificateAuthority


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_port(port: int) -> None:
    deadline = time.time() + 20
    while time.time() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def issue(ca: CertificateAuthority, service: str, directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = ca.issue_instance_certificate(key.public_key(), "bench/app", service)
    cert_path, key_path = directory / f"{service}.crt", directory / f"{service}.key"
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    key_path.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


SHIELD_PROCESS = """
import json, signal, sys
from pathlib import Path
from veil.policy.model import Network
from veil.shield import ShieldSet, TlsIdentity
spec = json.loads(sys.argv[1])
read = lambda name: Path(spec[name]).read_bytes()
identity = TlsIdentity(read("cert"), read("key"), read("ca"))
shields = ShieldSet(Network.model_validate(spec["network"]), identity)
shields.start()
signal.sigwait({signal.SIGTERM, signal.SIGINT})
shields.stop()
"""


@contextmanager
def processes(*commands: list[str]) -> Iterator[None]:
    started = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for c in commands]
    try:
        yield
    finally:
        for process in started:
            process.terminate()
        for process in started:
            process.wait(timeout=20)


@contextmanager
def veil_path(work: Path, ca_path: Path, target: int, certs: dict[str, tuple[Path, Path]]) -> Iterator[int]:
    tls, local = free_port(), free_port()
    server = {
        "cert": str(certs["app"][0]),
        "key": str(certs["app"][1]),
        "ca": str(ca_path),
        "network": {"servers": [{"listen": f"127.0.0.1:{tls}", "forward": f"127.0.0.1:{target}"}]},
    }
    client = {
        "cert": str(certs["web"][0]),
        "key": str(certs["web"][1]),
        "ca": str(ca_path),
        "network": {
            "clients": [{"listen": f"127.0.0.1:{local}", "connect": f"127.0.0.1:{tls}", "server_name": "app"}]
        },
    }
    with processes(
        [sys.executable, "-c", SHIELD_PROCESS, json.dumps(server)],
        [sys.executable, "-c", SHIELD_PROCESS, json.dumps(client)],
    ):
        wait_port(tls)
        wait_port(local)
        yield local


@contextmanager
def stunnel_path(
    work: Path, ca_path: Path, target: int, certs: dict[str, tuple[Path, Path]]
) -> Iterator[int]:
    tls, local = free_port(), free_port()
    common = f"foreground = yes\npid =\nsyslog = no\nCAfile = {ca_path}\nsslVersionMin = TLSv1.3\n"
    (work / "server.conf").write_text(
        common + f"[app]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{target}\ncert = {certs['app'][0]}\n"
        f"key = {certs['app'][1]}\nverifyChain = yes\n"
    )
    (work / "client.conf").write_text(
        common + f"[web]\nclient = yes\naccept = 127.0.0.1:{local}\nconnect = 127.0.0.1:{tls}\n"
        f"cert = {certs['web'][0]}\nkey = {certs['web'][1]}\nverifyChain = yes\ncheckHost = app\n"
    )
    with processes(["stunnel4", str(work / "server.conf")], ["stunnel4", str(work / "client.conf")]):
        wait_port(tls)
        wait_port(local)
        yield local


def redis_benchmark(port: int, requests: int) -> dict[str, dict[str, float]]:
    out = subprocess.run(
        [
            "redis-benchmark",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-t",
            "get,set",
            "-n",
            str(requests),
            "-c",
            "50",
            "--csv",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = csv.DictReader(io.StringIO(out))
    return {r["test"]: {"rps": float(r["rps"]), "p50_ms": float(r["p50_latency_ms"])} for r in rows}


SINK = """
import socket, sys
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
    while True:
        c, _ = s.accept()
        total = 0
        while data := c.recv(1 << 20):
            total += len(data)
        c.sendall(str(total).encode()); c.close()
"""


def bulk(port: int, mib: int) -> float:
    block = os.urandom(1 << 20)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        for _ in range(mib):
            sock.sendall(block)
    # the sender's view: how fast the path takes data (socket buffers hold under 1% of it)
    return mib * (1 << 20) / 1e6 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--bulk-mib", type=int, default=512)
    args = parser.parse_args()
    for tool in ("redis-server", "redis-benchmark", "stunnel4"):
        if not shutil.which(tool):
            sys.exit(f"bench/shield.py needs {tool}: run `make bench-shield`")
    with tempfile.TemporaryDirectory(prefix="veil-bench-shield-") as tmp:
        work = Path(tmp)
        ca = CertificateAuthority.create("veil session CA bench/app")
        ca_path = work / "ca.pem"
        ca_path.write_text(ca.certificate_pem)
        certs = {name: issue(ca, name, work) for name in ("app", "web")}
        redis_port, sink_port = free_port(), free_port()
        results: dict[str, dict[str, float]] = {}
        with processes(
            [
                "redis-server",
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                tmp,
            ],
            [sys.executable, "-c", SINK, str(sink_port)],
        ):
            wait_port(redis_port)
            wait_port(sink_port)
            paths = {"direct": None, "veil": veil_path, "stunnel": stunnel_path}
            for name, path in paths.items():
                if path is None:
                    redis_local, sink_local = redis_port, sink_port
                    row = redis_benchmark(redis_local, args.requests)
                    row_bulk = bulk(sink_local, args.bulk_mib)
                else:
                    with path(work, ca_path, redis_port, certs) as redis_local:
                        row = redis_benchmark(redis_local, args.requests)
                    with path(work, ca_path, sink_port, certs) as sink_local:
                        row_bulk = bulk(sink_local, args.bulk_mib)
                results[name] = {
                    "GET rps": row["GET"]["rps"],
                    "GET p50 ms": row["GET"]["p50_ms"],
                    "SET rps": row["SET"]["rps"],
                    "SET p50 ms": row["SET"]["p50_ms"],
                    "bulk MB/s": row_bulk,
                }
                print(f"measured {name}", file=sys.stderr)
    print(f"{'metric':<12}" + "".join(f"{n:>12}" for n in results) + "   veil/stunnel")
    for metric in next(iter(results.values())):
        ratio = results["veil"][metric] / results["stunnel"][metric]
        print(f"{metric:<12}" + "".join(f"{results[n][metric]:>12.2f}" for n in results) + f"   {ratio:.2f}x")
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
