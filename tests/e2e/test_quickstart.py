"""The README's demo, as `make demo` runs it."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import requires_root

TOP = Path(__file__).resolve().parents[2]


@requires_root
def test_the_quickstart_shows_the_secret_and_the_refusal(tmp_path: Path) -> None:
    veil = Path(sys.executable).parent / "veil"
    result = subprocess.run(
        ["bash", str(TOP / "examples" / "quickstart" / "run.sh")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VEIL": str(veil), "VEIL_DEMO_DIR": str(tmp_path / "demo")},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "environment, file and argument agree: yes" in result.stdout
    assert "matches no attestation entry of service 'app'" in result.stderr
    assert "audit log intact" in result.stdout


def test_make_install_puts_veil_on_path(tmp_path: Path) -> None:
    """What `make demo` ends by suggesting: a link to the venv's veil under PREFIX/bin."""
    result = subprocess.run(
        ["make", "-s", "install", f"PREFIX={tmp_path}"], cwd=TOP, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    linked = tmp_path / "bin" / "veil"
    assert linked.is_symlink() and linked.resolve() == (TOP / ".venv" / "bin" / "veil").resolve()
    version = subprocess.run([str(linked), "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("veil, version")
