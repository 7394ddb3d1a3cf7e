"""Protected volumes through the CLI and a real FUSE mount, with real programs."""

import contextlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import requires_root, veil
from veil.volume import daemon
from veil.volume.mount import state_file

pytestmark = requires_root


def _flip_first_object_byte(volume: Path, offset: int = 30) -> None:
    obj = next(
        p
        for p in sorted((volume / "objects").rglob("*"))
        if p.is_file() and not p.name.endswith(".tags") and p.stat().st_size > offset
    )
    data = bytearray(obj.read_bytes())
    data[offset] ^= 1
    obj.write_bytes(bytes(data))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "empty").write_bytes(b"")
    (src / "a" / "text.txt").write_text("hello\n" * 1000)
    (src / "a" / "b" / "random.bin").write_bytes(random.Random(1).randbytes(300_000))
    os.chmod(src / "a" / "text.txt", 0o640)
    return src


@pytest.mark.parametrize("mode", ["encrypted", "authenticated"])
def test_encrypt_ls_tag_verify_decrypt_round_trip(tmp_path: Path, tree: Path, mode: str) -> None:
    key, vol, out = tmp_path / "k", tmp_path / "vol", tmp_path / "out"
    made = veil("volume", "encrypt", str(tree), str(vol), "--key-file", str(key), "--mode", mode)
    assert made.returncode == 0, made.stderr
    tag = made.stdout.strip().splitlines()[-1]
    assert key.stat().st_size == 32 and key.stat().st_mode & 0o777 == 0o600
    assert veil("volume", "tag", str(vol), "--key-file", str(key)).stdout.strip() == tag
    listing = json.loads(veil("volume", "ls", str(vol), "--key-file", str(key), "--json").stdout)
    assert {e["path"]: e["size"] for e in listing if e["type"] == "file"} == {
        "/a/b/random.bin": 300_000,
        "/a/text.txt": 6000,
        "/empty": 0,
    }
    checked = veil("volume", "verify", str(vol), "--key-file", str(key), "--tag", tag)
    assert checked.returncode == 0 and tag in checked.stdout
    back = veil("volume", "decrypt", str(vol), str(out), "--key-file", str(key), "--tag", tag)
    assert back.returncode == 0, back.stderr
    for path in tree.rglob("*"):
        twin = out / path.relative_to(tree)
        assert twin.exists(), twin
        if path.is_file():
            assert twin.read_bytes() == path.read_bytes()
            assert twin.stat().st_mode & 0o777 == path.stat().st_mode & 0o777


def test_verify_names_the_damaged_file_and_exits_1(tmp_path: Path, tree: Path) -> None:
    key, vol = tmp_path / "k", tmp_path / "vol"
    veil("volume", "encrypt", str(tree), str(vol), "--key-file", str(key))
    _flip_first_object_byte(vol)
    result = veil("volume", "verify", str(vol), "--key-file", str(key), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["verified"] is False
    assert report["problems"][0]["path"].startswith("/")
    assert "chunk 0" in report["problems"][0]["reason"]


def test_verify_with_a_wrong_tag_or_key_exits_1(tmp_path: Path, tree: Path) -> None:
    key, vol = tmp_path / "k", tmp_path / "vol"
    veil("volume", "encrypt", str(tree), str(vol), "--key-file", str(key))
    stale = veil("volume", "verify", str(vol), "--key-file", str(key), "--tag", "0" * 64)
    assert stale.returncode == 1 and "does not descend from the expected" in stale.stderr
    other = tmp_path / "other"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    wrong = veil("volume", "verify", str(vol), "--key-file", str(other))
    assert wrong.returncode == 1 and "does not open the volume" in wrong.stderr


def _evict(path: Path) -> None:
    """Drop a mounted file's pages from the kernel cache, so the next read reaches the volume."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class Mounted:
    def __init__(self, tmp_path: Path) -> None:
        self.vol, self.key, self.mnt = tmp_path / "vol", tmp_path / "k", tmp_path / "mnt"
        self.mnt.mkdir()
        assert veil("volume", "create", str(self.vol), "--key-file", str(self.key)).returncode == 0

    def mount(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return veil("volume", "mount", str(self.vol), str(self.mnt), "--key-file", str(self.key), *extra)

    def unmount(self) -> str:
        result = veil("volume", "unmount", str(self.mnt))
        assert result.returncode == 0, result.stderr
        return result.stdout.strip().splitlines()[-1]


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Mounted]:
    m = Mounted(tmp_path)
    assert m.mount().returncode == 0
    yield m
    if os.path.ismount(m.mnt):
        m.unmount()


def test_sqlite3_database_on_a_mounted_volume(mounted: Mounted) -> None:
    db = mounted.mnt / "data" / "app.db"
    db.parent.mkdir()
    script = "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT);" + "".join(
        f"INSERT INTO t(v) VALUES('row {i} {'x' * (i % 50)}');" for i in range(10_000)
    )
    result = subprocess.run(
        ["sqlite3", str(db)], input="BEGIN;" + script + "COMMIT;", text=True, capture_output=True, check=False
    )
    assert result.returncode == 0, result.stderr
    tag = mounted.unmount()
    assert mounted.mount("--tag", tag).returncode == 0
    check = subprocess.run(
        ["sqlite3", str(db), "PRAGMA integrity_check; SELECT count(*) FROM t;"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.stdout.split() == ["ok", "10000"], check.stderr
    tag = mounted.unmount()
    assert (
        veil("volume", "verify", str(mounted.vol), "--key-file", str(mounted.key), "--tag", tag).returncode
        == 0
    )
    for path in mounted.vol.rglob("*"):
        if path.is_file():
            assert b"row 9999" not in path.read_bytes(), "rows are ciphertext on disk"


def test_large_reads_reach_the_volume_in_megabyte_requests(mounted: Mounted) -> None:
    """The mount raises the kernel's read-ahead to 1008 KiB (128 KiB requests cost 4x the
    calls; 1008 KiB replies still fit a 1 MiB pipe for splice), and what comes back through
    those requests, spliced from the read helper's memory, is what was written."""
    device = os.stat(mounted.mnt).st_dev
    knob = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    assert knob.read_text().strip() == "1008"
    data = random.Random(3).randbytes(5 * (1 << 20) + 12345)
    (mounted.mnt / "big").write_bytes(data)
    _evict(mounted.mnt / "big")
    assert (mounted.mnt / "big").read_bytes() == data
    with open(mounted.mnt / "big", "rb") as handle:
        handle.seek(3_000_001)
        assert handle.read(1_500_000) == data[3_000_001:4_500_001]
    for start in (4096 * 37, 1 << 20):  # requests that start inside a chunk, and on one
        _evict(mounted.mnt / "big")
        with open(mounted.mnt / "big", "rb") as handle:
            handle.seek(start)
            assert handle.read() == data[start:], start


def _daemon(mounted: Mounted) -> int:
    return int(json.loads(state_file(mounted.mnt).read_text())["pid"])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def test_an_idle_mount_does_not_poll(mounted: Mounted) -> None:
    """The mount's loop polls for the next request only briefly after each one
    (veil.volume.session): a mount nobody uses costs no CPU."""
    (mounted.mnt / "f").write_bytes(b"x" * 100_000)
    _evict(mounted.mnt / "f")
    assert (mounted.mnt / "f").read_bytes() == b"x" * 100_000
    pid = _daemon(mounted)
    time.sleep(0.2)
    before = _cpu_seconds(pid)
    time.sleep(1.5)
    assert _cpu_seconds(pid) - before < 0.2, "the daemon spins while idle"


def test_sigterm_ends_a_mount_cleanly_with_its_tag_recorded(mounted: Mounted) -> None:
    """SIGTERM ends the loop (libfuse's handlers): the daemon flushes, unmounts, records
    the final tag, and that tag opens the volume."""
    (mounted.mnt / "f").write_bytes(b"kept")
    pid = _daemon(mounted)
    os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 30
    while Path(f"/proc/{pid}").exists() and time.time() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    assert not os.path.ismount(mounted.mnt)
    final = json.loads(state_file(mounted.mnt).read_text())
    assert final["final"] is True
    assert mounted.mount("--tag", final["tag"]).returncode == 0
    assert (mounted.mnt / "f").read_bytes() == b"kept"


def test_a_mount_that_never_polls_serves_the_same_bytes(tmp_path: Path) -> None:
    """VEIL_MOUNT_POLL_US=0: the loop sleeps whenever no request is queued and whenever it
    waits for the read helper (veil.volume.spin); reads and writes are unchanged."""
    m = Mounted(tmp_path)
    assert (
        veil(
            "volume",
            "mount",
            str(m.vol),
            str(m.mnt),
            "--key-file",
            str(m.key),
            env={"VEIL_MOUNT_POLL_US": "0"},
        ).returncode
        == 0
    )
    try:
        data = random.Random(4).randbytes(3 * (1 << 20) + 777)
        (m.mnt / "big").write_bytes(data)
        _evict(m.mnt / "big")
        assert (m.mnt / "big").read_bytes() == data
    finally:
        tag = m.unmount()
    assert m.mount("--tag", tag).returncode == 0
    assert (m.mnt / "big").read_bytes() == data
    m.unmount()


def test_a_tampered_file_reads_as_eio_in_the_mount(mounted: Mounted) -> None:
    (mounted.mnt / "victim").write_bytes(b"v" * 10_000)
    (mounted.mnt / "bystander").write_bytes(b"b" * 100)
    mounted.unmount()
    listing = json.loads(
        veil("volume", "ls", str(mounted.vol), "--key-file", str(mounted.key), "--json").stdout
    )
    assert {e["path"] for e in listing} >= {"/victim", "/bystander"}
    victim = next(
        p for p in (mounted.vol / "objects").rglob("*") if p.is_file() and p.stat().st_size > 10_000
    )
    data = bytearray(victim.read_bytes())
    data[100] ^= 1
    victim.write_bytes(bytes(data))
    assert mounted.mount().returncode == 0
    result = subprocess.run(["cat", str(mounted.mnt / "victim")], capture_output=True, check=False)
    assert result.returncode != 0 and b"Input/output error" in result.stderr
    assert (mounted.mnt / "bystander").read_bytes() == b"b" * 100


def test_a_tampered_chunk_deep_in_a_large_file_reads_as_eio(mounted: Mounted) -> None:
    """Large reads are shared with the daemon's helper process (veil.volume.helper): a chunk
    it opens that does not check is refused all the same, and the daemon keeps serving."""
    data = random.Random(5).randbytes(3 << 20)
    (mounted.mnt / "large").write_bytes(data)
    daemon = json.loads(state_file(mounted.mnt).read_text())["pid"]
    children = Path(f"/proc/{daemon}/task/{daemon}/children").read_text().split()
    assert len(children) == 1, "the daemon runs one read helper"
    mounted.unmount()
    stored = max(
        (p for p in (mounted.vol / "objects").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    with open(stored, "r+b") as handle:  # the last chunk: always in the helper's part
        handle.seek(383 * (8192 + 28) + 100)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 1]))
    assert mounted.mount().returncode == 0
    result = subprocess.run(["cat", str(mounted.mnt / "large")], capture_output=True, check=False)
    assert result.returncode != 0 and b"Input/output error" in result.stderr
    with open(mounted.mnt / "large", "rb") as handle:
        assert handle.read(2 << 20) == data[: 2 << 20]  # the chunks before it still read


def test_mount_refuses_a_stale_volume_before_mounting(tmp_path: Path) -> None:
    m = Mounted(tmp_path)
    snapshot = tmp_path / "snapshot"
    assert m.mount().returncode == 0
    (m.mnt / "f").write_text("one")
    tag_one = m.unmount()
    shutil.copytree(m.vol, snapshot)
    assert m.mount("--tag", tag_one).returncode == 0
    (m.mnt / "f").write_text("two")
    tag_two = m.unmount()
    shutil.rmtree(m.vol)
    shutil.copytree(snapshot, m.vol)
    refused = m.mount("--tag", tag_two)
    assert refused.returncode == 1 and "older copy" in refused.stderr
    assert not os.path.ismount(m.mnt)


def test_random_operations_through_the_mount_match_a_plain_directory(
    mounted: Mounted, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    rnd = random.Random(7)
    names = [f"f{i}" for i in range(6)]
    for name in names:
        (mounted.mnt / name).write_bytes(b"")
        (plain / name).write_bytes(b"")
    for step in range(200):
        name = rnd.choice(names)
        op = rnd.choice(["write", "write", "truncate", "rename", "read", "append"])
        targets = (mounted.mnt / name, plain / name)
        if op == "write":
            offset, data = rnd.randint(0, 20_000), rnd.randbytes(rnd.choice([1, 100, 4096, 9000]))
            for target in targets:
                with open(target, "r+b") as handle:
                    handle.seek(offset)
                    handle.write(data)
        elif op == "append":
            data = rnd.randbytes(rnd.randint(1, 5000))
            for target in targets:
                with open(target, "ab") as handle:
                    handle.write(data)
        elif op == "truncate":
            length = rnd.randint(0, 25_000)
            for target in targets:
                os.truncate(target, length)
        elif op == "rename":
            new = f"r{step}"
            for base in (mounted.mnt, plain):
                os.rename(base / name, base / new)
            names[names.index(name)] = new
        else:
            assert targets[0].read_bytes() == targets[1].read_bytes(), (step, name)
    for name in names:
        _evict(mounted.mnt / name)  # read through the volume, not the kernel's page cache
        assert (mounted.mnt / name).read_bytes() == (plain / name).read_bytes()
    tag = mounted.unmount()
    assert (
        veil("volume", "verify", str(mounted.vol), "--key-file", str(mounted.key), "--tag", tag).returncode
        == 0
    )


def test_verify_repair_removes_objects_no_file_refers_to(tmp_path: Path, tree: Path) -> None:
    key, vol = tmp_path / "k", tmp_path / "vol"
    made = veil("volume", "encrypt", str(tree), str(vol), "--key-file", str(key))
    tag = made.stdout.strip().splitlines()[-1]
    orphan = vol / "objects" / "ab" / ("ab" + "0" * 30)
    orphan.parent.mkdir(exist_ok=True)
    orphan.write_bytes(os.urandom(5000))
    (orphan.parent / (orphan.name + ".tags")).write_bytes(os.urandom(48))
    found = veil("volume", "verify", str(vol), "--key-file", str(key), "--tag", tag, "--json")
    assert found.returncode == 1
    assert {p["path"] for p in json.loads(found.stdout)["problems"]} == {
        f"objects/ab/{orphan.name}",
        f"objects/ab/{orphan.name}.tags",
    }
    repaired = veil("volume", "verify", str(vol), "--key-file", str(key), "--tag", tag, "--repair")
    assert repaired.returncode == 0, repaired.stderr
    assert repaired.stderr.count("removed (an object no file refers to") == 2
    assert not orphan.exists()
    clean = veil("volume", "verify", str(vol), "--key-file", str(key), "--tag", tag)
    assert clean.returncode == 0 and tag in clean.stdout  # the tag did not move: nothing it covers changed


def test_a_busy_unmount_says_so_at_once_and_lazy_finishes_later(mounted: Mounted) -> None:
    (mounted.mnt / "open.txt").write_bytes(b"kept open")
    handle = open(mounted.mnt / "open.txt", "rb")  # noqa: SIM115
    try:
        started = time.monotonic()
        busy = veil("volume", "unmount", str(mounted.mnt))
        assert busy.returncode == 1 and "is in use" in busy.stderr and "--lazy" in busy.stderr
        assert time.monotonic() - started < 5
        assert os.path.ismount(mounted.mnt), "nothing changed"
        lazy = veil("volume", "unmount", "--lazy", str(mounted.mnt))
        assert lazy.returncode == 0, lazy.stderr
        assert "detached while in use" in lazy.stderr
        assert not os.path.ismount(mounted.mnt)
        assert handle.read() == b"kept open"  # the open file still works
    finally:
        handle.close()
    status = state_file(mounted.mnt)
    deadline = time.time() + 30
    while not json.loads(status.read_text()).get("final"):
        assert time.time() < deadline, "the daemon never finished after the last file closed"
        time.sleep(0.05)
    tag = json.loads(status.read_text())["tag"]
    checked = veil("volume", "verify", str(mounted.vol), "--key-file", str(mounted.key), "--tag", tag)
    assert checked.returncode == 0, checked.stderr


def test_encrypt_and_decrypt_keep_every_file_type_link_owner_and_time(tmp_path: Path) -> None:
    """A tree as programs leave it (a venv, a library directory, a config with links)."""
    src = tmp_path / "src"
    (src / "lib").mkdir(parents=True)
    (src / "lib" / "libfoo.so.1.2").write_bytes(os.urandom(50_000))
    os.symlink("libfoo.so.1.2", src / "lib" / "libfoo.so.1")
    os.symlink("/usr/bin/python3", src / "python")
    os.link(src / "lib" / "libfoo.so.1.2", src / "hardlink")
    os.mkfifo(src / "fifo", 0o600)
    os.mknod(src / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (src / "www").mkdir(mode=0o2750)
    (src / "www" / "index.html").write_text("<html/>")
    os.chown(src / "www" / "index.html", 33, 33)
    os.chmod(src / "www" / "index.html", 0o640)
    os.utime(src / "www" / "index.html", ns=(1_500_000_000_000_000_001, 1_600_000_000_000_000_002))
    key, vol, out = tmp_path / "k", tmp_path / "vol", tmp_path / "out"
    made = veil("volume", "encrypt", str(src), str(vol), "--key-file", str(key))
    assert made.returncode == 0, made.stderr
    assert "skipped" not in made.stderr
    tag = made.stdout.strip().splitlines()[-1]
    listing = {
        e["path"]: e
        for e in json.loads(veil("volume", "ls", str(vol), "--key-file", str(key), "--json").stdout)
    }
    assert listing["/lib/libfoo.so.1"]["target"] == "libfoo.so.1.2" and listing["/hardlink"]["nlink"] == 2
    back = veil("volume", "decrypt", str(vol), str(out), "--key-file", str(key), "--tag", tag)
    assert back.returncode == 0, back.stderr

    def described(root: Path) -> list[tuple[object, ...]]:
        rows = []
        for path in sorted(root.rglob("*")):
            info = path.lstat()
            rows.append(
                (
                    str(path.relative_to(root)),
                    stat.S_IFMT(info.st_mode),
                    stat.S_IMODE(info.st_mode),
                    info.st_uid,
                    info.st_gid,
                    info.st_nlink,
                    info.st_rdev,
                    os.readlink(path) if path.is_symlink() else None,
                    path.read_bytes() if stat.S_ISREG(info.st_mode) else None,
                    info.st_mtime_ns if not stat.S_ISDIR(info.st_mode) else None,
                )
            )
        return rows

    assert described(out) == described(src)
    assert (out / "hardlink").stat().st_ino == (out / "lib" / "libfoo.so.1.2").stat().st_ino


def test_mounting_leaves_no_descriptor_in_the_caller(tmp_path: Path) -> None:
    """`veil run` mounts from its own process: the journal and files the daemon serves
    must not stay open there (a crash loop found one journal descriptor leaked a mount)."""
    storage, mnt, key = tmp_path / "vol", tmp_path / "mnt", os.urandom(32)
    tag = daemon.start(storage, mnt, key, None, create_mode="encrypted").initial_tag
    tag = daemon.stop(mnt, wait=10)
    before = sorted(os.listdir("/proc/self/fd"))
    for _ in range(3):
        daemon.start(storage, mnt, key, tag)
        (mnt / "f").write_bytes(b"data")
        tag = daemon.stop(mnt, wait=10)
    assert sorted(os.listdir("/proc/self/fd")) == before
