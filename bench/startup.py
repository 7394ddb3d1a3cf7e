"""How long the veil CLI takes to start, against a bare exec of /bin/true, on this machine.

- `veil --version` and `veil --help`: the interpreter, imports, click;
- `veil run --policy FILE --service app` of `/bin/true` with the embedded CAS (sim mode)
  and one secret in the environment: everything a wrapped container start costs (session
  registration the first time, then measure, attest, provision, exec, wait); as veil runs
  it by default, on the home's warm embedded CAS server (veil.runtime.embedded_server),
  and in-process (VEIL_EMBEDDED_SERVER=off), as every run did before the server;
- `python -c pass` of the same interpreter: the floor any Python CLI pays.

Each command runs `--runs` times, interleaved; medians, and the ratio to bare exec.
Goals (issue #27): --version and --help <= 80 ms, veil run of /bin/true <= 200 ms.

Run: .venv/bin/python bench/startup.py [--runs 20] [--json]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from veil.tee import measure_command

VEIL = str(Path(sys.executable).parent / "veil")


def _session(path: Path) -> None:
    measurement = measure_command(["/bin/true"], "/", "/usr/bin:/bin").value
    path.write_text(
        f"""\
name: bench/startup
version: "1"
security:
  tolerate: [sim]
services:
  - name: app
    attestation:
      - platform: sim
        measurement: "{measurement}"
    command: [/bin/true]
    environment:
      TOKEN: "$$VEIL::token$$"
      PATH: /usr/bin:/bin
secrets:
  - name: token
    kind: ascii
    size: 16
"""
    )


def _time(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed: {result.stderr.decode()[-2000:]}")
    return elapsed


SERVED = "veil run /bin/true (embedded CAS server, one secret)"
IN_PROCESS = "veil run /bin/true (in-process embedded CAS, one secret)"


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + 15
    while not path.exists():
        if time.monotonic() > deadline:
            sys.exit(f"no embedded CAS server appeared at {path}")
        time.sleep(0.05)
    time.sleep(0.5)  # its imports done


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="veil-bench-startup-") as tmp:
        root = Path(tmp)
        _session(root / "session.yaml")
        env = {
            **os.environ,
            "VEIL_HOME": str(root / "home"),
            "PATH": "/usr/bin:/bin",
            "VEIL_EMBEDDED_SERVER": "120",
        }
        run = [VEIL, "run", "--policy", str(root / "session.yaml"), "--service", "app"]
        commands = {
            "bare exec /bin/true": ["/bin/true"],
            "python -c pass": [sys.executable, "-c", "pass"],
            "veil --version": [VEIL, "--version"],
            "veil --help": [VEIL, "--help"],
            SERVED: run,
            IN_PROCESS: run,
        }
        envs = {IN_PROCESS: {**env, "VEIL_EMBEDDED_SERVER": "off"}}
        _time(run, env)  # registers the session and starts the server
        _wait_for(root / "home" / "cas.sock")
        times: dict[str, list[float]] = {name: [] for name in commands}
        try:
            for _ in range(args.runs):
                for name, argv in commands.items():
                    times[name].append(_time(argv, envs.get(name, env)))
        finally:
            (root / "home" / "cas.sock").unlink(missing_ok=True)  # the server exits
    bare = statistics.median(times["bare exec /bin/true"])
    rows = [
        {
            "command": name,
            "median_ms": round(statistics.median(t) * 1000, 1),
            "ratio": round(statistics.median(t) / bare),
        }
        for name, t in times.items()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| command | median | / bare exec |")
    print("|---|---:|---:|")
    for row in rows:
        print(f"| {row['command']} | {row['median_ms']} ms | {row['ratio']}x |")


if __name__ == "__main__":
    main()
