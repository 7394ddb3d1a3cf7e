"""`veil measure -- CMD [ARGS]`: the measurement a policy's attestation entry must name."""

import os
from pathlib import Path

import click

from veil.cli.output import emit_json
from veil.tee import measure_command


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--pwd",
    type=click.Path(path_type=Path),
    default=None,
    help="Working directory the command runs in (default: current).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the measurement and covered files as JSON.")
@click.option("--verbose", "-v", is_flag=True, help="List the files the measurement covers.")
@click.argument("command", nargs=-1, required=True)
def measure(pwd: Path | None, as_json: bool, verbose: bool, command: tuple[str, ...]) -> None:
    """Print the measurement of the program COMMAND would run.

    It covers the executable (symlinks followed), a script's interpreter, and every argument
    that names an existing file, by content. See docs/measurement.md.
    """
    directory = str(pwd.resolve()) if pwd else os.getcwd()
    result = measure_command(list(command), directory, os.environ.get("PATH"))
    if as_json:
        emit_json(
            {
                "measurement": result.value,
                "executable": result.executable,
                "covered": [
                    {"role": c.role, "argument_index": c.argument_index, "path": c.path, "sha256": c.sha256}
                    for c in result.covered
                ],
            }
        )
        return
    click.echo(result.value)
    if verbose:
        for c in result.covered:
            click.echo(f"  {c.role:<11} {c.sha256[:16]}…  {c.path}", err=True)
