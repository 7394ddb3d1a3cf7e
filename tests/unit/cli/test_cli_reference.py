"""docs/cli.md is the help of every command as the code has it (issue #27: docs behind the code)."""

import runpy
from pathlib import Path

TOP = Path(__file__).resolve().parents[3]


def test_the_cli_reference_is_current() -> None:
    render = runpy.run_path(str(TOP / "scripts" / "cli_reference.py"))["render"]
    expected = render()
    assert (TOP / "docs" / "cli.md").read_text() == expected, (
        "docs/cli.md is stale: run .venv/bin/python scripts/cli_reference.py > docs/cli.md"
    )
    assert "## veil session measure" in expected and "## veil volume mount" in expected
