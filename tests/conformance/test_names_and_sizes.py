"""Limits as ext4 has them: names of at most 255 bytes (ENAMETOOLONG above, on every
operation; issue #26: longer names were accepted and `veil volume decrypt` then failed),
and files no larger than the format allows (EFBIG; a huge truncate used to write ciphertext
until the disk was full)."""

import os
from pathlib import Path

import pytest

from tests.conformance.conftest import agree
from tests.conformance.targets import Ops, Scenario

LONG = "n" * 256
LONGEST = "n" * 255
WIDE = "é" * 128  # 256 bytes of UTF-8 in 128 characters


def long_names(ops: Ops) -> None:
    for name in (LONG, WIDE):
        ops.write(name, b"x")
        ops.do(f"mkdir {len(name)}", lambda name=name: os.mkdir(ops.path(name)))
        ops.do(f"stat {len(name)}", lambda name=name: os.stat(ops.path(name)) and None)
    ops.write(LONGEST, b"fits")
    ops.read(LONGEST)
    ops.do("rename to long", lambda: os.rename(ops.path(LONGEST), ops.path(LONG)))
    ops.do("mkdir d", lambda: os.mkdir(ops.path("d")))
    ops.write(f"d/{LONG}", b"x")


def huge_truncate(ops: Ops) -> None:
    ops.write("f", b"data")
    ops.do("truncate 999999999999999", lambda: os.truncate(ops.path("f"), 999_999_999_999_999))
    ops.do("size", lambda: os.stat(ops.path("f")).st_size)
    ops.do("truncate -1", lambda: os.truncate(ops.path("f"), -1))
    ops.read("f")


SCENARIOS: list[Scenario] = [long_names, huge_truncate]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_limits_as_the_plain_directory(scenario: Scenario, tmp_path: Path) -> None:
    agree(scenario, tmp_path)
