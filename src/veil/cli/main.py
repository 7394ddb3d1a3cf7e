"""The `veil` command: subcommands, one-line errors, exit codes (0 ok, 1 refused, 2 usage)."""

import logging
import os
import sys

import click

from veil import __version__
from veil.cli.audit import audit
from veil.cli.cas import cas
from veil.cli.evidence import evidence
from veil.cli.las import las
from veil.cli.measure import measure
from veil.cli.owner import owner
from veil.cli.run import run
from veil.cli.session import session
from veil.cli.volume import volume
from veil.errors import VeilError
from veil.policy import PolicyError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="veil")
def cli() -> None:
    """veil runs unmodified programs with attested secrets.

    Start with `veil session check FILE`, then `veil run --policy FILE --service NAME`.
    """


cli.add_command(run)
cli.add_command(measure)
cli.add_command(session)
cli.add_command(audit)
cli.add_command(evidence)
cli.add_command(las)
cli.add_command(volume)
cli.add_command(cas)
cli.add_command(owner)


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
