"""Program measurement: what is covered changes the value, what is not does not."""

import os
import sys
from pathlib import Path

import pytest

from veil.tee import measure_command
from veil.tee.measure import MeasurementError

PY = os.path.realpath(sys.executable)


def test_script_argument_content_is_covered(tmp_path: Path) -> None:
    script = tmp_path / "app.py"
    script.write_text("print(1)\n")
    before = measure_command([PY, str(script)])
    assert [c.role for c in before.covered] == ["executable", "argument"]
    script.write_text("print(2)\n")
    assert measure_command([PY, str(script)]).value != before.value


def test_paths_are_not_covered_only_contents(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "app.py").write_text("print(1)\n")
    assert (
        measure_command([PY, str(tmp_path / "a" / "app.py")]).value
        == measure_command([PY, str(tmp_path / "b" / "app.py")]).value
    )


def test_shebang_interpreter_is_covered(tmp_path: Path) -> None:
    script = tmp_path / "tool"
    script.write_text(f"#!{PY}\nprint(1)\n")
    script.chmod(0o755)
    result = measure_command([str(script)])
    assert [c.role for c in result.covered] == ["executable", "interpreter"]
    assert result.covered[1].path == PY


def test_placeholders_and_options_are_not_files(tmp_path: Path) -> None:
    result = measure_command([PY, "-c", "pass", "$$VEIL::pw$$"], str(tmp_path))
    assert [c.role for c in result.covered] == ["executable"]


def test_relative_arguments_resolve_against_pwd(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_text("x")
    result = measure_command([PY, "data.txt"], str(tmp_path))
    assert result.covered[-1].role == "argument"


def test_missing_program_is_a_clear_error() -> None:
    with pytest.raises(MeasurementError, match="not found"):
        measure_command(["no-such-program-veil"], "/", "/usr/bin")
