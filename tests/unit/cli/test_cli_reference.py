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


def test_a_context_made_outside_the_cli_keeps_the_help_options() -> None:
    """`veil cas config check` makes a context for `serve` on its own; click caches the help
    option then, and the reference (or `veil cas serve -h` in that process) lost `-h`."""
    from veil.cli.cas import serve_command  # noqa: PLC0415

    ctx = serve_command.make_context("serve", ["--data", "/nonexistent"])
    option = serve_command.get_help_option(ctx)
    assert option is not None and "-h" in option.opts
    render = runpy.run_path(str(TOP / "scripts" / "cli_reference.py"))["render"]
    assert (TOP / "docs" / "cli.md").read_text() == render()
