"""examples/network-cas/run.sh: CAS, owner, LAS and runtime as separate processes."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import requires_root
from tests.net import free_port

TOP = Path(__file__).resolve().parents[2]


@requires_root
def test_the_network_example_runs_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        ["bash", str(TOP / "examples" / "network-cas" / "run.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "VEIL": str(Path(sys.executable).parent / "veil"),
            "VEIL_DEMO_DIR": str(tmp_path / "demo"),
            "VEIL_DEMO_PORT": str(free_port()),
        },
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "environment, file and argument agree: yes" in result.stdout
    assert "audit log intact: 3 entries" in result.stdout
    assert "SIM MODE" in result.stderr
