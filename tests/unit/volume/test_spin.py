"""veil.volume.spin: polling before sleeping, bounded."""

import importlib
import time

import pytest

from veil.volume import spin


def test_poll_returns_what_the_attempt_finds() -> None:
    answers = iter([None, None, 7])
    assert spin.poll(lambda: next(answers), 10**9) == 7


def test_poll_gives_up_after_its_window_and_tries_at_least_once() -> None:
    calls: list[float] = []

    def nothing() -> None:
        calls.append(time.perf_counter())

    start = time.perf_counter()
    assert spin.poll(nothing, 2_000_000) is None
    assert 0.002 <= time.perf_counter() - start < 0.5
    assert len(calls) > 1
    calls.clear()
    assert spin.poll(nothing, 0) is None
    assert len(calls) == 1


def test_the_environment_sets_the_windows_and_zero_turns_both_off(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        monkeypatch.setenv("VEIL_MOUNT_POLL_US", "0")
        importlib.reload(spin)
        assert spin.REQUEST_NS == 0 and spin.HELPER_NS == 0
        monkeypatch.setenv("VEIL_MOUNT_POLL_US", "50")
        importlib.reload(spin)
        assert spin.REQUEST_NS == 50_000 and spin.HELPER_NS == 1_000_000
        monkeypatch.setenv("VEIL_MOUNT_POLL_US", "-5")  # not a number of microseconds: the default
        importlib.reload(spin)
        assert spin.REQUEST_NS == 200_000 and spin.HELPER_NS == 1_000_000
        monkeypatch.delenv("VEIL_MOUNT_POLL_US")
        importlib.reload(spin)
        assert spin.REQUEST_NS == 200_000 and spin.HELPER_NS == 1_000_000
    finally:
        monkeypatch.undo()
        importlib.reload(spin)
