"""The cost of `freshness: fsync` (docs/volume-format.md, "The volume tag"): one 4 KiB
write + fsync in a protected volume under `veil run`, with the default freshness (the CAS
learns the tag when the program ends) and with `freshness: fsync` (the CAS holds each
commit's tag before fsync returns), on the embedded CAS; the same on gocryptfs as the
anchor. Prints the median and 90th percentile in ms and the ratios. Needs root and
gocryptfs (`make bench-volume` installs it).

Run: .venv/bin/python bench/freshness.py [--fsyncs 300] [--rounds 3]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from veil.tee import measure_command

PROGRAM = """
import json, os, sys, time
path = os.path.join(sys.argv[1], "fsync.dat")
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
os.pwrite(fd, os.urandom(1 << 20), 0)
os.fsync(fd)
block, times = os.urandom(4096), []
for index in range(int(sys.argv[2])):
    started = time.perf_counter()
    os.pwrite(fd, block, (index % 256) * 4096)
    os.fsync(fd)
    times.append(time.perf_counter() - started)
os.close(fd)
print(json.dumps(times))
"""


def under_veil(work: Path, freshness: str, fsyncs: int) -> list[float]:
    data = work / f"data-{freshness}"
    command = [sys.executable, str(work / "program.py"), str(data), str(fsyncs)]
    measurement = measure_command(command, "/", os.environ.get("PATH")).value
    volume: dict[str, object] = {"name": "data", "accept_fresh": True}
    if freshness != "default":
        volume["freshness"] = freshness
    session = {
        "name": f"bench/{freshness}",
        "version": "1",
        "security": {"tolerate": ["sim"]},
        "volumes": [volume],
        "services": [
            {
                "name": "app",
                "attestation": [{"platform": "sim", "measurement": measurement}],
                "command": command,
                "volumes": [{"name": "data", "path": str(data)}],
            }
        ],
    }
    policy = work / f"{freshness}.yaml"
    policy.write_text(yaml.safe_dump(session))
    result = subprocess.run(
        [sys.executable, "-m", "veil", "run", "--policy", str(policy), "--service", "app"],
        capture_output=True,
        text=True,
        env={**os.environ, "VEIL_HOME": str(work / "home")},
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"veil run failed: {result.stderr}")
    return [float(t) for t in json.loads(result.stdout.strip().splitlines()[-1])]


def on_gocryptfs(work: Path, fsyncs: int) -> list[float]:
    cipher, mount = work / "cipher", work / "gmnt"
    shutil.rmtree(cipher, ignore_errors=True)
    cipher.mkdir()
    mount.mkdir(exist_ok=True)
    password = ["-extpass", "echo bench", "-scryptn", "10"]
    subprocess.run(["gocryptfs", "-init", "-q", *password, str(cipher)], check=True)
    subprocess.run(["gocryptfs", "-q", "-nosyslog", *password[:2], str(cipher), str(mount)], check=True)
    try:
        result = subprocess.run(
            [sys.executable, str(work / "program.py"), str(mount), str(fsyncs)],
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        subprocess.run(["fusermount3", "-u", str(mount)], check=True)
    return [float(t) for t in json.loads(result.stdout)]


def summary(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.9)] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fsyncs", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="on the disk to measure (default: /var/tmp)"
    )
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("gocryptfs"):
        sys.exit("bench/freshness.py needs root and gocryptfs: run `make bench-volume`")
    rows: dict[str, list[tuple[float, float]]] = {"gocryptfs": [], "veil": [], "veil, freshness: fsync": []}
    with tempfile.TemporaryDirectory(dir=args.workdir or "/var/tmp", prefix="veil-fresh-") as tmp:
        for round_ in range(args.rounds):
            work = Path(tmp) / f"round-{round_}"
            work.mkdir()
            (work / "program.py").write_text(PROGRAM)
            rows["gocryptfs"].append(summary(on_gocryptfs(work, args.fsyncs)))
            rows["veil"].append(summary(under_veil(work, "default", args.fsyncs)))
            rows["veil, freshness: fsync"].append(summary(under_veil(work, "fsync", args.fsyncs)))
            print(f"round {round_ + 1}/{args.rounds} measured", file=sys.stderr)
    print(f"4 KiB write + fsync, {args.fsyncs} a round, {args.rounds} rounds: medians of the rounds")
    print(f"{'':<26}{'median ms':>10}{'p90 ms':>10}{'/ veil':>9}{'/ gocryptfs':>13}")
    base = statistics.median(m for m, _ in rows["veil"])
    anchor = statistics.median(m for m, _ in rows["gocryptfs"])
    for name, values in rows.items():
        median = statistics.median(m for m, _ in values)
        p90 = statistics.median(p for _, p in values)
        print(f"{name:<26}{median:>10.2f}{p90:>10.2f}{median / base:>8.2f}x{median / anchor:>12.2f}x")


if __name__ == "__main__":
    main()
