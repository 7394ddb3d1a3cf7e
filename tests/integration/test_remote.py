"""`veil remote`: a job's code and input go encrypted to a host reached over a real SSH
server on loopback (a separate directory tree plays the untrusted host), run there attested
by a network CAS through the host's LAS, and only the submitter reads the output.

The host's operator is played by the test: it scans the host's files during and after a
run, tampers with the ciphertext, swaps a program, puts an older output back and changes
its SSH key."""

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cas_server import CasServer, Owner, las_on_socket, pinned_owner, start_cas
from tests.conftest import requires_root
from tests.images import build_app_image
from tests.png import SIGNATURE, pixels
from tests.podman import Podman
from tests.sshd import SshServer, start_sshd
from veil.remote import ssh

pytestmark = requires_root

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "remote-blender"
BLENDER = "/usr/bin/blender"
#: strings of the scene and the script that must never be readable on the host
MARKERS = (b"veil-remote-scene-7f3a", b"remote-script-marker-c41d", SIGNATURE)
REMOTE_VEIL = f"{sys.executable} -m veil"


@dataclass
class World:
    root: Path
    cas: CasServer
    alice: Owner
    bob: Owner
    las_socket: Path
    ssh: SshServer

    @property
    def host_jobs(self) -> Path:
        return self.root / "host" / "jobs"

    def env(self, owner: Owner) -> dict[str, str]:
        return {**owner.env, "VEIL_HOME": str(owner.home / "data")}

    def remote(self, owner: Owner, *args: str) -> subprocess.CompletedProcess[str]:
        return owner.veil("remote", *args, env=self.env(owner))

    def run_job(
        self, owner: Owner, name: str, code: Path, output: Path, *command: str, extra: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        return self.remote(
            owner,
            "run",
            "--host", self.ssh.url,
            *self.ssh.ssh_options(),
            "--cas", self.cas.url,
            "--code", str(code),
            "--output", str(output),
            "--name", name,
            "--tolerate", "sim",
            "--las", f"unix:{self.las_socket}",
            "--remote-dir", str(self.host_jobs),
            "--remote-veil", REMOTE_VEIL,
            *extra,
            "--",
            *command,
        )  # fmt: skip


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("remote")
    cas = start_cas(root)
    alice, bob = pinned_owner(root, cas, "alice"), pinned_owner(root, cas, "bob")
    ssh = start_sshd(root / "sshd")
    try:
        with las_on_socket(root / "las.sock", root / "node") as socket_path:
            added = cas.admin.veil("cas", "platform", "add", cas.url, "--las", f"unix:{socket_path}")
            assert added.returncode == 0, added.stderr
            yield World(root, cas, alice, bob, socket_path, ssh)
    finally:
        ssh.stop()
        cas.stop()


def blender_code(tmp_path: Path) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    for name in ("scene.blend", "render.py"):
        shutil.copy(EXAMPLE / name, code / name)
    return code


RENDER = (BLENDER, "-b", "{code}/scene.blend", "--python", "{code}/render.py",
          "-o", "{output}/frame_", "-F", "PNG", "-f", "1")  # fmt: skip


def stored_files(top: Path) -> Iterator[Path]:
    """The files stored under ``top`` on the host's disk: a mount (a volume's plaintext
    view, served to the runtime's program) is not descended into."""
    if not top.exists():
        return
    device = top.stat().st_dev
    for directory, subdirectories, files in os.walk(top):
        subdirectories[:] = [
            d for d in subdirectories if os.lstat(os.path.join(directory, d)).st_dev == device
        ]
        for name in files:
            path = Path(directory, name)
            with_device = path.lstat()
            if with_device.st_dev == device and path.is_file():
                yield path


def leaks(top: Path) -> list[str]:
    found = []
    for path in stored_files(top):
        try:
            data = path.read_bytes()
        except OSError:
            continue  # removed while we looked
        found += [f"{path}: {marker!r}" for marker in MARKERS if marker in data]
    return found


class Watcher(threading.Thread):
    """The host's operator, reading every stored file of the host while a job runs."""

    def __init__(self, top: Path) -> None:
        super().__init__(daemon=True)
        self.top, self.found, self.scans = top, set[str](), 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.found.update(leaks(self.top))
            self.scans += 1
            time.sleep(0.05)


def test_blender_renders_an_encrypted_scene_with_an_encrypted_script(world: World, tmp_path: Path) -> None:
    code, output = blender_code(tmp_path), tmp_path / "out"
    watcher = Watcher(world.host_jobs)
    watcher.start()
    try:
        result = world.run_job(world.alice, "render", code, output, *RENDER, extra=("--keep",))
    finally:
        watcher.done.set()
        watcher.join()
    assert result.returncode == 0, result.stderr
    assert "tolerates sim" in result.stderr and "as the CAS recorded" in result.stderr
    assert watcher.scans > 3 and not watcher.found, watcher.found
    assert not staged("render", world.alice), "the staged ciphertext is removed once sent"
    job_dir = world.host_jobs / "render"
    assert (job_dir / "code" / "volume.json").exists(), "--keep leaves the ciphertext"
    assert not leaks(world.host_jobs), "after the run"
    reference = tmp_path / "reference"
    clear = subprocess.run(
        [BLENDER, "-b", str(code / "scene.blend"), "--python", str(code / "render.py"),
         "-o", f"{reference}/frame_", "-F", "PNG", "-f", "1"],
        capture_output=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert clear.returncode == 0, clear.stderr
    assert sorted(p.name for p in output.iterdir()) == ["frame_0001.png"]
    assert pixels(output / "frame_0001.png") == pixels(reference / "frame_0001.png")
    status = world.remote(world.alice, "status", "render", "--json")
    assert '"exit_code": 0' in status.stdout and '"state": "finished"' in status.stdout, status.stderr
    cancel = world.remote(world.alice, "cancel", "render")  # removes the kept files
    assert cancel.returncode == 0, cancel.stderr
    assert not job_dir.exists()


def test_without_keep_the_hosts_files_are_removed(world: World, tmp_path: Path) -> None:
    code, output = tmp_path / "code", tmp_path / "out"
    code.mkdir()
    (code / "words").write_text("remote-script-marker-c41d\n")
    result = world.run_job(world.alice, "copy", code, output, "/bin/cp", "{code}/words", "{output}/copied")
    assert result.returncode == 0, result.stderr
    assert (output / "copied").read_text() == "remote-script-marker-c41d\n"
    assert not (world.host_jobs / "copy").exists()
    assert "removed the job's files" in result.stderr


def test_one_job_opens_two_ssh_connections_and_closes_them(world: World, tmp_path: Path) -> None:
    """The commands of a job share one connection (ControlMaster); the bulk upload has its
    own. Counted with an `ssh` on PATH that logs its arguments and runs the real one."""
    shims, log = tmp_path / "bin", tmp_path / "ssh.log"
    shims.mkdir()
    real = shutil.which("ssh")
    (shims / "ssh").write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    (shims / "ssh").chmod(0o755)
    code, output = tmp_path / "code", tmp_path / "out"
    code.mkdir()
    (code / "words").write_text("counted\n")
    env = {**world.env(world.alice), "PATH": f"{shims}:{os.environ['PATH']}"}
    argv = ["run", "--host", world.ssh.url, *world.ssh.ssh_options(), "--cas", world.cas.url,
            "--code", str(code), "--output", str(output), "--name", "counted", "--tolerate", "sim",
            "--las", f"unix:{world.las_socket}", "--remote-dir", str(world.host_jobs),
            "--remote-veil", REMOTE_VEIL, "--", "/bin/cp", "{code}/words", "{output}/copied"]  # fmt: skip
    result = world.alice.veil("remote", *argv, env=env)
    assert result.returncode == 0, result.stderr
    assert (output / "copied").read_text() == "counted\n"
    calls = log.read_text().splitlines()
    connecting = [c for c in calls if " -G " not in c]  # `ssh -G` only prints the configuration
    handshakes = [c for c in connecting if "ControlMaster=no" not in c and "-O exit" not in c]
    assert len(handshakes) == 2, calls  # the shared connection, and the upload
    upload = next(c for c in handshakes if "ControlMaster" not in c)
    if ssh._cpu_has_aes():
        assert "Ciphers=aes256-gcm@openssh.com,aes128-gcm@openssh.com," in upload, upload
    assert sum("ControlMaster=yes" in c for c in handshakes) == 1
    assert sum("ControlMaster=no" in c for c in calls) >= 4  # host directory, run, fetch, removal
    assert calls[-1].count("-O exit") == 1, "the shared connection is closed at the end"
    masters = subprocess.run(
        ["pgrep", "-f", "ControlMaster=yes"], capture_output=True, text=True, check=False
    )
    assert masters.stdout.strip() == "", "no master connection left behind"


#: the host's veil, as a host operator may replace it: it flips a byte in the middle of the
#: smallest stored object of the code volume (the script's chunks; not a tag table), then
#: runs the real veil
TAMPERING_VEIL = """#!/bin/sh
target=$(find ../code/objects -type f ! -name '*.tags' -printf '%s %p\\n' | sort -n | head -1 | cut -d' ' -f2)
{python} - "$target" <<'EOF'
import sys
data = bytearray(open(sys.argv[1], "rb").read())
data[len(data) // 2] ^= 1
open(sys.argv[1], "wb").write(bytes(data))
EOF
exec {veil} "$@"
"""


def test_a_script_tampered_on_the_host_fails_the_run_and_no_output_is_accepted(
    world: World, tmp_path: Path
) -> None:
    evil = tmp_path / "evil-veil"
    evil.write_text(TAMPERING_VEIL.format(python=sys.executable, veil=REMOTE_VEIL))
    evil.chmod(0o755)
    code, output = blender_code(tmp_path), tmp_path / "out"
    result = world.run_job(world.alice, "tampered", code, output, *RENDER, extra=("--remote-veil", str(evil)))
    assert result.returncode != 0
    assert "integrity error" in result.stderr, result.stderr
    assert "refused, nothing decrypted" in result.stderr
    assert not output.exists() or not any(output.iterdir())


def test_another_program_on_the_host_is_refused_attestation(world: World, tmp_path: Path) -> None:
    code, output = tmp_path / "code", tmp_path / "out"
    code.mkdir()
    (code / "a").write_text("a\n")
    tool = world.root / "host" / "bin" / "tool"
    tool.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/true", tool)  # the host's "tool" is not the program the submitter has
    result = world.run_job(
        world.alice, "swapped", code, output, str(tool), "{code}/a", extra=("--program", "/bin/false")
    )
    assert result.returncode != 0
    assert "measurement" in result.stderr and "matches no attestation entry" in result.stderr, result.stderr
    assert "the program never started" in result.stderr
    assert not output.exists() or not any(output.iterdir())


#: the host's veil in a mount namespace of its own: the host's operator sees the volumes'
#: stored ciphertext while the job runs (and can copy it)
PRIVATE_VEIL = '#!/bin/sh\nexec unshare -m --propagation private {veil} "$@"\n'


def test_an_older_output_put_back_by_the_host_is_refused_and_a_second_submitter_cannot_fetch(
    world: World, tmp_path: Path
) -> None:
    private = tmp_path / "private-veil"
    private.write_text(PRIVATE_VEIL.format(veil=REMOTE_VEIL))
    private.chmod(0o755)
    code, output = tmp_path / "code", tmp_path / "out"
    code.mkdir()
    (code / "a").write_text("a\n")
    go = tmp_path / "go"  # the program waits for it, so the test sees it running
    script = f"while [ ! -e {go} ]; do sleep 0.05; done; echo final > {{output}}/result"
    started = world.run_job(
        world.alice, "older", code, output, "/bin/sh", "-c", script,
        extra=("--detach", "--keep", "--remote-veil", str(private)),
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    assert started.stdout.strip() == "older"
    stored = world.host_jobs / "older" / "output"
    deadline = time.time() + 30
    while not (stored / "volume.json").exists():
        assert time.time() < deadline, "the output volume was never created"
        time.sleep(0.05)
    time.sleep(0.5)
    snapshot = tmp_path / "snapshot"
    shutil.copytree(stored, snapshot)  # the fresh, empty output volume
    running = world.remote(world.alice, "status", "older")
    assert "running" in running.stdout, running.stdout + running.stderr
    refused_early = world.remote(world.alice, "fetch", "older")
    assert refused_early.returncode == 1 and "still running" in refused_early.stderr
    go.touch()
    deadline = time.time() + 60
    while "finished" not in (state := world.remote(world.alice, "status", "older").stdout):
        assert time.time() < deadline, state
        time.sleep(0.2)
    assert "exit code 0" in state
    shutil.rmtree(stored)
    shutil.copytree(snapshot, stored)  # the host's operator puts the older output back
    refused = world.remote(world.alice, "fetch", "older", "--keep")
    assert refused.returncode == 1
    assert "an older or substituted output" in refused.stderr, refused.stderr
    assert not output.exists() or not any(output.iterdir())

    # Bob has the job's record but not its key; with a key of his own the CAS refuses him
    bob_job = world.bob.home / "data" / "remote" / "older"
    bob_job.mkdir(parents=True)
    shutil.copy(world.alice.home / "data" / "remote" / "older" / "job.json", bob_job / "job.json")
    no_key = world.remote(world.bob, "fetch", "older", "--output", str(tmp_path / "bob-out"))
    assert no_key.returncode == 1 and "only the submitter who made the job holds it" in no_key.stderr
    (bob_job / "output.key").write_bytes(os.urandom(32))
    denied = world.remote(world.bob, "fetch", "older", "--output", str(tmp_path / "bob-out"))
    assert denied.returncode == 1 and "may not read session" in denied.stderr, denied.stderr
    assert not (tmp_path / "bob-out").exists() or not any((tmp_path / "bob-out").iterdir())
    cancel = world.remote(world.alice, "cancel", "older")
    assert cancel.returncode == 0, cancel.stderr


def test_a_host_whose_ssh_key_changed_is_refused_before_anything_is_sent(
    world: World, tmp_path: Path
) -> None:
    other = start_sshd(tmp_path / "sshd")
    try:
        other.new_host_key()
        code, output = tmp_path / "code", tmp_path / "out"
        code.mkdir()
        (code / "a").write_text("remote-script-marker-c41d\n")
        result = world.remote(
            world.alice, "run", "--host", other.url, *other.ssh_options(), "--cas", world.cas.url,
            "--code", str(code), "--output", str(output), "--name", "moved", "--tolerate", "sim",
            "--remote-dir", str(tmp_path / "host"), "--remote-veil", REMOTE_VEIL, "--", "/bin/true",
        )  # fmt: skip
    finally:
        other.stop()
    assert result.returncode == 1
    assert "SSH key is not the one on record" in result.stderr, result.stderr
    assert not (tmp_path / "host").exists()
    assert not (world.alice.home / "data" / "remote" / "moved").exists()
    assert not staged("moved", world.alice), "the ciphertext made while the host was checked is gone"
    sessions = world.alice.veil("session", "list", "--cas", world.cas.url)
    assert "moved" not in sessions.stdout


def staged(job: str, owner: Owner) -> list[Path]:
    """What a job staged here for the upload and left: ciphertext in /dev/shm or in the
    submitter's home."""
    home = owner.home / "data" / "remote"
    return [*Path("/dev/shm").glob(f"veil-remote-{job}-*"), *home.glob(f".staging-{job}-*")]


@pytest.fixture
def podman() -> Iterator[Podman]:
    engine = Podman(Path(tempfile.mkdtemp(prefix="veil-podman-")))  # its runroot path has 50 bytes at most
    try:
        yield engine
    finally:
        engine.close()


def image_job(
    world: World, tmp_path: Path, engine: Path, name: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """A job in the busybox image of tests/images.py: it counts the code's bytes, copies
    the input, and reads a file of the image (its root is what is measured)."""
    code, data, output = tmp_path / "code", tmp_path / "input", tmp_path / f"out-{name}"
    for directory in (code, data):
        directory.mkdir(exist_ok=True)
    (code / "words").write_bytes(MARKERS[0] + b" counted\n")
    (data / "data").write_bytes(MARKERS[1] + b" copied\n")
    image = build_app_image(tmp_path / f"image-{name}")
    script = (
        "wc -c < {code}/words > {output}/count && cat {input}/data > {output}/copy && head -1 /app/run.sh"
    )
    return world.run_job(
        world.alice, name, code, output, "/bin/sh", "-c", script,
        extra=("--image", image, "--remote-engine", str(engine), "--input", str(data), *extra),
    )  # fmt: skip


def test_a_job_runs_in_a_converted_image_under_the_hosts_podman(
    world: World, tmp_path: Path, podman: Podman
) -> None:
    engine = podman.wrapper(tmp_path / "engine")
    result = image_job(world, tmp_path, engine, "in-image")
    assert result.returncode == 0, result.stderr
    assert "the job's image measures sha256:" in result.stderr
    assert result.stdout.strip() == "#!/bin/sh", "the image's own file, read in the container"
    for name in ("in-image", "detached"):
        if name == "detached":  # the same, started and fetched later
            started = image_job(world, tmp_path, engine, name, "--detach")
            assert started.returncode == 0, started.stderr
            deadline = time.time() + 60
            while "finished" not in (state := world.remote(world.alice, "status", name).stdout):
                assert time.time() < deadline, state
                time.sleep(0.2)
            fetched = world.remote(world.alice, "fetch", name)
            assert fetched.returncode == 0, fetched.stderr
            assert "#!/bin/sh" in fetched.stdout, "the job's stdout, kept on the host"
        output = tmp_path / f"out-{name}"
        assert (output / "count").read_text().strip() == str(len(MARKERS[0]) + len(" counted\n"))
        assert (output / "copy").read_bytes() == MARKERS[1] + b" copied\n"
        assert not (world.host_jobs / name).exists(), "the job's files are removed"
    assert not leaks(world.host_jobs)
    assert podman("ps", "-a", "-q").stdout.strip() == "", "no container is left"
    assert podman("images", "-q").stdout.strip() == "", "the job's image is removed"


def test_a_job_image_changed_by_the_host_is_refused_attestation(
    world: World, tmp_path: Path, podman: Podman
) -> None:
    """The host's engine mounts another file over one of the image's (a program swapped at
    run time): the measured root differs, the CAS refuses, no output is accepted."""
    evil = tmp_path / "run.sh"
    evil.write_text("#!/bin/sh\necho 'a script of the host operator'\n")
    swap = f'shift; set -- run -v {evil}:/app/run.sh:ro "$@"'
    result = image_job(world, tmp_path, podman.wrapper(tmp_path / "engine", swap), "image-swapped")
    assert result.returncode != 0
    assert "attestation refused: measurement" in result.stderr, result.stderr
    assert not (tmp_path / "out-image-swapped" / "count").exists()


def test_a_cancelled_job_in_an_image_leaves_no_container_no_image_and_no_files(
    world: World, tmp_path: Path, podman: Podman
) -> None:
    code, output = tmp_path / "code", tmp_path / "out"
    code.mkdir()
    (code / "words").write_text("unused\n")
    image = build_app_image(tmp_path / "image")
    started = world.run_job(
        world.alice, "image-cancelled", code, output, "/bin/sh", "-c", "echo started; sleep 120",
        extra=("--image", image, "--remote-engine", str(podman.wrapper(tmp_path / "engine")), "--detach"),
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    deadline = time.time() + 60
    while not podman("ps", "-q").stdout.strip():
        assert time.time() < deadline, world.remote(world.alice, "status", "image-cancelled").stdout
        time.sleep(0.2)
    cancelled = world.remote(world.alice, "cancel", "image-cancelled")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "removed the job's files" in cancelled.stderr, cancelled.stderr
    assert podman("ps", "-a", "-q").stdout.strip() == "", "the container is stopped and removed"
    assert podman("images", "-q").stdout.strip() == "", "the job's image is removed"
    assert not (world.host_jobs / "image-cancelled").exists()
