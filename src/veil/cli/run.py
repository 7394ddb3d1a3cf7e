"""`veil run`: start an unmodified program with its attested configuration."""

import os
from pathlib import Path

import click

from veil.cli.output import NETWORK_SIM_BANNER, note, sim_banner
from veil.crypto import PlatformSigningKey
from veil.protocol import EvidenceSource
from veil.runtime.evidence_sources import evidence_source, resolve_mode
from veil.runtime.run import EmbeddedHome, run_from_cas, run_with_policy

#: where veil before 0.2 kept the embedded CAS: the current directory
LEGACY_HOME = Path(".veil")


def default_home() -> Path:
    """$VEIL_HOME, else the user's data directory ($XDG_DATA_HOME/veil, by default
    ~/.local/share/veil): the same embedded CAS from every directory. A ./.veil that an
    earlier version made in the current directory is still used, with a warning saying how
    to move it (a silent switch would give the user new secrets)."""
    configured = os.environ.get("VEIL_HOME")
    if configured:
        return Path(configured)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    home = Path(data) / "veil"
    if (LEGACY_HOME / "cas").is_dir() and not home.exists():
        note(
            f"warning: using ./.veil, where earlier versions kept the embedded CAS; move it with "
            f"`mv .veil {home}` (or set VEIL_HOME) to use it from every directory"
        )
        return LEGACY_HOME
    return home


home_option = click.option(
    "--home",
    type=click.Path(path_type=Path),
    default=None,
    help="Data directory of the embedded CAS [default: $VEIL_HOME, else $XDG_DATA_HOME/veil, "
    "~/.local/share/veil].",
)


@click.command(context_settings={"ignore_unknown_options": True})
@click.option("--policy", "policy", type=click.Path(path_type=Path), help="Embedded CAS: the session file.")
@click.option("--service", "service", help="Embedded CAS: the service of the session to run.")
@click.option("--cas", "cas_url", default=None, help="Network CAS URL [default: $VEIL_CAS_ADDR].")
@click.option(
    "--config-id",
    envvar="VEIL_CONFIG_ID",
    default=None,
    help="Network CAS: SESSION/SERVICE [$VEIL_CONFIG_ID].",
)
@home_option
@click.option("--quiet", "-q", is_flag=True, help="Do not report progress (the sim banner stays).")
@click.argument("extra_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def run(
    ctx: click.Context,
    policy: Path | None,
    service: str | None,
    cas_url: str | None,
    config_id: str | None,
    home: Path | None,
    quiet: bool,
    extra_args: tuple[str, ...],
) -> None:
    """Attest and run a service: SERVICE of POLICY on the embedded CAS (sim mode), or
    --config-id SESSION/SERVICE from a network CAS.

    Embedded: the session is registered (or updated) in the embedded CAS under --home. The
    first run starts the home's embedded CAS server in the background, which later runs use
    (about half the start-up time); VEIL_EMBEDDED_SERVER sets its idle seconds (default 120)
    or turns it off (docs/sim-mode.md).
    Network: the CAS must be pinned (`veil cas attest URL`, or VEIL_CAS_CA=FILE holding its
    CA certificate); the runtime measures the command the CAS names for the service.

    The program starts with exactly the policy's arguments, environment, working directory,
    injected files, volumes and shields. veil stays as supervisor: signals are forwarded
    and its exit code is the program's (128+N if a signal ended it). Arguments after `--`
    are appended only if the service sets allow_extra_args.

    VEIL_MODE chooses the evidence: sim (default; a LAS at VEIL_LAS_ADDR, else the platform
    key under --home), hw (this machine's TEE: configfs-tsm, /dev/sev-guest or Gramine's
    /dev/attestation), auto (hw if present, else sim).
    """
    mode = resolve_mode(os.environ.get("VEIL_MODE", "sim"))
    report = (lambda _m: None) if quiet else note
    if policy is not None:
        if config_id is not None or cas_url is not None:
            raise click.UsageError("--policy goes with --service (embedded CAS), not with --cas/--config-id")
        if service is None:
            raise click.UsageError("--policy needs --service NAME: which service of the session to run")
        sim_banner()
        if mode == "hw":
            report("evidence from this machine's TEE (VEIL_MODE); the embedded CAS itself is not protected")
        code = run_with_policy(
            policy, service, list(extra_args), EmbeddedHome(home or default_home()), report, mode=mode
        )
        ctx.exit(code)
    if config_id is None:
        raise click.UsageError(
            "give --policy FILE --service NAME, or --config-id SESSION/SERVICE (network CAS)"
        )
    # The network client (HTTP, TLS, pins) and the LAS client are imported here: `veil run
    # --policy` uses neither (docs/benchmarks.md, "CLI start-up").
    from veil.client.config import ClientConfig  # noqa: PLC0415
    from veil.client.http import HttpCasClient  # noqa: PLC0415
    from veil.las.client import LasClient  # noqa: PLC0415

    config = ClientConfig.load()
    url = config.resolve_url(cas_url)
    pinned_ca = os.environ.get("VEIL_CAS_CA")
    client = HttpCasClient.pinned(url, config, Path(pinned_ca).read_text() if pinned_ca else None)
    if mode == "sim":
        sim_banner(NETWORK_SIM_BANNER)
        las = os.environ.get("VEIL_LAS_ADDR")
        evidence: EvidenceSource = (
            LasClient(las)
            if las
            else evidence_source(
                "sim",
                PlatformSigningKey.load_or_create(EmbeddedHome(home or default_home()).platform_key_file),
            )
        )
    else:
        evidence = evidence_source("hw", PlatformSigningKey.generate())
    ctx.exit(run_from_cas(client, config_id, evidence, list(extra_args), report))
