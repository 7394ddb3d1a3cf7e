"""examples/network-cas/run.sh: CAS, owner, LAS and runtime as separate processes."""

import re
from pathlib import Path

from tests.conftest import requires_root
from tests.e2e import run_example


@requires_root
def test_the_network_example_runs_end_to_end(tmp_path: Path) -> None:
    result = run_example("network-cas", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "environment, file and argument agree: yes" in result.stdout
    assert re.search(r"audit log intact: \d+ entries", result.stdout)
    assert "needs the role" not in result.stderr
    assert "SIM MODE" in result.stderr
