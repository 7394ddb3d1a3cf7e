"""Tag tables of small files live in the sealed manifest (docs/volume-format.md, "Per-file
integrity"): where each table is, moving between the two places, and the tampering that
concerns inline tables; manifests of version 1 still open."""

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import veil.volume.manifest as manifest_module
from veil.volume import IntegrityError, Volume, VolumeError, verify_volume
from veil.volume.chunks import tags_root
from veil.volume.volume import DEFAULT_CHUNK

MODES = ["encrypted", "authenticated"]


def _table(root: Path, file_id: str) -> Path:
    return root / "objects" / file_id[:2] / f"{file_id}.tags"


def _write(volume: Volume, path: str, data: bytes) -> None:
    with volume.open_file(path, "w") as handle:
        handle.write(data)


def _manifest_plaintext(volume: Volume) -> dict[str, object]:
    sealed = (volume.root / "manifest").read_bytes()
    aad = b"veil-manifest-v1" + volume.manifest.volume_id
    result: dict[str, object] = json.loads(
        AESGCM(volume.keys.manifest).decrypt(sealed[:12], sealed[12:], aad)
    )
    return result


@pytest.mark.parametrize("mode", MODES)
def test_files_of_up_to_two_chunks_keep_their_table_in_the_manifest(tmp_path: Path, mode: str) -> None:
    sizes = {"/empty": 0, "/one": 1024, "/two": 2 * DEFAULT_CHUNK, "/three": 2 * DEFAULT_CHUNK + 1}
    with Volume.create(tmp_path / "v", os.urandom(32), mode) as volume:
        for path, size in sizes.items():
            _write(volume, path, os.urandom(size))
        volume.flush()
        entries = volume.manifest.entries
        for path in ("/empty", "/one", "/two"):
            assert "root" not in entries[path]
            assert len(bytes.fromhex(entries[path]["tags"])) == 16 * -(-sizes[path] // DEFAULT_CHUNK)
            assert not _table(volume.root, entries[path]["id"]).exists()
        assert "tags" not in entries["/three"]
        assert _table(volume.root, entries["/three"]["id"]).stat().st_size == 3 * 16
        assert _manifest_plaintext(volume)["version"] == 2


def test_a_file_growing_and_shrinking_moves_its_table(tmp_path: Path) -> None:
    key = os.urandom(32)
    big, small = os.urandom(5 * DEFAULT_CHUNK), b"small again"
    with Volume.create(tmp_path / "v", key) as volume:
        _write(volume, "/f", b"x")
        volume.flush()
        file_id = volume.manifest.entries["/f"]["id"]
        _write(volume, "/f", big)
        volume.flush()
        assert _table(volume.root, file_id).exists()
        assert "tags" not in volume.manifest.entries["/f"]
    with Volume.open(tmp_path / "v", key) as volume:
        assert volume.open_file("/f").read() == big
        _write(volume, "/f", small)
        volume.flush()
        assert not _table(volume.root, file_id).exists(), "the table nothing needs is deleted"
        assert "root" not in volume.manifest.entries["/f"]
    with Volume.open(tmp_path / "v", key) as volume:
        assert volume.open_file("/f").read() == small
    assert verify_volume(tmp_path / "v", key)[1] == []


@pytest.mark.parametrize("mode", MODES)
def test_an_older_copy_of_a_small_file_restored(tmp_path: Path, mode: str) -> None:
    key = os.urandom(32)
    with Volume.create(tmp_path / "v", key, mode) as volume:
        _write(volume, "/s", b"old contents")
        volume.flush()
        file_id = volume.manifest.entries["/s"]["id"]
    stored = tmp_path / "v" / "objects" / file_id[:2] / file_id
    old = stored.read_bytes()
    with Volume.open(tmp_path / "v", key) as volume:
        _write(volume, "/s", b"new contents")
    stored.write_bytes(old)
    problems = {p.path: p.reason for p in verify_volume(tmp_path / "v", key)[1]}
    assert "not the current version" in problems["/s"]
    with Volume.open(tmp_path / "v", key) as volume, pytest.raises(IntegrityError):
        volume.open_file("/s").read()


def test_a_planted_table_for_a_small_file_is_reported(tmp_path: Path) -> None:
    key = os.urandom(32)
    with Volume.create(tmp_path / "v", key) as volume:
        _write(volume, "/s", b"small")
        volume.flush()
        file_id = volume.manifest.entries["/s"]["id"]
    _table(tmp_path / "v", file_id).write_bytes(os.urandom(16))
    problems = verify_volume(tmp_path / "v", key)[1]
    assert [p.reason for p in problems] == [
        "an object no file refers to (added outside veil, or left by a crash)"
    ]
    with Volume.open(tmp_path / "v", key) as volume:
        assert volume.open_file("/s").read() == b"small", "the planted table is never read"


def _reseal(volume: Volume, version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(manifest_module, "VERSION", version)
        (volume.root / "manifest").write_bytes(volume.manifest.seal(volume.keys.manifest))


def test_a_version_1_manifest_opens_and_is_written_back_as_version_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key, data = os.urandom(32), b"written by a version 1 veil"
    with Volume.create(tmp_path / "v", key) as volume:
        _write(volume, "/s", data)
        volume.flush()
        # As version 1 stored it: every file's table in ID.tags, its root in the entry.
        entry = volume.manifest.entries["/s"]
        tags = bytes.fromhex(entry.pop("tags"))
        entry["root"] = tags_root(tags)
        _table(volume.root, entry["id"]).write_bytes(tags)
        _reseal(volume, 1, monkeypatch)
    with Volume.open(tmp_path / "v", key) as volume:
        assert volume.open_file("/s").read() == data
        _write(volume, "/s", data + b", rewritten")
        volume.flush()
        assert _manifest_plaintext(volume)["version"] == 2
        assert "tags" in volume.manifest.entries["/s"]
    assert verify_volume(tmp_path / "v", key)[1] == []


def test_a_manifest_of_a_later_version_is_refused_by_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = os.urandom(32)
    with Volume.create(tmp_path / "v", key) as volume:
        _reseal(volume, 3, monkeypatch)
    with pytest.raises(VolumeError, match="v3 is not supported"):
        Volume.open(tmp_path / "v", key)
