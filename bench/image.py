"""Conversion time and start overhead of the curated images (tests/curated.py: Debian's
nginx, redis, PostgreSQL and a Python app in a venv), converted with the commands
docs/image.md gives, against the same images unconverted, on this machine.

- conversion: wall time of `veil image convert` with the runtime layer cached (a first
  conversion warms it); the size of the image's blobs before and after;
- start: launch (the chroot in a private mount namespace, as tests/e2e does) to the first
  answered request (an HTTP GET, a redis PING, a PostgreSQL `SELECT 1`), for a fresh
  container (first start: a data volume or PostgreSQL's cluster is made) and a restart of
  the same root file system; the converted image attests to a network CAS on loopback
  through a LAS (sim mode), mounts its volumes, then starts the program.

Rounds are interleaved (unconverted, converted); medians. Needs root, mmdebstrap, umoci,
skopeo, patchelf (make test installs them), and ports 80, 6379, 5432, 8000 free.

Run: .venv/bin/python bench/image.py [--rounds 3] [--only NAME]... [--json]
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import curated
from tests.cas_server import CasServer, start_cas
from tests.deploy import PROBES, STOP, Deployed, convert, deploy, las_server, serve, unconverted


def _blob_bytes(layout: Path) -> int:
    return sum(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())


def _starts(deployed: Deployed, work: Path) -> tuple[float, float]:
    """Seconds to the first answered request: a fresh container, then its restart."""
    bundle = deployed.bundle(work)
    times = []
    for _ in range(2):
        _, code, log, ready = serve(deployed, bundle, PROBES[deployed.name], stop=STOP[deployed.name])
        assert code in (0, 143, -15), log  # python's http.server dies of SIGTERM
        times.append(ready)
    shutil.rmtree(work)
    return times[0], times[1]


def measure(name: str, rounds: int, root: Path, cas: CasServer, las: str) -> dict[str, object]:
    """Each round converts the image for a session of its own (a data volume's first start
    happens once per session: later, the CAS holds its tag and empty storage is refused),
    then starts the unconverted and the converted image."""
    plain = unconverted(name)
    seconds: list[float] = []
    firsts: dict[str, list[float]] = {"plain": [], "veil": []}
    restarts: dict[str, list[float]] = {"plain": [], "veil": []}
    for attempt in range(rounds):
        deployed = deploy(name, root / f"{name}-{attempt}", cas, las, session=f"{name}-{attempt}/bench")
        seconds.append(deployed.convert_seconds)
        for kind, image in (("plain", plain), ("veil", deployed)):
            first, restart = _starts(image, root / f"{name}-{kind}-{attempt}")
            firsts[kind].append(first)
            restarts[kind].append(restart)
    median = statistics.median
    return {
        "image": name,
        "source_mb": round(_blob_bytes(plain.out) / 1e6, 1),
        "converted_mb": round(_blob_bytes(deployed.out) / 1e6, 1),
        "convert_s": round(median(seconds), 2),
        "first_start_plain_s": round(median(firsts["plain"]), 3),
        "first_start_veil_s": round(median(firsts["veil"]), 3),
        "restart_plain_s": round(median(restarts["plain"]), 3),
        "restart_veil_s": round(median(restarts["veil"]), 3),
        "overhead_s": round(median(restarts["veil"]) - median(restarts["plain"]), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", action="append", choices=sorted(curated.IMAGES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0 or not curated.available():
        sys.exit(
            "bench/image.py needs root, mmdebstrap, umoci, skopeo and patchelf (make test installs them)"
        )
    names = args.only or list(curated.IMAGES)
    rows = []
    with tempfile.TemporaryDirectory(prefix="veil-bench-image-") as tmp:
        root = Path(tmp)
        os.environ["XDG_CONFIG_HOME"] = str(root / "xdg")
        cas = start_cas(root)
        try:
            with las_server(root / "node") as las:
                warm, _ = convert(names[0], root / "warm", root / "warm.yaml")  # the runtime layer
                assert warm.returncode == 0, warm.stderr
                for name in names:
                    started = time.perf_counter()
                    rows.append(measure(name, args.rounds, root, cas, las))
                    print(f"{name}: measured in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        finally:
            cas.stop()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    columns = ["image", "source", "converted", "convert"]
    columns += ["first start (plain / veil)", "restart (plain / veil)", "overhead"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['image']} | {row['source_mb']} MB | {row['converted_mb']} MB | {row['convert_s']} s "
            f"| {row['first_start_plain_s']} / {row['first_start_veil_s']} s "
            f"| {row['restart_plain_s']} / {row['restart_veil_s']} s | +{row['overhead_s']} s |"
        )


if __name__ == "__main__":
    main()
