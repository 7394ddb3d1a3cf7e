"""Attested provisions per second against one network CAS on loopback (sim evidence).

One provision is what a runtime does at start: nonce request, key generation, evidence,
attestation request, bundle decryption and certificate check (veil.runtime.attest.provision),
over HTTPS with keep-alive. The CAS (`veil cas serve --workers W`) and the load generator
(2 processes x N/2 threads) share this machine. Prints provisions/s and p50/p99 latency at
each concurrency, and the ratio to the published anchor (Veraison: ~400 verifications/s
on three small cloud instances; not measured here).

Then the floor, in the same run: the two requests of a provision (recorded, same bodies)
replayed by the same client code against the same server stack (aiohttp, uvloop, TLS 1.3,
W processes) whose handlers only parse the body and return the recorded answer. No CAS
can provision faster than its HTTP stack answers nothing on the same machine.

Run: .venv/bin/python bench/cas.py [--seconds 10] [--concurrency 1 16 64] [--workers 2] [--json]
"""

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from veil.cas.identity import CasIdentity
from veil.cas.server.serve import listening_socket, run_site
from veil.client.config import ClientConfig
from veil.client.http import CasConnection, HttpCasClient, OwnerClient
from veil.client.pinning import attest_cas
from veil.crypto import BundleKeyPair, PlatformSigningKey, open_to_key, seal_to_key
from veil.crypto.x509ca import CertificateAuthority
from veil.runtime.attest import provision
from veil.tee import SimEvidenceSource, measure_command
from veil.tee.sim import verify_sim_evidence

ANCHOR = 400.0
CONFIG_ID = "bench/app/app"


def start_cas(root: Path, workers: int, admin: str) -> tuple[subprocess.Popen[bytes], str]:
    port = 20000 + os.getpid() % 20000
    log = open(root / "cas.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "veil",
            "cas",
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--data",
            str(root / "cas"),
            "--workers",
            str(workers),
            "--admin",
            admin,
        ],
        stdout=log,
        stderr=log,
    )
    deadline = time.time() + 30
    while b"listening on" not in (root / "cas.log").read_bytes():
        if process.poll() is not None or time.time() > deadline:
            raise SystemExit((root / "cas.log").read_text())
        time.sleep(0.05)
    return process, f"https://127.0.0.1:{port}"


def prepare(root: Path, url: str, config: ClientConfig) -> tuple[str, str]:
    """Pin the CAS, enrol the administrator, register a platform, create the session."""
    pin = attest_cas(url, ["sim"], None)
    config.pins[url] = pin
    config.save()
    owner = OwnerClient(url, config)
    key = PlatformSigningKey.load_or_create(root / "platform.key")
    platform_id = owner.register_platform(key.public_bytes)
    command = [sys.executable, "-c", "pass"]
    measurement = measure_command(command, "/", None).value
    session = {
        "name": "bench/app",
        "version": "1",
        "security": {"tolerate": ["sim"], "sim_platforms": [platform_id]},
        "services": [
            {
                "name": "app",
                "attestation": [{"platform": "sim", "measurement": measurement}],
                "command": command,
                "environment": {"PASSWORD": "$$VEIL::pw$$"},
            }
        ],
        "secrets": [{"name": "pw", "kind": "ascii", "size": 24}],
    }
    owner.create_session(yaml.safe_dump(session))
    return pin.ca_certificate, measurement


class RecordingConnection(CasConnection):
    """Records each request body and answer of one provision (the floor replays them)."""

    def __init__(self, url: str, ca: str) -> None:
        super().__init__(url, ca)
        self.exchanges: list[tuple[str, str, Any, int, Any]] = []

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        status, answer = super().request(method, path, body)
        self.exchanges.append((method, path, body, status, answer))
        return status, answer


def record_exchanges(
    url: str, ca: str, key_file: str, measurement: str
) -> list[tuple[str, str, Any, int, Any]]:
    connection = RecordingConnection(url, ca)
    provision(
        HttpCasClient(connection),
        SimEvidenceSource(PlatformSigningKey.load_or_create(Path(key_file))),
        CONFIG_ID,
        measurement,
    )
    connection.close()
    return connection.exchanges


def floor_server(
    port: int, exchanges: list[tuple[str, str, Any, int, Any]], identity: CasIdentity, ready: Any
) -> None:
    """The CAS's HTTP stack (aiohttp, uvloop, TLS 1.3, same routes and body sizes) with
    handlers that parse the request and return the recorded answer, doing nothing else."""
    app = web.Application()
    for method, path, _, status, answer in exchanges:
        body = json.dumps(answer).encode()

        async def handler(request: web.Request, body: bytes = body, status: int = status) -> web.Response:
            json.loads(await request.read() or b"{}")
            return web.Response(body=body, status=status, content_type="application/json")

        app.router.add_route(method, path, handler)
    sock = listening_socket("127.0.0.1", port)
    run_site(
        app, identity.server_context(["127.0.0.1"]), "127.0.0.1", port, lambda url: ready.set(), sock=sock
    )


def worker(
    target: dict[str, Any],
    threads: int,
    seconds: float,
    queue: "multiprocessing.Queue[list[float]]",
) -> None:
    """``threads`` runtimes in this process, each provisioning in a loop (or, for the floor,
    replaying a provision's two requests)."""
    connection = CasConnection(target["url"], target["ca"])
    if "exchanges" in target:

        def once() -> None:
            for method, path, body, status, _ in target["exchanges"]:
                assert connection.request(method, path, body)[0] == status
    else:
        client = HttpCasClient(connection)
        source = SimEvidenceSource(PlatformSigningKey.load_or_create(Path(target["key_file"])))

        def once() -> None:
            provision(client, source, CONFIG_ID, target["measurement"])

    latencies: list[float] = []
    lock = threading.Lock()
    start_at = time.time() + 0.5
    stop_at = start_at + seconds

    def loop() -> None:
        mine = []
        once()  # warm the connection
        while time.time() < start_at:
            time.sleep(0.001)
        while time.time() < stop_at:
            t = time.perf_counter()
            once()
            mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    queue.put(latencies)


def measure(target: dict[str, Any], concurrency: int, seconds: float) -> dict[str, float]:
    processes = 1 if concurrency == 1 else 2
    queue: multiprocessing.Queue[list[float]] = multiprocessing.Queue()
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    pool = [multiprocessing.Process(target=worker, args=(target, n, seconds, queue)) for n in shares]
    for process in pool:
        process.start()
    latencies = [x for _ in pool for x in queue.get()]
    for process in pool:
        process.join()
    latencies.sort()
    return {
        "concurrency": concurrency,
        "provisions_per_s": len(latencies) / seconds,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "count": len(latencies),
    }


def crypto_cost(rounds: int = 300) -> float:
    """CPU seconds of the cryptography one provision cannot skip, both sides together:
    the runtime's two key pairs, evidence signature, bundle decryption and certificate
    parsing; the CAS's evidence check, bundle encryption and certificate issuance."""
    platform = PlatformSigningKey.generate()
    source = SimEvidenceSource(platform)
    ca = CertificateAuthority.create("cost")
    started = time.process_time()
    for _ in range(rounds):
        instance = ec.generate_private_key(ec.SECP256R1())
        bundle_keys = BundleKeyPair.generate()
        evidence = source.collect(bytes(64), "sha256:" + "0" * 64)
        verify_sim_evidence(evidence.data, lambda _: platform.public_bytes)
        sealed = seal_to_key(bytes(1024), bundle_keys.public_bytes, b"info")
        open_to_key(sealed, bundle_keys, b"info")
        pem = ca.issue_instance_certificate(instance.public_key(), "s", "a").public_bytes(Encoding.PEM)
        assert x509.load_pem_x509_certificate(pem).public_key() == instance.public_key()
    return (time.process_time() - started) / rounds


def measure_floor(
    exchanges: list[tuple[str, str, Any, int, Any]], workers: int, concurrency: int, seconds: float
) -> dict[str, float]:
    port = 20000 + (os.getpid() + 7919) % 20000
    identity = CasIdentity(CertificateAuthority.create("floor"))
    servers = []
    for _ in range(workers):
        ready = multiprocessing.Event()
        server = multiprocessing.Process(
            target=floor_server, args=(port, exchanges, identity, ready), daemon=True
        )
        server.start()
        if not ready.wait(30):
            raise SystemExit("the floor server did not start")
        servers.append(server)
    try:
        url = f"https://127.0.0.1:{port}"
        return measure(
            {"url": url, "ca": identity.certificate_pem, "exchanges": exchanges}, concurrency, seconds
        )
    finally:
        for server in servers:
            server.terminate()
            server.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--workers", type=int, default=2, help="CAS processes (veil cas serve --workers)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="veil-bench-cas-") as tmp:
        root = Path(tmp)
        os.environ["XDG_CONFIG_HOME"] = str(root / "xdg")
        config = ClientConfig(root / "config", None, {})
        process, url = start_cas(root, args.workers, config.owner_id())
        try:
            ca, measurement = prepare(root, url, config)
            target = {
                "url": url,
                "ca": ca,
                "key_file": str(root / "platform.key"),
                "measurement": measurement,
            }
            rows = [measure(target, c, args.seconds) for c in args.concurrency]
            exchanges = record_exchanges(url, ca, target["key_file"], measurement)
        finally:
            process.terminate()
            process.wait()
    floor = measure_floor(exchanges, args.workers, max(args.concurrency), args.seconds)
    crypto = crypto_cost()
    cores = os.cpu_count() or 1
    # each provision costs the machine one floor exchange plus its cryptography on `cores` cores
    ceiling = 1 / (1 / floor["provisions_per_s"] + crypto / cores)
    if args.json:
        print(
            json.dumps({"provisions": rows, "floor": floor, "crypto_ms": crypto * 1000, "ceiling": ceiling})
        )
        return
    print(f"{'concurrent':>10} {'provisions/s':>13} {'p50 ms':>8} {'p99 ms':>8} {'vs anchor':>10}")
    for row in rows:
        print(
            f"{row['concurrency']:>10} {row['provisions_per_s']:>13.0f} {row['p50_ms']:>8.1f} "
            f"{row['p99_ms']:>8.1f} {row['provisions_per_s'] / ANCHOR:>9.2f}x"
        )
    print(f"anchor: Veraison's published load test, ~{ANCHOR:.0f} verifications/s (not measured here)")
    share = rows[-1]["provisions_per_s"] / floor["provisions_per_s"]
    print(
        f"floor: the same two HTTPS requests answered by handlers that do nothing, {floor['concurrency']} "
        f"clients, {args.workers} server processes: {floor['provisions_per_s']:.0f}/s, p99 "
        f"{floor['p99_ms']:.1f} ms (provisions reach {share:.0%} of it)"
    )
    print(
        f"cryptography of one provision (both sides, CPU): {crypto * 1000:.2f} ms; floor plus "
        f"cryptography on {cores} cores: at most {ceiling:.0f} provisions/s on this machine"
    )


if __name__ == "__main__":
    main()
