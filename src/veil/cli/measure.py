"""`veil measure -- CMD [ARGS]`: the measurement a policy's attestation entry must name."""

import os
from pathlib import Path

import click

from veil.cli.output import emit_json
from veil.tee import measure_command
from veil.tee.image_measure import measure_root


@click.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "--pwd",
    type=click.Path(path_type=Path),
    default=None,
    help="Working directory the command runs in (default: current).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the measurement and covered files as JSON.")
@click.option("--verbose", "-v", is_flag=True, help="List the files the measurement covers.")
@click.option(
    "--image",
    "image_root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Measure this unpacked root file system as a whole (measure: image).",
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="PATH",
    help="With --image: a volume path inside the image to leave out (repeatable).",
)
@click.argument("command", nargs=-1)
def measure(
    pwd: Path | None,
    as_json: bool,
    verbose: bool,
    image_root: Path | None,
    exclude: tuple[str, ...],
    command: tuple[str, ...],
) -> None:
    """Print the measurement of the program COMMAND would run, or of a whole image.

    For a command it covers the executable (symlinks followed), a script's interpreter, and
    every argument that names an existing file, by content (docs/measurement.md). With
    --image ROOTFS it covers every file, directory and link of that tree except the paths
    the engine provides and the --exclude'd volume paths (docs/image.md).
    """
    if image_root is not None:
        if command:
            raise click.UsageError("give either --image ROOTFS or a COMMAND, not both")
        measured = measure_root(image_root, exclude)
        if as_json:
            emit_json({"measurement": measured.value, "entries": measured.entries, "excluded": list(exclude)})
        else:
            click.echo(measured.value)
        return
    if exclude:
        raise click.UsageError("--exclude goes with --image")
    if not command:
        raise click.UsageError("give the COMMAND to measure (after --), or --image ROOTFS")
    directory = str(pwd.resolve()) if pwd else os.getcwd()
    result = measure_command(list(command), directory, os.environ.get("PATH"))
    if as_json:
        emit_json(
            {
                "measurement": result.value,
                "executable": result.executable,
                "covered": result.covered_json(),
            }
        )
        return
    click.echo(result.value)
    if verbose:
        for c in result.covered:
            click.echo(f"  {c.role:<11} {c.sha256[:16]}…  {c.path}", err=True)
