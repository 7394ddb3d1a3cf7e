"""`veil remote`: submit a job to an untrusted host, run it attested, fetch its output.

The steps (docs/remote.md): encrypt code and input here into volumes with fresh keys;
create a session that hands those keys and a fresh output key to exactly the attested
program; send the ciphertext over SSH; run ``veil run --config-id`` there; fetch the output
volume, refuse it unless its tag is the one the CAS recorded at the end of the run, decrypt
it here; remove the job's files on the host.
"""

import contextlib
import os
import shlex
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veil.client.http import OwnerClient
from veil.crypto import constant_time_equal
from veil.remote.job import (
    IMAGE_JOB_DIR,
    IMAGE_TAG,
    SERVICE,
    Job,
    JobImage,
    JobSession,
    JobStore,
    session_name,
    substitute,
)
from veil.remote.ssh import RemoteError, SshHost
from veil.tee.measure import measure_command
from veil.volume import Volume, VolumeError
from veil.volume.copy import copy_in, copy_out, tree_size

#: the PATH the job's program runs with (the session's environment; the host's is not used)
JOB_PATH = "/usr/local/bin:/usr/bin:/bin"

#: bytes per chunk of a job's volumes: written once, read through (larger than a volume's
#: default, which suits small random writes)
JOB_CHUNK = 65536

#: a progress bar: (label, total bytes) -> a context whose value takes byte counts
Progress = Callable[[str, int], AbstractContextManager[Callable[[int], Any]]]


@dataclass
class Submission:
    host: SshHost
    cas: str
    command: list[str]
    code: Path
    input: Path | None
    output: Path
    name: str
    program: Path | None = None
    #: a container image to run the job in (skopeo syntax, readable here): converted here,
    #: sent, and run by the host's container engine
    image: str | None = None
    tolerate: list[str] = field(default_factory=list)
    sim_platforms: list[str] = field(default_factory=list)
    attestation: list[dict[str, Any]] = field(default_factory=list)
    remote_base: str = ".veil-remote"
    remote_veil: str = "veil"
    remote_engine: str = "podman"
    remote_cas: str | None = None
    las: str | None = None
    mode: str | None = None


class Remote:
    """The submitter's side of remote jobs."""

    def __init__(
        self,
        store: JobStore,
        owner: Callable[[str], OwnerClient],
        say: Callable[[str], None],
        progress: Progress,
    ) -> None:
        self.store = store
        self.owner = owner
        self.say = say
        self.progress = progress

    # -- submit ---------------------------------------------------------------------------

    def submit(
        self, submission: Submission, ca_pem: str, owner_id: str, detach: bool, keep: bool = False
    ) -> Job:
        """Everything up to a running job: checks, the host's job directory (made while
        code and input are encrypted here), the session, the upload, the start (detached
        or not: ``run`` streams it)."""
        self._check_local(submission)
        host = submission.host
        volumes = ["code", *(["input"] if submission.input is not None else []), "output"]
        session_id = session_name(owner_id, submission.name)
        keys = {name: os.urandom(32) for name in volumes}
        stop = threading.Event()
        with _staging(submission, self.store.root) as (staging, aside), ThreadPoolExecutor(1) as pool:
            encrypting = pool.submit(self._prepare_local, submission, session_id, keys, staging, aside, stop)
            try:
                # the host key is checked here, before anything is sent
                remote_dir = self._prepare_host(submission)
            except BaseException:
                stop.set()  # the encryption stops at its next block
                raise
            inside = remote_dir if submission.image is None else IMAGE_JOB_DIR  # as the program sees it
            job = Job(
                name=submission.name,
                host=str(host),
                cas=submission.cas,
                session=session_id,
                remote_dir=remote_dir,
                output=str(submission.output.absolute()),
                command=substitute(submission.command, inside),
                volumes=volumes,
                image=submission.image,
                detached=detach,
                keep=keep,
                ssh={
                    "known_hosts": _text(host.known_hosts),
                    "identity": _text(host.identity),
                    "config": _text(host.config),
                    "remote_veil": submission.remote_veil,
                    "remote_engine": submission.remote_engine,
                    "remote_cas": submission.remote_cas,
                    "las": submission.las,
                    "mode": submission.mode,
                },
            )
            try:
                self.store.create(job)
            except BaseException:  # a job of that name appeared meanwhile: it is left alone
                stop.set()
                self._cleanup_host(job, quiet=True)
                raise
            created = False
            try:
                for name, key in keys.items():
                    self.store.save_key(job.name, name, key)
                job.tags, image = encrypting.result()
                self.store.save(job)
                client = self.owner(submission.cas)
                session = JobSession(
                    name=job.session,
                    command=job.command,
                    remote_dir=inside,
                    attestation=self._attestation(submission, job, client, image),
                    keys=keys,
                    tags=job.tags,
                    tolerate=submission.tolerate,
                    sim_platforms=submission.sim_platforms,
                    image=image,
                )
                client.create_session(session.text())
                created = True
                self.say(f"created session {job.session} on {submission.cas}")
                (staging / "cas-ca.pem").write_text(ca_pem)
                sent = [(staging, "cas-ca.pem"), *((staging, n) for n in volumes[:-1])]
                sent += [(aside, "image")] if image else []
                total = sum(tree_size(where / name) for where, name in sent[1:])
                with self.progress(f"sending to {host.host}", total) as update:
                    host.send_tree(sent, remote_dir, update)
            except BaseException:
                stop.set()
                self._cleanup_host(job, quiet=True)
                if not created:  # nothing on the CAS refers to the job: forget it here too
                    shutil.rmtree(self.store.directory(job.name), ignore_errors=True)
                raise
        if detach:
            host.run(self._start_command(job, detached=True))
            self.say(f"job {job.name} started on {host.host}; `veil remote status {job.name}`, then fetch")
        return job

    def run_attached(self, job: Job) -> int:
        """Run the submitted job with its stdout and stderr here; the runtime's exit status."""
        self.say(f"running {job.config_id} on {job.host}")
        return self._host(job).stream(self._start_command(job, detached=False))

    def _check_local(self, submission: Submission) -> None:
        for name, directory in (("code", submission.code), ("input", submission.input)):
            if directory is not None and not directory.is_dir():
                raise RemoteError(f"--{name} {directory}: not a directory")
        if self.store.directory(submission.name).exists():
            raise RemoteError(f"a job named '{submission.name}' exists already; choose another --name")
        output = submission.output
        if output.exists() and (not output.is_dir() or any(output.iterdir())):
            raise RemoteError(f"--output {output}: must be a new or empty directory")
        if not submission.tolerate and not submission.attestation:
            raise RemoteError(
                "no platform is acceptable: give --attestation FILE with the host's hardware entries, "
                "or --tolerate sim for a development host (which protects nothing)"
            )

    def _prepare_host(self, submission: Submission) -> str:
        """Make the job's directory on the host (new, 0700) and check veil is there; its
        absolute path. The first connection: a refused host key stops everything here."""
        base, name = submission.remote_base, submission.name
        script = (
            f"umask 077 && mkdir -p -- {_shell_path(base)} && cd -- {_shell_path(base)} && "
            f"mkdir -- {shlex.quote(name)} && cd -- {shlex.quote(name)} && mkdir output scratch && pwd -P && "
            f"{submission.remote_engine if submission.image else submission.remote_veil} --version >/dev/null"
        )
        try:
            answer = submission.host.run(script)
        except RemoteError as exc:
            if "File exists" in str(exc):
                raise RemoteError(f"{submission.host}: a job named '{name}' exists there already") from None
            raise
        return answer.strip().splitlines()[0]

    def _prepare_local(
        self,
        submission: Submission,
        session: str,
        keys: dict[str, bytes],
        staging: Path,
        aside: Path,
        stop: threading.Event,
    ) -> tuple[dict[str, str], JobImage | None]:
        """Code and input encrypted into ``staging`` (their tags), the image converted into
        ``aside`` (what the session takes from it)."""
        sources = {"code": submission.code, "input": submission.input}
        tags = {}
        for name, source in sources.items():
            if source is not None:
                tags[name] = self._encrypt(source, staging / name, keys[name], name, stop)
        image = self._convert(submission, session, aside / "image") if submission.image else None
        return tags, image

    def _encrypt(self, source: Path, target: Path, key: bytes, name: str, stop: threading.Event) -> str:
        with Volume.create(target, key, "encrypted", JOB_CHUNK) as volume:
            with self.progress(f"encrypting {name}", tree_size(source)) as update:

                def step(done: int) -> None:
                    if stop.is_set():
                        raise RemoteError("stopped")
                    update(done)

                copy_in(source, volume, step)
            return volume.close()

    def _convert(self, submission: Submission, session: str, target: Path) -> JobImage:
        """The job's image converted here into an OCI layout (its root measured, veil's
        runtime as its entrypoint; docs/image.md): what the session takes from it."""
        from veil.image.convert import ConvertOptions, convert  # noqa: PLC0415  # only image jobs need it

        assert submission.image is not None
        self.say(f"converting {submission.image} for the job")
        options = ConvertOptions(
            source=submission.image,
            destination=f"oci:{target}:{IMAGE_TAG}",
            session=session,
            service=SERVICE,
        )
        result = convert(options)
        for warning in result.warnings:
            self.say(f"warning: {warning}")
        return JobImage(result.environment, result.tmpfs, result.measurement)

    def _attestation(
        self, submission: Submission, job: Job, client: OwnerClient, image: JobImage | None
    ) -> list[dict[str, Any]]:
        """The session's attestation entries: the given hardware ones, and with sim
        tolerated the measurement of the job's image, or of its program as computed here
        from ``--program`` (or the command's program as found here)."""
        entries = [dict(e) for e in submission.attestation]
        if image is not None:
            measurement = image.measurement
            what = "image"
        else:
            program = str(submission.program) if submission.program is not None else job.command[0]
            command = [program, *job.command[1:]]
            measurement = measure_command(command, f"{job.remote_dir}/scratch", JOB_PATH).value
            what = "program"
        for entry in entries:
            if entry.get("platform") in ("sev-snp", "tdx") and "workload" not in entry:
                entry["workload"] = measurement
        if "sim" in submission.tolerate:
            entries.append({"platform": "sim", "measurement": measurement})
            if not submission.sim_platforms:
                submission.sim_platforms = [
                    p["platform_id"] for p in client.list_platforms() if p.get("kind") == "sim"
                ]
            self.say(
                "warning: the job's session tolerates sim: its host's operator can read the code, "
                f"the input and the output (development only); sim platforms: {len(submission.sim_platforms)}"
            )
        self.say(f"the job's {what} measures {measurement[:23]}…")
        return entries

    def _start_command(self, job: Job, detached: bool) -> str:
        d = shlex.quote(job.remote_dir)
        run = self._run_in_image(job) if job.image else self._run_on_host(job)
        if not detached:
            # code and input are not needed once the program ended: removed while the output
            # travels (unless --keep; never while a volume is still mounted there), detached
            # from the session's output, which ssh would otherwise wait for
            mounted = shlex.quote(f" {job.remote_dir}/")
            tidy = (
                ""
                if job.keep
                else (
                    f"grep -qF -- {mounted} /proc/self/mountinfo || "
                    f"(rm -rf -- {d}/code {d}/input {_DETACHED} &); "
                )
            )
            return f"cd {d}/scratch && {run}; s=$?; echo $s > {d}/exit; {tidy}exit $s"
        inner = f"cd {d}/scratch && {run}; echo $? > {d}/exit.tmp && mv {d}/exit.tmp {d}/exit"
        # not `cd && nohup ... &`: that backgrounds the whole list, which holds ssh's output open
        return (
            f"cd {d} || exit 1; nohup setsid sh -c {shlex.quote(inner)} "
            f"> {d}/stdout 2> {d}/stderr < /dev/null & echo $! > {d}/pid"
        )

    @staticmethod
    def _variables(job: Job, directory: str, las: str | None) -> dict[str, str]:
        """The runtime's environment: where to attest, the pinned CAS certificate (in the
        job's ``directory`` as the runtime sees it), the job's service."""
        settings = job.ssh
        variables = {
            "VEIL_CAS_ADDR": settings.get("remote_cas") or job.cas,
            "VEIL_CAS_CA": f"{directory}/cas-ca.pem",
            "VEIL_CONFIG_ID": job.config_id,
            "VEIL_LAS_ADDR": las,
            "VEIL_MODE": settings.get("mode"),
        }
        return {k: v for k, v in variables.items() if v}

    def _run_on_host(self, job: Job) -> str:
        """``veil run`` of the host's veil, in the job's scratch directory."""
        variables = self._variables(job, job.remote_dir, job.ssh.get("las"))
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in variables.items())
        return f"env {assignments} {job.ssh.get('remote_veil') or 'veil'} run"

    def _run_in_image(self, job: Job) -> str:
        """The job's image taken into the host's container engine, run there (its
        entrypoint is veil's runtime) and removed: host networking, the job's directory at
        IMAGE_JOB_DIR, the LAS's socket, FUSE and the TEE's devices; the engine's default
        capabilities (the runtime reads every file of the root to measure it) and SYS_ADMIN
        (mounts); a read-only root, no new privileges."""
        d = shlex.quote(job.remote_dir)
        engine = job.ssh.get("remote_engine") or "podman"
        las = job.ssh.get("las")
        mounts = [f"{job.remote_dir}:{IMAGE_JOB_DIR}"]
        if las and las.startswith("unix:"):
            socket = las.removeprefix("unix:")
            mounts.append(f"{os.path.dirname(socket) or '.'}:{_LAS_DIR}")
            las = f"unix:{_LAS_DIR}/{os.path.basename(socket)}"
        options = [
            "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp",
            "--cap-add", "SYS_ADMIN", "--security-opt", "no-new-privileges",
            "--device", "/dev/fuse",
        ]  # fmt: skip
        for mount in mounts:
            options += ["-v", mount]
        for name, value in self._variables(job, IMAGE_JOB_DIR, las).items():
            options += ["-e", f"{name}={value}"]
        return (
            # a TERM (`veil remote cancel`) reaches the engine, which passes it to the container;
            # this shell outlives it (a trap, not an ignored signal) and removes the image
            f"{{ trap : TERM INT; i=$({engine} pull -q oci:{d}/image:{IMAGE_TAG}) && rm -rf -- {d}/image && "
            f'{engine} run {shlex.join(options)} {_TEE} "$i"; s=$?; '
            f'[ -n "$i" ] && {engine} rmi -f "$i" {_DETACHED}; (exit $s); }}'
        )

    # -- status, fetch, cancel ------------------------------------------------------------

    def status(self, job: Job) -> dict[str, Any]:
        d = shlex.quote(job.remote_dir)
        answer = (
            self._host(job)
            .run(
                f"if [ -f {d}/exit ]; then echo finished $(cat {d}/exit); "
                f"elif [ -f {d}/pid ] && kill -0 $(cat {d}/pid) 2>/dev/null; then echo running; "
                f"elif [ -d {d} ]; then echo stopped; else echo gone; fi"
            )
            .split()
        )
        state = answer[0] if answer else "unknown"
        result: dict[str, Any] = {"job": job.name, "host": job.host, "session": job.session, "state": state}
        if state == "finished" and len(answer) > 1:
            result["exit_code"] = int(answer[1])
        return result

    def fetch(self, job: Job, output: Path | None = None, keep: bool = False) -> Path:
        """Fetch the output volume, refuse it unless its tag is the one the CAS recorded,
        decrypt it into the job's output directory; then remove the job's files on the
        host unless ``keep``."""
        target = output or Path(job.output)
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise RemoteError(f"{target}: must be a new or empty directory")
        key = self.store.key(job.name, "output")
        expected = self.owner(job.cas).volume_tag(job.session, "output")
        if expected is None:
            raise RemoteError(
                f"job {job.name}: the CAS holds no tag for its output: the program never started "
                "(attestation refused, or the job was cancelled); nothing to fetch"
            )
        local = self.store.directory(job.name)
        ciphertext = local / "output"
        shutil.rmtree(ciphertext, ignore_errors=True)
        host = self._host(job)
        if job.detached:
            self._show_logs(job, host)
        try:
            host.fetch_tree(job.remote_dir, "output", local)
            try:
                volume = Volume.open(ciphertext, key, readonly=True)
            except VolumeError as exc:
                raise RemoteError(f"job {job.name}: the output from the host is refused: {exc}") from None
            with volume:
                if not constant_time_equal(volume.tag, expected):
                    raise RemoteError(
                        f"job {job.name}: the output's tag is {volume.tag[:16]}…, but the CAS recorded "
                        f"{expected[:16]}… at the end of the run: an older or substituted output, or a run "
                        "that did not finish cleanly; refused, nothing decrypted"
                    )
                target.mkdir(parents=True, exist_ok=True)
                files = [e for e in volume.walk() if e.type == "file"]
                if not files:
                    self.say(f"warning: job {job.name} wrote no output (its program failed, or never ran)")
                total = sum(e.size for e in files)
                with self.progress("decrypting output", total) as update:
                    copy_out(volume, target, update)
        finally:
            shutil.rmtree(ciphertext, ignore_errors=True)
        self.say(f"output of job {job.name} (tag {expected[:16]}…, as the CAS recorded) is in {target}")
        if not keep:
            self._cleanup_host(job)
        return target

    def cancel(self, job: Job, keep: bool = False) -> None:
        """Stop the job on the host (TERM to its process group; the runtime unmounts its
        volumes) and remove its files there unless ``keep``."""
        d = shlex.quote(job.remote_dir)
        self._host(job).run(
            f"if [ -f {d}/pid ] && kill -0 $(cat {d}/pid) 2>/dev/null; then kill -TERM -- -$(cat {d}/pid); "
            f"for i in $(seq 100); do kill -0 $(cat {d}/pid) 2>/dev/null || break; sleep 0.1; done; fi"
        )
        self.say(f"job {job.name} stopped on {job.host}")
        if not keep:
            self._cleanup_host(job)

    def _show_logs(self, job: Job, host: SshHost) -> None:
        d = shlex.quote(job.remote_dir)
        sys.stdout.write(host.run(f"cat {d}/stdout 2>/dev/null", check=False))
        sys.stderr.write(host.run(f"cat {d}/stderr 2>/dev/null", check=False))

    def _cleanup_host(self, job: Job, quiet: bool = False) -> None:
        """Remove the job's directory on the host: only when none of its volumes is mounted
        (a running job's mount is left alone, and the caller told)."""
        d = shlex.quote(job.remote_dir)
        mounted = shlex.quote(f" {job.remote_dir}/")
        gone = shlex.quote(f"{job.remote_dir}.removed.") + "$$"
        try:
            # renamed at once (the job's directory is gone when this returns), removed in the
            # background: freeing a large input's blocks takes a while
            self._host(job).run(
                f"if [ -d {d} ]; then if grep -qF -- {mounted} /proc/self/mountinfo; "
                f"then echo 'still mounted' >&2; exit 3; fi; mv -T -- {d} {gone} && "
                f"(rm -rf -- {gone} {_DETACHED} &); fi"
            )
            if not quiet:
                self.say(f"removed the job's files on {job.host}")
        except RemoteError as exc:
            if not quiet:
                self.say(f"warning: the job's files on the host are left: {exc}")

    def _host(self, job: Job) -> SshHost:
        settings = job.ssh
        return SshHost.parse(
            job.host,
            _path(settings.get("known_hosts")),
            _path(settings.get("identity")),
            _path(settings.get("config")),
        )


#: a background command's standard streams, so that it does not hold the ssh session open
_DETACHED = "</dev/null >/dev/null 2>&1"
#: where a job's container sees the directory of the LAS's socket
_LAS_DIR = "/run/veil-las"
#: what a job's container is given of the host's TEE, where the host has it (veil.tee.collect):
#: the SEV guest device, and configfs for its TSM reports (SEV-SNP, TDX)
_TEE = (
    "$([ -e /dev/sev-guest ] && echo --device /dev/sev-guest) "
    "$([ -d /sys/kernel/config/tsm/report ] && echo -v /sys/kernel/config:/sys/kernel/config)"
)


#: what a staging directory in memory must leave of the memory available (and of /dev/shm)
_MEMORY_MARGIN = 256 << 20


@contextlib.contextmanager
def _staging(submission: Submission, home: Path) -> Iterator[tuple[Path, Path]]:
    """Two private directories for what is sent, removed at the end: for the volumes'
    ciphertext, one in memory (/dev/shm) when it holds twice their size with room to spare
    (nothing to write to a disk and sync: a job's volumes are sent, not kept), else one in
    ``home``; for a converted image (of a size known only once made), one in ``home``."""
    size = sum(tree_size(d) for d in (submission.code, submission.input) if d is not None)
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    aside = Path(tempfile.mkdtemp(prefix=f".staging-{submission.name}-", dir=home))
    if _room_in_memory(2 * size + _MEMORY_MARGIN):
        staging = Path(tempfile.mkdtemp(prefix=f"veil-remote-{submission.name}-", dir=_SHM))
    else:
        staging = aside / "volumes"
        staging.mkdir()
    try:
        yield staging, aside
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(aside, ignore_errors=True)


#: the tmpfs every Linux system mounts for shared memory
_SHM = "/dev/shm"


def _room_in_memory(size: int) -> bool:
    try:
        shm = os.statvfs(_SHM)
        with open("/proc/meminfo") as info:
            available = next(int(line.split()[1]) * 1024 for line in info if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return False
    return shm.f_bavail * shm.f_frsize >= size and available >= size


def _shell_path(path: str) -> str:
    """A host path for the shell: ``~/`` and relative paths are under the user's home."""
    if path.startswith("~/"):
        path = path[2:]
    return shlex.quote(path) if path.startswith("/") else f'"$HOME"/{shlex.quote(path)}'


def _text(path: Path | None) -> str | None:
    return None if path is None else str(path.absolute())


def _path(text: str | None) -> Path | None:
    return None if text is None else Path(text)


__all__ = ["SERVICE", "Remote", "Submission"]
