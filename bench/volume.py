"""Protected volume throughput: veil's mount vs gocryptfs vs the plain directory, same disk.

fio: sequential write and read (1 MiB blocks, --size), random 4 KiB read and write
(--random-size, --runtime seconds each); then creating 10k small files (1 KiB each) with
Python; the latency of one 4 KiB write + fsync with 0, 5k and 20k files in the volume
(median of 200, ms: lower is better); copying a fresh Python virtual environment (about 1,700
entries, a few symbolic links) in with `cp -a` (seconds: lower is better). Caches are dropped before
each read test. Prints MB/s, IOPS, ms and the ratios of veil to gocryptfs. Needs root, fio
and gocryptfs (`make bench-volume` installs them).

Run: .venv/bin/python bench/volume.py [--size 1G] [--runtime 15] [--workdir DIR]
     [--rounds N] [--only plain|gocryptfs|veil|veil-nopoll ...]

--rounds N repeats the whole set N times, the targets taking turns in each round (the
machine's speed drifts over minutes: interleaved rounds compare like with like), and
prints each cell's median and range, and veil/gocryptfs per round. The target
veil-nopoll is veil with VEIL_MOUNT_POLL_US=0 (the mount sleeps whenever it waits; not
measured unless --only names it).
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

VEIL = [sys.executable, "-m", "veil"]
CHUNK = int(os.environ.get("VEIL_BENCH_CHUNK", "0")) or None


def sh(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=True, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def fio(directory: Path, name: str, rw: str, bs: str, size: str, runtime: int | None) -> dict[str, float]:
    args = [
        "fio",
        f"--name={name}",
        f"--directory={directory}",
        f"--rw={rw}",
        f"--bs={bs}",
        f"--size={size}",
        "--ioengine=psync",
        "--numjobs=1",
        "--output-format=json",
        "--filename=fio.dat",
    ]
    if runtime:
        args += [f"--runtime={runtime}", "--time_based"]
    if "write" in rw:
        args.append("--end_fsync=1")
    job = json.loads(sh(*args).stdout)["jobs"][0]
    part = job["write"] if "write" in rw else job["read"]
    return {"MB/s": part["bw_bytes"] / 1e6, "IOPS": part["iops"]}


def small_files(directory: Path, count: int = 10_000) -> dict[str, float]:
    target = directory / "small"
    target.mkdir()
    payload = os.urandom(1024)
    start = time.perf_counter()
    for index in range(count):
        with open(target / f"f{index:05d}", "wb") as handle:
            handle.write(payload)
    os.sync()
    elapsed = time.perf_counter() - start
    return {"files/s": count / elapsed}


def fsync_latency(directory: Path, files: int, rounds: int = 200) -> dict[str, float]:
    """Median ms of one 4 KiB write + fsync, with ``files`` small files in the volume."""
    many = directory / "many"
    many.mkdir(exist_ok=True)
    present = len(os.listdir(many))
    payload = os.urandom(1024)
    for index in range(present, files):
        (many / f"m{index:05d}").write_bytes(payload)
    os.sync()
    block = os.urandom(4096)
    fd = os.open(directory / "fsync.dat", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, os.urandom(1 << 20), 0)
        os.fsync(fd)
        times = []
        for index in range(rounds):
            started = time.perf_counter()
            os.pwrite(fd, block, (index % 256) * 4096)
            os.fsync(fd)
            times.append(time.perf_counter() - started)
    finally:
        os.close(fd)
    return {"ms": statistics.median(times) * 1000}


def venv_copy(directory: Path, venv: Path) -> dict[str, float]:
    """Seconds to copy a Python virtual environment in (cp -a: links, modes, times), synced."""
    started = time.perf_counter()
    sh("cp", "-a", str(venv), str(directory / "venv"))
    os.sync()
    return {"s": time.perf_counter() - started}


def measure(
    directory: Path, size: str, random_size: str, runtime: int, venv: Path
) -> dict[str, dict[str, float]]:
    results = {"fsync 4k, 0 files": fsync_latency(directory, 0)}
    results["seq write 1M"] = fio(directory, "seqw", "write", "1M", size, None)
    drop_caches()
    results["seq read 1M"] = fio(directory, "seqr", "read", "1M", size, None)
    (directory / "fio.dat").unlink()
    results["rand write 4k"] = fio(directory, "randw", "randwrite", "4k", random_size, runtime)
    drop_caches()
    results["rand read 4k"] = fio(directory, "randr", "randread", "4k", random_size, runtime)
    (directory / "fio.dat").unlink()
    results["10k small files"] = small_files(directory)
    results["fsync 4k, 5k files"] = fsync_latency(directory, 5_000)
    results["fsync 4k, 20k files"] = fsync_latency(directory, 20_000)
    results["cp -a a venv"] = venv_copy(directory, venv)
    return results


@contextmanager
def plain(work: Path) -> Iterator[Path]:
    path = work / "plain"
    path.mkdir()
    yield path


@contextmanager
def gocryptfs(work: Path) -> Iterator[Path]:
    cipher, mount = work / "gocryptfs.cipher", work / "gocryptfs.mnt"
    cipher.mkdir()
    mount.mkdir()
    sh("gocryptfs", "-init", "-q", "-extpass", "echo bench-password", "-scryptn", "10", str(cipher))
    sh("gocryptfs", "-q", "-extpass", "echo bench-password", str(cipher), str(mount))
    try:
        yield mount
    finally:
        sh("fusermount3", "-u", str(mount))


@contextmanager
def veil(work: Path, environment: dict[str, str] | None = None) -> Iterator[Path]:
    storage, mount, key = work / "veil.vol", work / "veil.mnt", work / "veil.key"
    mount.mkdir()
    sh(
        *VEIL,
        "volume",
        "create",
        str(storage),
        "--key-file",
        str(key),
        *(["--chunk-size", str(CHUNK)] if CHUNK else []),
    )
    sh(
        *VEIL,
        "volume",
        "mount",
        str(storage),
        str(mount),
        "--key-file",
        str(key),
        env={**os.environ, **(environment or {})},
    )
    try:
        yield mount
    finally:
        sh(*VEIL, "volume", "unmount", str(mount))


def veil_nopoll(work: Path) -> Any:
    return veil(work, {"VEIL_MOUNT_POLL_US": "0"})


TARGETS: dict[str, Callable[[Path], Any]] = {
    "plain": plain,
    "gocryptfs": gocryptfs,
    "veil": veil,
    "veil-nopoll": veil_nopoll,
}
DEFAULT_TARGETS = ["plain", "gocryptfs", "veil"]
Results = dict[str, dict[str, float]]  # test -> metric -> value


def first_value(cell: dict[str, float]) -> float:
    return next(iter(cell.values()))


def report(results: dict[str, list[Results]]) -> None:
    """The median of each cell (and its range over rounds), and veil/gocryptfs: the median
    of the rounds' ratios (and each round's)."""
    names = list(results)
    rows = results[names[0]][0].keys()
    rounds = len(results[names[0]])
    compare = "veil" in results and "gocryptfs" in results
    print(f"{'test':<22}" + "".join(f"{n:>28}" for n in names) + ("   veil/gocryptfs" if compare else ""))
    for row in rows:
        cells = ""
        for name in names:
            values = [first_value(r[row]) for r in results[name]]
            metric = next(iter(results[name][0][row]))
            spread = f" ({min(values):.3g}-{max(values):.3g})" if rounds > 1 else ""
            cells += f"{statistics.median(values):>12.3g} {metric:<7}{spread:<8}"
        ratio = ""
        if compare:
            ratios = [
                first_value(v[row]) / first_value(g[row])
                for v, g in zip(results["veil"], results["gocryptfs"], strict=True)
            ]
            ratio = f"   {statistics.median(ratios):.2f}x"
            if rounds > 1:
                ratio += " (" + ", ".join(f"{x:.2f}" for x in ratios) + ")"
        print(f"{row:<22}{cells}{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1G")
    parser.add_argument("--random-size", default="256M")
    parser.add_argument("--runtime", type=int, default=15)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="on the disk to measure (default: /var/tmp)"
    )
    parser.add_argument("--only", choices=list(TARGETS), action="append")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the set, targets taking turns")
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("fio") or not shutil.which("gocryptfs"):
        sys.exit("bench/volume.py needs root, fio and gocryptfs: run `make bench-volume`")
    if args.rounds < 1:
        sys.exit("--rounds: at least 1")
    names = args.only or DEFAULT_TARGETS
    results: dict[str, list[Results]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(dir=args.workdir or "/var/tmp", prefix="veil-bench-") as tmp:
        venv = Path(tmp) / "a-venv"
        sh(sys.executable, "-m", "venv", str(venv))
        for round_ in range(args.rounds):
            for name in names:
                work = Path(tmp) / f"{name}-{round_}"
                work.mkdir()
                with TARGETS[name](work) as directory:
                    results[name].append(measure(directory, args.size, args.random_size, args.runtime, venv))
                shutil.rmtree(work, ignore_errors=True)
                print(f"round {round_ + 1}/{args.rounds}: measured {name}", file=sys.stderr)
    report(results)
    for runs in results.values():
        for run in runs:
            for row in ("rand write 4k", "rand read 4k"):
                run[row]["IOPS"] = round(run[row]["IOPS"])
    print(json.dumps(results), file=sys.stderr)  # target -> one result per round


if __name__ == "__main__":
    main()
