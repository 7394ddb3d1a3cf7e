"""`veil remote`: run a program on a host you do not trust, with encrypted code, input and
output (docs/remote.md)."""

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import yaml

from veil.cli.output import emit_json, note
from veil.cli.run import default_home
from veil.client.config import ClientConfig
from veil.client.http import OwnerClient
from veil.remote.job import JobStore, check_job_name, new_job_name
from veil.remote.ssh import RemoteError, SshHost, shared_connections
from veil.remote.workflow import Remote, Submission
from veil.tolerances import TOLERANCES


@click.group()
def remote() -> None:
    """Run a program on an untrusted host: code, input and output encrypted (docs/remote.md)."""


def _remote() -> Remote:
    config = ClientConfig.load()
    return Remote(
        JobStore(default_home() / "remote"),
        lambda url: OwnerClient(url, config),
        note,
        _progress,
    )


@contextlib.contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[int], Any]]:
    with click.progressbar(length=max(total, 1), label=label, file=sys.stderr, show_pos=True) as bar:
        yield bar.update


def _attestation(path: Path | None) -> list[dict[str, Any]]:
    if path is None:
        return []
    entries = yaml.safe_load(path.read_text())
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "platform" in e for e in entries):
        raise click.BadParameter(
            f"{path}: must be a YAML list of attestation entries", param_hint="--attestation"
        )
    return entries


_KEEP = click.option("--keep", is_flag=True, help="Leave the job's ciphertext on the host.")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


@remote.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--host", "host_url", required=True, help="ssh://[USER@]HOST[:PORT] of the host that runs the job."
)
@click.option(
    "--cas", "cas_url", default=None, help="CAS URL [default: $VEIL_CAS_ADDR or the pinned default]."
)
@click.option(
    "--program",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The program the host must run, as you have it here: the session admits only its "
    "measurement [default: CMD's program, found here on the job's PATH].",
)
@click.option(
    "--image",
    default=None,
    metavar="REF",
    help="Run the job in this container image (skopeo syntax: oci:DIR[:TAG], docker-archive:FILE, "
    "docker://...): converted here, its root file system measured, sent, run by the host's "
    "container engine (--remote-engine). Not with --program.",
)
@click.option(
    "--code", required=True, type=click.Path(file_okay=False, path_type=Path), help="Code to send, encrypted."
)
@click.option(
    "--input", "input_", type=click.Path(file_okay=False, path_type=Path), help="Input to send, encrypted."
)
@click.option(
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Where the decrypted output goes (new or empty).",
)
@click.option("--name", default=None, help="Job name [default: job-DATE-TIME-RANDOM].")
@click.option(
    "--tolerate",
    multiple=True,
    type=click.Choice(TOLERANCES),
    help="Accept this weakness of the host's platform; `sim` for a host without a TEE (protects nothing).",
)
@click.option(
    "--sim-platform",
    "sim_platforms",
    multiple=True,
    help="With --tolerate sim: the registered sim platform ids accepted [default: all on the CAS].",
)
@click.option(
    "--attestation",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML list of the host's hardware attestation entries (docs/policy.md); "
    "sev-snp and tdx entries get the program's measurement as `workload`.",
)
@click.option(
    "--known-hosts",
    type=click.Path(dir_okay=False, path_type=Path),
    help="known_hosts file for the host [default: ssh's].",
)
@click.option(
    "--identity",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="SSH private key file [default: ssh's].",
)
@click.option(
    "--ssh-config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="ssh_config file [default: ssh's].",
)
@click.option(
    "--remote-dir",
    default=".veil-remote",
    show_default=True,
    help="Where jobs live on the host (relative: in the SSH user's home).",
)
@click.option(
    "--remote-veil", default="veil", show_default=True, help="How to run veil on the host (e.g. 'sudo veil')."
)
@click.option(
    "--remote-engine",
    default="podman",
    show_default=True,
    help="With --image: how to run the host's container engine (podman; a wrapper with its options).",
)
@click.option("--remote-cas", default=None, help="The CAS URL as the host reaches it [default: --cas].")
@click.option("--las", default=None, help="VEIL_LAS_ADDR on the host (its node agent).")
@click.option("--mode", type=click.Choice(["sim", "hw", "auto"]), default=None, help="VEIL_MODE on the host.")
@click.option(
    "--detach", is_flag=True, help="Start the job and return; `veil remote status|fetch JOB` later."
)
@_KEEP
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    host_url: str,
    cas_url: str | None,
    program: Path | None,
    image: str | None,
    code: Path,
    input_: Path | None,
    output: Path,
    name: str | None,
    tolerate: tuple[str, ...],
    sim_platforms: tuple[str, ...],
    attestation: Path | None,
    known_hosts: Path | None,
    identity: Path | None,
    ssh_config: Path | None,
    remote_dir: str,
    remote_veil: str,
    remote_engine: str,
    remote_cas: str | None,
    las: str | None,
    mode: str | None,
    detach: bool,
    keep: bool,
    command: tuple[str, ...],
) -> None:
    """Run `CMD [ARGS]` on HOST with CODE and INPUT encrypted here, and the output fetched
    back and decrypted into OUTPUT. In CMD, {code}, {input}, {output} and {scratch} stand
    for the job's directories on the host.

    \b
    1. code and input are encrypted here into volumes with fresh keys;
    2. a session on the pinned CAS hands those keys and a fresh output key to exactly
       the attested program and command (only you may read it);
    3. the ciphertext goes to the host over SSH (host key checked, nothing forwarded);
       `veil run --config-id` runs there; its stdout, stderr and exit code come back;
    4. the output volume comes back and is decrypted here only if its tag is the one the
       CAS recorded at the end of the run;
    5. the job's files on the host are removed (unless --keep).

    With --image, CMD runs in that image (converted here, its whole root file system
    measured) under the host's container engine; {code}, {input}, {output} and {scratch}
    are then the job's directories as the container sees them (under /run/veil-job).

    Example: veil remote run --host ssh://render@farm --tolerate sim --code scene/ --output out/
    -- blender -b {code}/scene.blend -o {output}/frame_ -f 1
    """
    if image is not None and program is not None:
        raise click.UsageError("--image and --program exclude each other: the image's root is measured")
    config = ClientConfig.load()
    url = config.resolve_url(cas_url)
    argv = list(command[1:] if command[:1] == ("--",) else command)
    submission = Submission(
        host=SshHost.parse(host_url, known_hosts, identity, ssh_config),
        cas=url,
        command=argv,
        code=code,
        input=input_,
        output=output,
        name=check_job_name(name or new_job_name()),
        program=program,
        image=image,
        tolerate=list(tolerate),
        sim_platforms=list(sim_platforms),
        attestation=_attestation(attestation),
        remote_base=remote_dir,
        remote_veil=remote_veil,
        remote_engine=remote_engine,
        remote_cas=remote_cas,
        las=las,
        mode=mode,
    )
    work = _remote()
    with shared_connections():
        job = work.submit(submission, config.pin(url).ca_certificate, config.owner_id(), detach, keep)
        if detach:
            click.echo(job.name)
            return
        status = work.run_attached(job)
        try:
            work.fetch(job, keep=keep)
        except RemoteError as exc:
            note(f"error: {exc}")
            sys.exit(status or 1)
    sys.exit(status)


@remote.command()
@click.argument("job")
@_JSON
def status(job: str, as_json: bool) -> None:
    """Whether JOB runs, finished (with its exit code) or is gone from its host."""
    work = _remote()
    result = work.status(work.store.load(job))
    if as_json:
        emit_json(result)
        return
    code = f" (exit code {result['exit_code']})" if "exit_code" in result else ""
    click.echo(f"{result['job']}: {result['state']}{code} on {result['host']}")


@remote.command()
@click.argument("job")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    help="Decrypt into this directory [default: the job's --output].",
)
@_KEEP
def fetch(job: str, output: Path | None, keep: bool) -> None:
    """Fetch JOB's output, check it against the tag the CAS recorded, decrypt it.

    For a detached job, its stdout and stderr are printed first. An output older than the
    run's end, or another volume put in its place, is refused and nothing is decrypted.
    """
    work = _remote()
    record = work.store.load(job)
    with shared_connections():
        if record.detached:
            state = work.status(record)
            if state["state"] == "running":
                raise RemoteError(
                    f"job {job} is still running on {record.host}; fetch it when it has finished"
                )
        work.fetch(record, output, keep)


@remote.command()
@click.argument("job")
@_KEEP
def cancel(job: str, keep: bool) -> None:
    """Stop JOB on its host and remove its files there (unless --keep)."""
    work = _remote()
    with shared_connections():
        work.cancel(work.store.load(job), keep)


@remote.command(name="list")
@_JSON
def list_(as_json: bool) -> None:
    """The jobs you submitted from here (their records and keys are under $VEIL_HOME/remote)."""
    store = JobStore(default_home() / "remote")
    jobs = [store.load(name) for name in store.names()]
    if as_json:
        emit_json([{"job": j.name, "host": j.host, "session": j.session, "command": j.command} for j in jobs])
        return
    for j in jobs:
        click.echo(f"{j.name}\t{j.host}\t{j.session}")
