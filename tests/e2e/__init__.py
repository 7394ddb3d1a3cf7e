"""End-to-end tests: the README's and examples' commands as a user runs them."""

import os
import subprocess
import sys
from pathlib import Path

from tests.net import free_port

TOP = Path(__file__).resolve().parents[2]


def run_example(name: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """examples/NAME/run.sh with this venv's veil, its own state directory and a free port."""
    return subprocess.run(
        ["bash", str(TOP / "examples" / name / "run.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "VEIL": str(Path(sys.executable).parent / "veil"),
            "VEIL_DEMO_DIR": str(tmp_path / "demo"),
            "VEIL_DEMO_PORT": str(free_port()),
            "VEIL_DEMO_SSH_PORT": str(free_port()),
        },
        check=False,
    )
