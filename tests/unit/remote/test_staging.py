"""Where `veil remote run` stages the ciphertext it sends: in memory when there is room
(nothing written to a disk and synced for a copy that is sent, not kept), else in the
submitter's home; removed either way."""

from pathlib import Path

import pytest

from veil.remote import workflow
from veil.remote.ssh import SshHost
from veil.remote.workflow import Submission, _room_in_memory, _staging


def _submission(tmp_path: Path) -> Submission:
    code = tmp_path / "code"
    code.mkdir()
    (code / "a").write_bytes(b"x" * 4096)
    return Submission(SshHost.parse("h"), "https://cas", ["/bin/true"], code, None, tmp_path / "out", "j1")


def test_the_volumes_are_staged_in_memory_when_there_is_room(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with _staging(_submission(tmp_path), home) as (staging, aside):
        assert staging.parent == Path("/dev/shm") and staging.name.startswith("veil-remote-j1-")
        assert staging.stat().st_mode & 0o777 == 0o700
        assert aside.parent == home and aside.name.startswith(".staging-j1-")
        (staging / "code").mkdir()
    assert not staging.exists() and not aside.exists()


def test_without_room_in_memory_they_are_staged_in_the_home_and_removed_after_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not _room_in_memory(1 << 60)
    monkeypatch.setattr(workflow, "_room_in_memory", lambda size: False)
    home = tmp_path / "home"
    with pytest.raises(RuntimeError), _staging(_submission(tmp_path), home) as (staging, aside):
        assert staging.parent == aside and aside.parent == home
        raise RuntimeError("the upload failed")
    assert list(home.iterdir()) == []
