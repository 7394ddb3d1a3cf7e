"""`veil run` with a policy volume: ciphertext on disk, persistence, rollback refused."""

import shutil
from pathlib import Path

import yaml

from tests.conftest import PYTHON, TESTS, measurement_of, requires_root, veil
from veil.cas import Cas
from veil.volume import Volume

pytestmark = requires_root

JOURNAL = TESTS / "programs" / "journal.py"


def run(tmp_path: Path, entry: str, accept_fresh: bool = True) -> tuple[int, str, str]:
    data = tmp_path / "data"
    command = [PYTHON, str(JOURNAL), f"{data}/log/journal.txt"]
    session = {
        "name": "test/journal",
        "version": "1",
        "security": {"tolerate": ["sim"]},
        "volumes": [{"name": "data", "mode": "encrypted", "accept_fresh": accept_fresh}],
        "services": [
            {
                "name": "app",
                "attestation": [{"platform": "sim", "measurement": measurement_of(command)}],
                "command": command,
                "environment": {"ENTRY": entry},
                "volumes": [{"name": "data", "path": str(data)}],
            }
        ],
    }
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
    """What a crash after a flush leaves: the volume moved on, the CAS never heard of it."""
    cas = Cas.open_embedded(tmp_path / "home" / "cas")
    try:
        key = cas.volume_key_for_owner("test/journal", "data", "local")
    finally:
        cas.close()
    with Volume.open(tmp_path / "data", key) as volume, volume.open_file("/log/journal.txt", "a") as handle:
        handle.write(b"entry written before the crash\n")


def test_an_owner_accepts_a_volume_after_a_crash_but_not_a_damaged_one(tmp_path: Path) -> None:
    assert run(tmp_path, "one")[0] == 0
    _crash_like_change(tmp_path)
    code, _, err = run(tmp_path, "two")
    assert code == 1 and "is refused" in err

    policy = str(tmp_path / "session.yaml")
    home = {"VEIL_HOME": str(tmp_path / "home")}
    accepted = veil("volume", "accept", "--policy", policy, "--volume", "data", env=home)
    assert accepted.returncode == 0, accepted.stderr
    code, out, err = run(tmp_path, "three")
    assert code == 0, err
    assert out == "entry one\nentry written before the crash\nentry three\n"
    assert "volume.tag.accept" in veil("audit", "show", env=home).stdout

    victim = next(
        p for p in (tmp_path / "data" / "objects").rglob("*") if p.is_file() and p.stat().st_size > 50
    )
    data = bytearray(victim.read_bytes())
    data[40] ^= 1
    victim.write_bytes(bytes(data))
    refused = veil("volume", "accept", "--policy", policy, "--volume", "data", env=home)
    assert refused.returncode == 1 and "cannot be accepted" in refused.stderr
