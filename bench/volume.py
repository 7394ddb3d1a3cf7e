"""Protected volume throughput: veil's mount vs gocryptfs vs the plain directory, same disk.

fio: sequential write and read (1 MiB blocks, --size), random 4 KiB read and write
(--random-size, --runtime seconds each); then creating 10k small files (1 KiB each) with
Python. Caches are dropped before each read test. Prints MB/s, IOPS and the ratios of veil
to gocryptfs. Needs root, fio and gocryptfs (`make bench-volume` installs them).

Run: .venv/bin/python bench/volume.py [--size 1G] [--runtime 15] [--workdir DIR]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

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


def measure(directory: Path, size: str, random_size: str, runtime: int) -> dict[str, dict[str, float]]:
    results = {"seq write 1M": fio(directory, "seqw", "write", "1M", size, None)}
    drop_caches()
    results["seq read 1M"] = fio(directory, "seqr", "read", "1M", size, None)
    (directory / "fio.dat").unlink()
    results["rand write 4k"] = fio(directory, "randw", "randwrite", "4k", random_size, runtime)
    drop_caches()
    results["rand read 4k"] = fio(directory, "randr", "randread", "4k", random_size, runtime)
    (directory / "fio.dat").unlink()
    results["10k small files"] = small_files(directory)
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
def veil(work: Path) -> Iterator[Path]:
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
    sh(*VEIL, "volume", "mount", str(storage), str(mount), "--key-file", str(key))
    try:
        yield mount
    finally:
        sh(*VEIL, "volume", "unmount", str(mount))


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
    parser.add_argument("--only", choices=["plain", "gocryptfs", "veil"], action="append")
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("fio") or not shutil.which("gocryptfs"):
        sys.exit("bench/volume.py needs root, fio and gocryptfs: run `make bench-volume`")
    targets: dict[str, Callable[[Path], object]] = {"plain": plain, "gocryptfs": gocryptfs, "veil": veil}
    results: dict[str, dict[str, dict[str, float]]] = {}
    with tempfile.TemporaryDirectory(dir=args.workdir or "/var/tmp", prefix="veil-bench-") as tmp:
        for name, setup in targets.items():
            if args.only and name not in args.only:
                continue
            work = Path(tmp) / name
            work.mkdir()
            with setup(work) as directory:  # type: ignore[attr-defined]
                results[name] = measure(directory, args.size, args.random_size, args.runtime)
            print(f"measured {name}", file=sys.stderr)
    rows = next(iter(results.values())).keys()
    print(f"{'test':<18}" + "".join(f"{n:>22}" for n in results) + "   veil/gocryptfs")
    for row in rows:
        cells = ""
        for name in results:
            metric, value = next(iter(results[name][row].items()))
            cells += f"{value:>14.1f} {metric:<7}"
        ratio = ""
        if "veil" in results and "gocryptfs" in results:
            veil_value = next(iter(results["veil"][row].values()))
            ratio = f"   {veil_value / next(iter(results['gocryptfs'][row].values())):.2f}x"
        print(f"{row:<18}{cells}{ratio}")
    for row in ("rand write 4k", "rand read 4k"):
        for name in results:
            results[name][row]["IOPS"] = round(results[name][row]["IOPS"])
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
