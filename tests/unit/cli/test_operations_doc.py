"""docs/operations.md documents every key of `veil cas serve`'s configuration file."""

from pathlib import Path

from veil.cli.cas import serve_command
from veil.cli.settings import setting_options

DOC = Path(__file__).resolve().parents[3] / "docs" / "operations.md"


def test_every_setting_has_a_row_in_the_configuration_table() -> None:
    text = DOC.read_text()
    missing = [key for key in setting_options(serve_command) if f"| `{key}` |" not in text]
    assert not missing, f"docs/operations.md, Configuration: add rows for {missing}"
