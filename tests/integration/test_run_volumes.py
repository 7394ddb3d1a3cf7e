"""`veil run` with a policy volume: ciphertext on disk, persistence, rollback refused."""

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PYTHON, TESTS, journal_session, measurement_of, requires_root, veil, wait_gone
from veil.cas import Cas
from veil.volume import StaleVolume, Volume
from veil.volume.mount import state_file

pytestmark = requires_root


def run(tmp_path: Path, entry: str, accept_fresh: bool = True) -> tuple[int, str, str]:
    session = journal_session(tmp_path / "data", {"ENTRY": entry}, accept_fresh)
    policy = tmp_path / "session.yaml"
    policy.write_text(yaml.safe_dump(session))
    result = veil(
        "run", "--policy", str(policy), "--service", "app", env={"VEIL_HOME": str(tmp_path / "home")}
    )
    return result.returncode, result.stdout, result.stderr


def test_data_persists_as_ciphertext_and_an_older_copy_is_refused(tmp_path: Path) -> None:
    code, out, err = run(tmp_path, "one")
    assert code == 0, err
    assert out == "entry one\n"
    assert "created fresh encrypted volume 'data'" in err
    storage = tmp_path / "data"
    assert (storage / "volume.json").exists() and not (storage / "log").exists()
    for path in storage.rglob("*"):
        if path.is_file():
            assert b"entry one" not in path.read_bytes(), "the journal is ciphertext on disk"
    snapshot = tmp_path / "snapshot"
    shutil.copytree(storage, snapshot)

    code, out, err = run(tmp_path, "two")
    assert code == 0, err
    assert out == "entry one\nentry two\n"

    shutil.rmtree(storage)
    shutil.copytree(snapshot, storage)
    code, out, err = run(tmp_path, "three")
    assert code == 1 and out == ""
    assert "volume 'data' at" in err and "is refused" in err and "older copy" in err

    audit = veil("audit", "show", env={"VEIL_HOME": str(tmp_path / "home")}).stdout
    assert audit.count("volume.tag ") == 3  # created fresh, then the end of run one and of run two
    assert veil("audit", "verify", env={"VEIL_HOME": str(tmp_path / "home")}).returncode == 0


def test_a_fresh_volume_needs_the_policy_flag(tmp_path: Path) -> None:
    code, out, err = run(tmp_path, "one", accept_fresh=False)
    assert code == 1 and out == ""
    assert "does not accept a fresh volume" in err


def test_unknown_data_in_place_of_a_fresh_volume_is_refused(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "planted").write_text("x")
    code, _, err = run(tmp_path, "one")
    assert code == 1
    assert "refusing to adopt data the CAS has never seen" in err


def _crash_like_change(tmp_path: Path) -> None:
    """What a crash after a commit leaves: the volume moved on, the CAS never heard of it."""
    cas = Cas.open_embedded(tmp_path / "home" / "cas")
    try:
        key = cas.volume_key_for_owner("test/journal", "data", "local")
        held = cas.volume_tag("test/journal", "data")
    finally:
        cas.close()
    volume = Volume.open(tmp_path / "data", key, held)  # as the runtime mounts it
    with volume, volume.open_file("/log/journal.txt", "a") as handle:
        handle.write(b"entry written before the crash\n")


def test_a_volume_that_moved_on_after_a_crash_opens_without_anyone(tmp_path: Path) -> None:
    assert run(tmp_path, "one")[0] == 0
    _crash_like_change(tmp_path)
    code, out, err = run(tmp_path, "two")
    assert code == 0, err
    assert out == "entry one\nentry written before the crash\nentry two\n"


def test_an_owner_accepts_a_restored_copy_but_not_a_damaged_one(tmp_path: Path) -> None:
    assert run(tmp_path, "one")[0] == 0
    snapshot = tmp_path / "snapshot"
    shutil.copytree(tmp_path / "data", snapshot)
    assert run(tmp_path, "two")[0] == 0
    shutil.rmtree(tmp_path / "data")
    shutil.copytree(snapshot, tmp_path / "data")  # the owner restores a backup on purpose
    code, _, err = run(tmp_path, "three")
    assert code == 1 and "is refused" in err and "older copy" in err

    policy = str(tmp_path / "session.yaml")
    home = {"VEIL_HOME": str(tmp_path / "home")}
    accepted = veil("volume", "accept", "--policy", policy, "--volume", "data", env=home)
    assert accepted.returncode == 0, accepted.stderr
    code, out, err = run(tmp_path, "four")
    assert code == 0, err
    assert out == "entry one\nentry four\n"
    assert "volume.tag.accept" in veil("audit", "show", env=home).stdout

    victim = next(p for p in (tmp_path / "data" / "objects").rglob("*") if p.is_file())
    data = bytearray(victim.read_bytes())
    data[20] ^= 1
    victim.write_bytes(bytes(data))
    refused = veil("volume", "accept", "--policy", policy, "--volume", "data", env=home)
    assert refused.returncode == 1 and "cannot be accepted" in refused.stderr


def test_freshness_fsync_leaves_no_rollback_window(tmp_path: Path) -> None:
    """With freshness: fsync the CAS holds each commit's tag before fsync returns: after a
    kill -9 of everything, the state the program was told is durable is the only one accepted."""
    data, release = tmp_path / "data", tmp_path / "release"
    command = [PYTHON, str(TESTS / "programs" / "fsync_writer.py"), f"{data}/log/journal.txt"]
    session = {
        "name": "test/fresh",
        "version": "1",
        "security": {"tolerate": ["sim"]},
        "volumes": [{"name": "data", "accept_fresh": True, "freshness": "fsync"}],
        "services": [
            {
                "name": "app",
                "attestation": [{"platform": "sim", "measurement": measurement_of(command)}],
                "command": command,
                "environment": {"ENTRY": "one", "RELEASE": str(release)},
                "volumes": [{"name": "data", "path": str(data)}],
            }
        ],
    }
    policy = tmp_path / "session.yaml"
    policy.write_text(yaml.safe_dump(session))
    home = {"VEIL_HOME": str(tmp_path / "home")}
    release.touch()
    assert veil("run", "--policy", str(policy), "--service", "app", env=home).returncode == 0
    snapshot = tmp_path / "snapshot"
    shutil.copytree(data, snapshot, ignore=shutil.ignore_patterns(".lock"))
    release.unlink()

    session["services"][0]["environment"]["ENTRY"] = "two"
    policy.write_text(yaml.safe_dump(session))
    runtime = subprocess.Popen(
        [sys.executable, "-m", "veil", "run", "--policy", str(policy), "--service", "app"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **home},
        start_new_session=True,
    )
    assert runtime.stdout is not None
    said = runtime.stdout.readline().split()  # fsync returned: the CAS holds that tag
    assert said[:1] == [b"synced"], said
    cas = Cas.open_embedded(tmp_path / "home" / "cas")
    try:
        held = cas.volume_tag("test/fresh", "data")
        key = cas.volume_key_for_owner("test/fresh", "data", "local")
    finally:
        cas.close()
    mount_daemon = json.loads(state_file(data).read_text())["pid"]
    os.killpg(runtime.pid, signal.SIGKILL)  # the runtime, the program, the mount: no unmount
    os.kill(mount_daemon, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(said[1]), signal.SIGKILL)  # the program runs in a session of its own
    runtime.wait()
    assert wait_gone(mount_daemon)  # its lock on the volume goes with it
    subprocess.run(["fusermount3", "-u", "-z", str(data)], check=False)
    assert held is not None
    with Volume.open(data, key, held) as volume:  # the crashed state opens, and holds "two"
        assert volume.open_file("/log/journal.txt").read() == b"entry one\nentry two\n"
    shutil.rmtree(data)
    shutil.copytree(snapshot, data)  # an older copy, made before the acknowledged write
    with pytest.raises(StaleVolume):
        Volume.open(data, key, held)


def test_a_read_only_volume_starts_any_number_of_times_and_refuses_writes(tmp_path: Path) -> None:
    """``readonly: true``: mounted read-only at exactly the tag the CAS holds, which never
    moves (code shipped in an image: every container starts from the same storage). A
    write is EROFS, never a silent new tag; a storage that moved on is refused."""
    code = tmp_path / "code"
    key = os.urandom(32)
    with Volume.create(code, key) as volume, volume.open_file("/hello.txt", "w") as handle:
        handle.write(b"shipped\n")
    shipped = Volume.open(code, key, None, readonly=True)
    tag = shipped.tag
    shipped.close()
    script = (
        f"cat {code}/hello.txt; echo x > {code}/new.txt 2>/dev/null || echo refused; cat {code}/new.txt 2>&1"
    )
    command = ["/bin/sh", "-c", script]
    session = {
        "name": "test/code",
        "version": "1",
        "security": {"tolerate": ["sim"]},
        "secrets": [
            {
                "name": "code-key",
                "kind": "binary",
                "value": base64.b64encode(key).decode(),
                "encoding": "base64",
            }
        ],
        "volumes": [{"name": "code", "key": "code-key", "initial_tag": tag, "readonly": True}],
        "services": [
            {
                "name": "app",
                "attestation": [{"platform": "sim", "measurement": measurement_of(command)}],
                "command": command,
                "volumes": [{"name": "code", "path": str(code)}],
            }
        ],
    }
    policy = tmp_path / "session.yaml"
    policy.write_text(yaml.safe_dump(session))
    for _ in range(2):
        result = veil(
            "run", "--policy", str(policy), "--service", "app", env={"VEIL_HOME": str(tmp_path / "home")}
        )
        assert result.returncode == 1  # the last cat: no new file
        assert result.stdout.splitlines()[:2] == ["shipped", "refused"], result.stderr
        assert "read-only" in result.stderr
    with Volume.open(code, key, tag, readonly=True) as again:
        assert again.tag == tag  # nothing moved
    # the storage written by someone holding the key (a later state): refused
    with Volume.open(code, key, tag) as writer, writer.open_file("/hello.txt", "w") as handle:
        handle.write(b"changed\n")
    result = veil(
        "run", "--policy", str(policy), "--service", "app", env={"VEIL_HOME": str(tmp_path / "home")}
    )
    assert result.returncode != 0
    assert "read-only volume must be at the tag the CAS holds" in result.stderr


def test_a_run_that_read_tampered_data_records_no_tag(tmp_path: Path) -> None:
    """A program may carry on after EIO (and write an output from what it could read): a
    run in which a volume refused tampered data records no new tag for any volume, and
    `veil run` fails with an integrity error."""
    code, out = tmp_path / "code", tmp_path / "out"
    key = os.urandom(32)
    with Volume.create(code, key) as volume, volume.open_file("/input.txt", "w") as handle:
        handle.write(b"the input\n" * 100)
    with Volume.open(code, key, None, readonly=True) as shipped:
        tag = shipped.tag
    objects = sorted(p for p in (code / "objects").rglob("*") if p.is_file() and not p.name.endswith(".tags"))
    data = bytearray(objects[0].read_bytes())
    data[len(data) // 2] ^= 1  # the host flips one bit of the stored input
    objects[0].write_bytes(bytes(data))
    script = f"cat {code}/input.txt > /dev/null 2>&1; echo written > {out}/result; echo carried on"
    command = ["/bin/sh", "-c", script]
    session = {
        "name": "test/tampered",
        "version": "1",
        "security": {"tolerate": ["sim"]},
        "secrets": [
            {"name": "k", "kind": "binary", "value": base64.b64encode(key).decode(), "encoding": "base64"}
        ],
        "volumes": [
            {"name": "code", "key": "k", "initial_tag": tag, "readonly": True},
            {"name": "out", "accept_fresh": True},
        ],
        "services": [
            {
                "name": "app",
                "attestation": [{"platform": "sim", "measurement": measurement_of(command)}],
                "command": command,
                "volumes": [{"name": "code", "path": str(code)}, {"name": "out", "path": str(out)}],
            }
        ],
    }
    policy = tmp_path / "session.yaml"
    policy.write_text(yaml.safe_dump(session))
    home = tmp_path / "home"
    result = veil("run", "--policy", str(policy), "--service", "app", env={"VEIL_HOME": str(home)})
    assert result.stdout == "carried on\n"  # the program did not notice
    assert result.returncode != 0
    assert "integrity error: volume 'code' refused" in result.stderr, result.stderr
    cas = Cas.open_embedded(home / "cas")
    try:
        recorded = cas.volume_tag("test/tampered", "out")
    finally:
        cas.close()
    out_key = base64.b64decode(_volume_key(home, "test/tampered", "out"))
    with Volume.open(out, out_key, None, readonly=True) as written:
        assert written.tag != recorded  # what the run wrote is not the state the CAS holds
        assert any(e.path == "/result" for e in written.walk())


def _volume_key(home: Path, session: str, volume: str) -> str:
    cas = Cas.open_embedded(home / "cas")
    try:
        found = cas.records.get("volume", f"{session}#{volume}")
        assert found is not None
        return str(found[1]["key"])
    finally:
        cas.close()
