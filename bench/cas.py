"""Attested provisions per second against one network CAS on loopback (sim evidence).

One provision is what a runtime does at start: nonce request, key generation, evidence,
attestation request, bundle decryption and certificate check (veil.runtime.attest.provision),
over HTTPS with keep-alive. The CAS (`veil cas serve`, one process) and the load generator
(2 processes x N/2 threads) share this machine. Prints provisions/s and p50/p99 latency at
each concurrency, and the ratio to the published anchor (Veraison: ~400 verifications/s
on three small cloud instances; not measured here).

Run: .venv/bin/python bench/cas.py [--seconds 10] [--concurrency 1 16 64] [--json]
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

import yaml

from veil.client.config import ClientConfig
from veil.client.http import CasConnection, HttpCasClient, OwnerClient
from veil.client.pinning import attest_cas
from veil.crypto import PlatformSigningKey
from veil.runtime.attest import provision
from veil.tee import SimEvidenceSource, measure_command

ANCHOR = 400.0
CONFIG_ID = "bench/app/app"


def start_cas(root: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
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


def prepare(root: Path, url: str) -> tuple[str, str]:
    """Pin the CAS, enrol an owner, register a platform, create the session."""
    config = ClientConfig(root / "config", None, {})
    pin = attest_cas(url, ["sim"], None)
    config.pins[url] = pin
    config.save()
    owner = OwnerClient(url, config)
    key = PlatformSigningKey.load_or_create(root / "platform.key")
    owner.register_platform(key.public_bytes)
    command = [sys.executable, "-c", "pass"]
    measurement = measure_command(command, "/", None).value
    session = {
        "name": "bench/app",
        "version": "1",
        "security": {"tolerate": ["sim"]},
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


def worker(
    url: str,
    ca: str,
    key_file: str,
    measurement: str,
    threads: int,
    seconds: float,
    queue: "multiprocessing.Queue[list[float]]",
) -> None:
    key = PlatformSigningKey.load_or_create(Path(key_file))
    client = HttpCasClient(CasConnection(url, ca))
    source = SimEvidenceSource(key)
    latencies: list[float] = []
    lock = threading.Lock()
    start_at = time.time() + 0.5
    stop_at = start_at + seconds

    def loop() -> None:
        mine = []
        provision(client, source, CONFIG_ID, measurement)  # warm the connection
        while time.time() < start_at:
            time.sleep(0.001)
        while time.time() < stop_at:
            t = time.perf_counter()
            provision(client, source, CONFIG_ID, measurement)
            mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    queue.put(latencies)


def measure(
    url: str, ca: str, key_file: str, measurement: str, concurrency: int, seconds: float
) -> dict[str, float]:
    processes = 1 if concurrency == 1 else 2
    queue: multiprocessing.Queue[list[float]] = multiprocessing.Queue()
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    pool = [
        multiprocessing.Process(target=worker, args=(url, ca, key_file, measurement, n, seconds, queue))
        for n in shares
    ]
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
        process, url = start_cas(root, args.workers)
        try:
            ca, measurement = prepare(root, url)
            rows = [
                measure(url, ca, str(root / "platform.key"), measurement, c, args.seconds)
                for c in args.concurrency
            ]
        finally:
            process.terminate()
            process.wait()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'concurrent':>10} {'provisions/s':>13} {'p50 ms':>8} {'p99 ms':>8} {'vs anchor':>10}")
    for row in rows:
        print(
            f"{row['concurrency']:>10} {row['provisions_per_s']:>13.0f} {row['p50_ms']:>8.1f} "
            f"{row['p99_ms']:>8.1f} {row['provisions_per_s'] / ANCHOR:>9.2f}x"
        )
    print(f"anchor: Veraison's published load test, ~{ANCHOR:.0f} verifications/s (not measured here)")


if __name__ == "__main__":
    main()
