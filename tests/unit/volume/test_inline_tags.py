"""Tag tables in the checkpoint (docs/volume-format.md, "Per-file integrity"): small files'
inline in the manifest, larger ones' in ID.R.tags; moving between the two; the tampering that
concerns inline tables; volumes of format version 1 open, and upgrade."""

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

import veil.volume.manifest as manifest_module
from tests.unit.volume.legacy import build_v1
from veil.volume import IntegrityError, StaleVolume, Volume, VolumeError, verify_volume
from veil.volume.volume import DEFAULT_CHUNK

MODES = ["encrypted", "authenticated"]


def _table(root: Path, file_id: str) -> Path:
    """The file's table as of the last checkpoint (ID.R.tags), or where none is."""
    found = sorted((root / "objects" / file_id[:2]).glob(f"{file_id}.*.tags"))
    assert len(found) <= 1, found
    return found[0] if found else root / "objects" / file_id[:2] / f"{file_id}.none.tags"


def _write(volume: Volume, path: str, data: bytes) -> None:
    with volume.open_file(path, "w") as handle:
        handle.write(data)


def _manifest_plaintext(root: Path, volume: Volume) -> dict[str, object]:
    sealed = (root / "manifest").read_bytes()
    aad = b"veil-manifest-v1" + volume.keys.volume_id
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
        volume.checkpoint()
        for path in ("/empty", "/one", "/two"):
            inode = volume.tree.lookup(path)
            assert inode.root is None
            assert len(inode.tags or b"") == 16 * -(-sizes[path] // DEFAULT_CHUNK)
            assert not _table(volume.root, volume.file_id(path)).exists()
        assert volume.tree.lookup("/three").root is not None
        assert _table(volume.root, volume.file_id("/three")).stat().st_size == 3 * 16
        assert _manifest_plaintext(tmp_path / "v", volume)["version"] == 3


def test_a_file_growing_and_shrinking_moves_its_table(tmp_path: Path) -> None:
    key = os.urandom(32)
    big, small = os.urandom(5 * DEFAULT_CHUNK), b"small again"
    with Volume.create(tmp_path / "v", key) as volume:
        _write(volume, "/f", b"x")
        volume.checkpoint()
        _write(volume, "/f", big)  # cut to nothing first: a new object
        volume.checkpoint()
        file_id = volume.file_id("/f")
        assert _table(volume.root, file_id).exists()
    with Volume.open(tmp_path / "v", key) as volume:
        assert volume.open_file("/f").read() == big
        with volume.open_file("/f", "r+") as handle:
            handle.truncate(0)  # a new object again
            handle.write(small)
        volume.checkpoint()
        assert not _table(volume.root, file_id).exists(), "the table nothing needs is deleted"
        assert volume.tree.lookup("/f").root is None
    with Volume.open(tmp_path / "v", key) as volume:
        assert volume.open_file("/f").read() == small
    assert verify_volume(tmp_path / "v", key)[1] == []


@pytest.mark.parametrize("mode", MODES)
def test_an_older_copy_of_a_small_file_restored(tmp_path: Path, mode: str) -> None:
    key = os.urandom(32)
    with Volume.create(tmp_path / "v", key, mode) as volume:
        _write(volume, "/s", b"old contents")
        file_id = volume.file_id("/s")
    stored = tmp_path / "v" / "objects" / file_id[:2] / file_id
    old = stored.read_bytes()
    with Volume.open(tmp_path / "v", key) as volume, volume.open_file("/s", "r+") as handle:
        handle.write(b"new contents")  # in the same object, over the old record
    stored.write_bytes(old)
    problems = {p.path: p.reason for p in verify_volume(tmp_path / "v", key)[1]}
    assert "not the current version" in problems["/s"]
    with Volume.open(tmp_path / "v", key) as volume, pytest.raises(IntegrityError):
        volume.open_file("/s").read()


def test_a_planted_table_for_a_small_file_is_reported(tmp_path: Path) -> None:
    key = os.urandom(32)
    with Volume.create(tmp_path / "v", key) as volume:
        _write(volume, "/s", b"small")
        file_id = volume.file_id("/s")
    _table(tmp_path / "v", file_id).write_bytes(os.urandom(16))
    problems = verify_volume(tmp_path / "v", key)[1]
    assert [p.reason for p in problems] == [
        "an object no file refers to (added outside veil, or left by a crash)"
    ]
    with Volume.open(tmp_path / "v", key) as volume:
        assert volume.open_file("/s").read() == b"small", "the planted table is never read"


@pytest.mark.parametrize("manifest_version", [1, 2])
@pytest.mark.parametrize("mode", MODES)
def test_a_version_1_volume_opens_and_is_upgraded(tmp_path: Path, mode: str, manifest_version: int) -> None:
    key, root = os.urandom(32), tmp_path / "v"
    files = {"/a/small": b"written by veil 0.1.0", "/big": os.urandom(5 * DEFAULT_CHUNK + 7), "/empty": b""}
    old_tag = build_v1(root, key, files, ("/a",), mode, manifest_version=manifest_version)

    tag, problems = verify_volume(root, key, old_tag)  # read-only: nothing is upgraded
    assert (tag, problems) == (old_tag, [])
    assert json.loads((root / "volume.json").read_text())["version"] == 1

    with pytest.raises(StaleVolume):
        Volume.open(root, key, "00" * 32)
    with Volume.open(root, key, old_tag) as volume:  # the tag the CAS holds opens it
        assert json.loads((root / "volume.json").read_text())["version"] == 3
        assert _manifest_plaintext(root, volume)["version"] == 3
        assert volume.tag != old_tag and old_tag in volume.history
        for path, data in files.items():
            assert volume.open_file(path).read() == data
        assert volume.stat("/a").mode == 0o750 and volume.stat("/a/small").mode == 0o640
        _write(volume, "/a/small", b"rewritten")
        final = volume.close()
    with Volume.open(root, key, old_tag) as volume:  # its checkpoint still names the old tag
        assert volume.tag == final
        assert volume.open_file("/a/small").read() == b"rewritten"
    assert verify_volume(root, key, final)[1] == []


def test_a_manifest_of_a_later_version_is_refused_by_its_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = os.urandom(32)
    with Volume.create(tmp_path / "v", key) as volume:
        with monkeypatch.context() as patch:
            patch.setattr(manifest_module, "VERSION", 4)
            volume.manifest.version = 4
            (volume.root / "manifest").write_bytes(volume.manifest.seal(volume.keys.manifest))
        volume.readonly = True  # leave the file as it is
    with pytest.raises(VolumeError, match="v4 is not supported"):
        Volume.open(tmp_path / "v", key)
