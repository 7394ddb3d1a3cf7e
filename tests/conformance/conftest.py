"""Run a scenario on every target and compare with the plain directory."""

from pathlib import Path

import pytest

from tests.conformance.targets import TARGETS, Scenario, have_gocryptfs, outcome
from tests.conftest import requires_root

pytestmark = requires_root


def agree(scenario: Scenario, work: Path) -> None:
    """veil's log and tree equal the plain directory's; gocryptfs's too where it is
    installed (a peer, held to the same oracle)."""
    results = {}
    for name, target in TARGETS.items():
        if name == "gocryptfs" and not have_gocryptfs():
            pytest.fail("gocryptfs is not installed: `make test` installs it (scripts/os-packages.txt)")
        place = work / name
        place.mkdir()
        with target(place) as root:
            results[name] = outcome(scenario, root)
    oracle = results["plain"]
    assert results["veil"][0] == oracle[0], "operations' outcomes differ from the plain directory"
    assert results["veil"][1] == oracle[1], "the tree left behind differs from the plain directory"
