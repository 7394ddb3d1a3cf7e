"""rename(2) and renameat2(2): every flag implemented or refused, never ignored (issue #26:
RENAME_EXCHANGE used to return 0, lose the target and put the source's data in its place)."""

import os
from pathlib import Path

import pytest

from tests.conformance.conftest import agree
from tests.conformance.targets import Ops, Scenario, veil

NOREPLACE, EXCHANGE, WHITEOUT = 1, 2, 4


def exchange_files(ops: Ops) -> None:
    ops.write("x", b"x" * 10_000)
    ops.write("y", b"y" * 20)
    ops.renameat2("x", "y", EXCHANGE)
    ops.read("x")
    ops.read("y")


def exchange_a_file_and_a_directory(ops: Ops) -> None:
    ops.do("mkdir d", lambda: os.mkdir(ops.path("d")))
    ops.write("d/inner", b"inside")
    ops.write("f", b"file")
    ops.renameat2("f", "d", EXCHANGE)
    ops.read("f/inner")
    ops.read("d")


def exchange_errors(ops: Ops) -> None:
    ops.write("a", b"a")
    ops.do("mkdir dir", lambda: os.mkdir(ops.path("dir")))
    ops.write("dir/b", b"b")
    ops.renameat2("a", "missing", EXCHANGE)  # ENOENT: the target must exist
    ops.renameat2("missing", "a", EXCHANGE)
    ops.renameat2("dir", "dir/b", EXCHANGE)  # EINVAL: one inside the other
    ops.renameat2("a", "a", EXCHANGE)


def noreplace(ops: Ops) -> None:
    ops.write("a", b"a")
    ops.write("b", b"b")
    ops.renameat2("a", "b", NOREPLACE)  # EEXIST, nothing changed
    ops.renameat2("a", "c", NOREPLACE)
    ops.read("c")


def refused_flags(ops: Ops) -> None:
    ops.write("a", b"a")
    ops.write("b", b"b")
    ops.renameat2("a", "b", NOREPLACE | EXCHANGE)  # EINVAL
    ops.renameat2("a", "b", 1 << 7)  # an unknown flag: EINVAL


def plain_rename(ops: Ops) -> None:
    ops.do("mkdir d", lambda: os.mkdir(ops.path("d")))
    ops.write("d/f", b"f")
    ops.write("g", b"g")
    ops.do("rename g d/f", lambda: os.rename(ops.path("g"), ops.path("d/f")))
    ops.do("mkdir e", lambda: os.mkdir(ops.path("e")))
    ops.do("rename d e", lambda: os.rename(ops.path("d"), ops.path("e")))  # e empty: replaced
    ops.do("mkdir d2", lambda: os.mkdir(ops.path("d2")))
    ops.write("d2/x", b"x")
    ops.do("rename e d2", lambda: os.rename(ops.path("e"), ops.path("d2")))  # ENOTEMPTY
    ops.do("rename d2 d2/x/y", lambda: os.rename(ops.path("d2"), ops.path("d2/y")))  # EINVAL


SCENARIOS: list[Scenario] = [
    exchange_files,
    exchange_a_file_and_a_directory,
    exchange_errors,
    noreplace,
    refused_flags,
    plain_rename,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_rename_as_the_plain_directory(scenario: Scenario, tmp_path: Path) -> None:
    agree(scenario, tmp_path)


def test_rename_whiteout_is_refused_not_ignored(tmp_path: Path) -> None:
    """RENAME_WHITEOUT (for overlay file systems) needs CAP_MKNOD and a whiteout device node;
    veil refuses it with EINVAL where ext4 would create one."""
    with veil(tmp_path) as root:
        ops = Ops(root)
        ops.write("a", b"a")
        ops.write("b", b"b")
        assert ops.renameat2("a", "b", WHITEOUT) == "EINVAL"
        assert ops.read("a") != "ENOENT" and ops.read("b") != "ENOENT"
