"""Random operations on a volume and on a plain directory must give the same bytes."""

import os
import random
from pathlib import Path

import pytest

from veil.volume import Volume

MODES = ["encrypted", "authenticated"]


def _plain(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _compare(volume: Volume, plain: Path) -> None:
    expected = {}
    for directory, dirs, files in os.walk(plain):
        rel = "/" + os.path.relpath(directory, plain).replace(".", "", 1).lstrip("/")
        for name in dirs:
            expected[os.path.join(rel, name)] = None
        for name in files:
            expected[os.path.join(rel, name)] = (Path(directory) / name).read_bytes()
    actual = {}
    for entry in volume.walk():
        if entry.path == "/":
            continue
        actual[entry.path] = volume.open_file(entry.path).read() if entry.type == "file" else None
        if entry.type == "file":
            assert entry.size == len(actual[entry.path])
    assert actual.keys() == expected.keys()
    for path, content in expected.items():
        assert actual[path] == content, path


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(6))
def test_random_operations_match_a_plain_directory(tmp_path: Path, mode: str, seed: int) -> None:
    rnd = random.Random(seed)
    key = os.urandom(32)
    plain = tmp_path / "plain"
    plain.mkdir()
    volume = Volume.create(tmp_path / "vol", key, mode, chunk_size=rnd.choice([64, 4096]))
    files: list[str] = []
    dirs = ["/"]
    for step in range(250):
        op = rnd.choices(
            ["write", "truncate", "rename", "unlink", "mkdir", "read", "flush"],
            weights=[40, 10, 8, 5, 5, 25, 3],
        )[0]
        if op == "mkdir" or not files:
            path = os.path.join(rnd.choice(dirs), f"d{step}")
            volume.mkdir(path)
            _plain(plain, path).mkdir()
            dirs.append(path)
            path = os.path.join(rnd.choice(dirs), f"f{step}")
            files.append(path)
            with volume.open_file(path, "w"):
                pass
            _plain(plain, path).write_bytes(b"")
            continue
        path = rnd.choice(files)
        size = _plain(plain, path).stat().st_size
        if op == "write":
            offset = rnd.randint(0, size + 300)
            data = rnd.randbytes(rnd.choice([1, 7, 64, 100, 4096, 5000, 20000]))
            with volume.open_file(path, "r+") as handle:
                handle.seek(offset)
                handle.write(data)
            with open(_plain(plain, path), "r+b") as handle:
                handle.seek(offset)
                handle.write(data)
        elif op == "truncate":
            length = rnd.randint(0, size + 9000)
            volume.truncate(path, length)
            os.truncate(_plain(plain, path), length)
        elif op == "rename":
            target = os.path.join(rnd.choice(dirs), f"r{step}")
            volume.rename(path, target)
            _plain(plain, path).rename(_plain(plain, target))
            files[files.index(path)] = target
        elif op == "unlink":
            volume.unlink(path)
            _plain(plain, path).unlink()
            files.remove(path)
        elif op == "read":
            offset, length = rnd.randint(0, size + 10), rnd.randint(0, 9000)
            with volume.open_file(path) as handle:
                got = handle.pread(length, offset)
            with open(_plain(plain, path), "rb") as handle:
                handle.seek(offset)
                assert got == handle.read(length), (step, path)
        else:
            volume.flush(durable=False)
    _compare(volume, plain)
    tag = volume.close()
    reopened = Volume.open(tmp_path / "vol", key, expected_tag=tag)
    _compare(reopened, plain)
    reopened.close()
