"""`veil run`: start an unmodified program with its attested configuration."""

import os
from pathlib import Path

import click

from veil.cli.output import note, sim_banner
from veil.runtime.evidence_sources import resolve_mode
from veil.runtime.run import EmbeddedHome, run_with_policy


def default_home() -> Path:
    return Path(os.environ.get("VEIL_HOME", ".veil"))


home_option = click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="Data directory of the embedded CAS [default: $VEIL_HOME or ./.veil].",
)


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--policy", "policy", type=click.Path(path_type=Path), required=True, help="The session file (YAML)."
)
@click.option("--service", "service", required=True, help="The service of the session to run.")
@home_option
@click.option("--quiet", "-q", is_flag=True, help="Do not report progress (the sim banner stays).")
@click.argument("extra_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(
    ctx: click.Context,
    policy: Path,
    service: str,
    home: Path | None,
    quiet: bool,
    extra_args: tuple[str, ...],
) -> None:
    """Attest and run SERVICE of the session in POLICY on the embedded CAS (sim mode).

    The session is registered (or updated) in the embedded CAS, the program is measured and
    attested, and it starts with exactly the policy's arguments, environment, working
    directory and injected files. veil stays as supervisor: signals are forwarded and its
    exit code is the program's (128+N if a signal ended it).

    Arguments after `--` are appended only if the service sets allow_extra_args.

    VEIL_MODE chooses the evidence: sim (default), hw (this machine's TEE: configfs-tsm,
    /dev/sev-guest or Gramine's /dev/attestation), auto (hw if present, else sim).
    """
    mode = resolve_mode(os.environ.get("VEIL_MODE", "sim"))
    sim_banner()
    report = (lambda _m: None) if quiet else note
    if mode == "hw":
        report("evidence from this machine's TEE (VEIL_MODE); the embedded CAS itself is not protected")
    code = run_with_policy(
        policy, service, list(extra_args), EmbeddedHome(home or default_home()), report, mode=mode
    )
    ctx.exit(code)
