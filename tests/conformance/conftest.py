"""Run a scenario on every target and compare with the plain directory."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conformance.targets import TARGETS, Outcome, Scenario, have_gocryptfs, outcome
from tests.conftest import requires_root

pytestmark = requires_root
#: another user, for the scenarios about permissions (with allow_other on the mounts)
NOBODY = 65534


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A work directory every user may traverse (pytest's own is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="veil-conformance-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_everywhere(
    scenario: Scenario, work: Path, uid: int | None = None, setup: Scenario | None = None
) -> dict[str, Outcome]:
    """Each target's outcome of ``setup`` (as root) then ``scenario`` (as ``uid``)."""
    results = {}
    for name, target in TARGETS.items():
        if name == "gocryptfs" and not have_gocryptfs():
            pytest.fail("gocryptfs is not installed: `make test` installs it (scripts/os-packages.txt)")
        place = work / name
        place.mkdir()
        place.chmod(0o755)
        with target(place) as root:
            os.chmod(root, 0o777)
            if setup is not None:
                outcome(setup, root)
            results[name] = outcome(scenario, root, uid)
    return results


def agree(scenario: Scenario, work: Path, uid: int | None = None, setup: Scenario | None = None) -> None:
    """veil's log and tree equal the plain directory's. gocryptfs runs the same, as the
    peer (its differences are its own)."""
    results = run_everywhere(scenario, work, uid, setup)
    oracle = results["plain"]
    assert results["veil"][0] == oracle[0], "operations' outcomes differ from the plain directory"
    assert results["veil"][1] == oracle[1], "the tree left behind differs from the plain directory"
