"""The `veil` command: subcommands, one-line errors, exit codes (0 ok, 1 refused, 2 usage)."""

import importlib
import logging
import os
import sys

import click

from veil import __version__
from veil.errors import VeilError
from veil.policy.errors import PolicyError

#: subcommand -> module defining it; imported only when used (the CAS server, PostgreSQL
#: driver and FUSE binding cost ~0.5 s to import, too much for `veil session check`)
_COMMANDS = {
    "run": "veil.cli.run",
    "measure": "veil.cli.measure",
    "session": "veil.cli.session",
    "audit": "veil.cli.audit",
    "evidence": "veil.cli.evidence",
    "las": "veil.cli.las",
    "volume": "veil.cli.volume",
    "cas": "veil.cli.cas",
    "owner": "veil.cli.owner",
    "image": "veil.cli.image",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = _COMMANDS.get(cmd_name)
        if module is None:
            return None
        command = getattr(importlib.import_module(module), cmd_name)
        assert isinstance(command, click.Command)
        return command


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
