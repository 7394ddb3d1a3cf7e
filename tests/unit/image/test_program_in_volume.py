"""``measure: image`` with the program inside a protected path (issue #31): measured
without it, found after the volumes are mounted, and only where its content is vouched
for (a volume, or the measured tree)."""

import dataclasses
import os
from pathlib import Path

import pytest

from veil.tee.image_measure import measure_image, resolve_after_mount
from veil.tee.measure import MeasurementError


def _script(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho hi\n")
    path.chmod(0o755)
    return path


def test_a_program_in_a_volume_path_is_found_after_the_mount(tmp_path: Path) -> None:
    root, volume = tmp_path / "root", tmp_path / "volume"
    root.mkdir()
    measured = measure_image([str(volume / "bin" / "run")], "/", None, [str(volume)], root=root)
    assert measured.executable == "" and measured.program == str(volume / "bin" / "run")
    with pytest.raises(MeasurementError, match="not found"):
        resolve_after_mount(measured)  # not mounted yet
    program = _script(volume / "bin" / "run")  # the volume, mounted
    assert resolve_after_mount(measured) == str(program)


def test_a_program_found_on_a_path_that_crosses_a_volume(tmp_path: Path) -> None:
    root, volume = tmp_path / "root", tmp_path / "venv"
    root.mkdir()
    measured = measure_image(["python"], "/", f"{volume}/bin:/nonexistent", [str(volume)], root=root)
    assert measured.executable == ""
    program = _script(volume / "bin" / "python")
    assert resolve_after_mount(measured) == str(program)


def test_a_missing_program_outside_every_volume_is_refused_before_attesting(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(MeasurementError, match="not found"):
        measure_image([str(tmp_path / "elsewhere" / "run")], "/", None, [str(tmp_path / "volume")], root=root)


def test_a_link_out_of_the_volume_counts_only_to_a_measured_file(tmp_path: Path) -> None:
    """A venv's bin/python links to the image's interpreter: accepted when that file is in
    the measured tree; a link to anything unmeasured (scratch space, a file added after
    the measurement) is refused."""
    root, volume = tmp_path / "root", tmp_path / "venv"
    root.mkdir()
    measured = measure_image([str(volume / "bin" / "python")], "/", None, [str(volume)], root=root)
    interpreter = _script(tmp_path / "usr" / "bin" / "python3")
    (volume / "bin").mkdir(parents=True)
    os.symlink(interpreter, volume / "bin" / "python")
    with pytest.raises(MeasurementError, match="neither in a protected volume nor in the measured image"):
        resolve_after_mount(measured)
    vouched = dataclasses.replace(measured, files=frozenset({str(interpreter)}))
    assert resolve_after_mount(vouched) == str(interpreter)
