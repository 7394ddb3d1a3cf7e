"""The `veil` command: subcommands, one-line errors, exit codes (0 ok, 1 refused, 2 usage)."""

import importlib
import logging
import os
import sys

import click

from veil import __version__
from veil.errors import VeilError
from veil.policy.errors import PolicyError

#: subcommand -> (module defining it, its summary); a module is imported only when its
#: command runs (the CAS server, PostgreSQL driver and FUSE binding cost ~0.5 s to import,
#: too much for `veil session check`), and `veil --help` lists the summaries without
#: importing any (tests/unit/cli/test_help_values.py checks they match the commands')
_COMMANDS = {
    "audit": ("veil.cli.audit", "Read and verify the CAS audit log."),
    "cas": (
        "veil.cli.cas",
        "The network CAS: serve, configure and pin it, register node platforms, back it up, recover it.",
    ),
    "evidence": ("veil.cli.evidence", "Verify attestation evidence from real hardware."),
    "image": ("veil.cli.image", "Confidential container images (docs/image.md)."),
    "las": ("veil.cli.las", "The local attestation service (node agent)."),
    "measure": (
        "veil.cli.measure",
        "Print the measurement of the program COMMAND would run, or of a whole image.",
    ),
    "owner": ("veil.cli.owner", "Your owner key (under $XDG_CONFIG_HOME/veil, created on first use)."),
    "remote": (
        "veil.cli.remote",
        "Run a program on an untrusted host: code, input and output encrypted (docs/remote.md).",
    ),
    "run": (
        "veil.cli.run",
        "Attest and run a service: SERVICE of POLICY on the embedded CAS (sim mode), or "
        "--config-id SESSION/SERVICE from a network CAS.",
    ),
    "session": (
        "veil.cli.session",
        "Session files (policies): check, hash, schema; create, update, show, list on a CAS.",
    ),
    "volume": (
        "veil.cli.volume",
        "Protected volumes: encrypted or authenticated, and fresh (see docs/volume-format.md).",
    ),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return None
        command = getattr(importlib.import_module(_COMMANDS[cmd_name][0]), cmd_name)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        width = formatter.width or 80
        limit = width - 6 - max(len(name) for name in _COMMANDS)
        rows = [(name, _shorten(summary, limit)) for name, (_, summary) in sorted(_COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _shorten(text: str, limit: int) -> str:
    """As click shortens a command's help in a listing: whole words, then "..."."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 3].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + "..."


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="veil")
def cli() -> None:
    """veil runs unmodified programs with attested secrets.

    Start with `veil session check FILE`, then `veil run --policy FILE --service NAME`.
    """


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="veil: %(levelname)s: %(message)s", stream=sys.stderr)
    try:
        result = cli.main(prog_name="veil", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("veil: aborted", err=True)
        sys.exit(130)
    except PolicyError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        sys.exit(exc.exit_code)
    except VeilError as exc:
        click.echo(f"veil: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if os.environ.get("VEIL_DEBUG"):
            raise
        click.echo(f"veil: internal error: {type(exc).__name__}: {exc} (VEIL_DEBUG=1 shows where)", err=True)
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)
