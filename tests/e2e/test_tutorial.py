"""docs/tutorial.md, executed: its shell blocks in order, as a new user would type them."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import requires_root

TOP = Path(__file__).resolve().parents[2]
TUTORIAL = TOP / "docs" / "tutorial.md"


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


@requires_root
def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    blocks = shell_blocks(TUTORIAL.read_text())
    assert len(blocks) == 5
    app_dir = Path("/tmp/hello-app")  # the tutorial's pwd
    shutil.rmtree(app_dir, ignore_errors=True)
    # as root, `sudo` is the command itself (and keeps this test's data directory)
    script = 'set -eu\nsudo() { "$@"; }\n' + "\n".join(blocks)
    try:
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env={**os.environ, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        shutil.rmtree(app_dir, ignore_errors=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "session.yaml: ok: session tutorial/hello" in result.stdout
    assert "got a password of 24 characters; the config file agrees: True" in result.stdout
    assert result.stdout.rstrip().endswith("refused")
    assert "matches no attestation entry of service 'app'" in result.stderr
    assert "since the last accepted run: argument 1 /tmp/hello-app/app.py changed (sha256 " in result.stderr
    assert "warning" not in result.stderr
