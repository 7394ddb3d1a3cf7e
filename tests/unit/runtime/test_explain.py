"""What changed since the last accepted run: the hint printed with a measurement refusal."""

from pathlib import Path

from veil.runtime.explain import remember_accepted, what_changed
from veil.tee.measure import CoveredFile, Measurement


def _measured(*covered: tuple[str, int, str, str]) -> Measurement:
    files = tuple(CoveredFile(role, index, path, digest) for role, index, path, digest in covered)
    return Measurement(files[0].path, files)


PYTHON = ("executable", 0, "/usr/bin/python3", "aa" * 32)
APP = ("argument", 1, "/app/app.py", "bb" * 32)


def test_each_difference_is_named(tmp_path: Path) -> None:
    assert what_changed(tmp_path, "a/b/c", _measured(PYTHON)) == []
    remember_accepted(tmp_path, "a/b/c", _measured(PYTHON, APP))
    assert what_changed(tmp_path, "a/b/c", _measured(PYTHON, APP)) == []
    changed = _measured(
        ("executable", 0, "/usr/local/bin/python3", "cc" * 32),
        ("argument", 1, "/app/app.py", "dd" * 32),
        ("argument", 2, "/app/extra.py", "ee" * 32),
    )
    assert what_changed(tmp_path, "a/b/c", changed) == [
        "executable is /usr/local/bin/python3, was /usr/bin/python3",
        f"argument 1 /app/app.py changed (sha256 {'bb' * 6}… → {'dd' * 6}…)",
        "argument 2 /app/extra.py is covered now, not in the last accepted run",
    ]
    assert what_changed(tmp_path, "a/b/c", _measured(PYTHON)) == [
        "argument 1 /app/app.py was covered in the last accepted run, not now"
    ]


def test_a_damaged_record_is_no_hint(tmp_path: Path) -> None:
    (tmp_path / "accepted" / "a" / "b").mkdir(parents=True)
    (tmp_path / "accepted" / "a" / "b" / "c.json").write_text("{not json")
    assert what_changed(tmp_path, "a/b/c", _measured(PYTHON)) == []
