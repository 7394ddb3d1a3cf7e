"""Help texts offer exactly the values the code accepts (issue #27: `--tolerate` said
`out-of-date`, which nothing accepted)."""

import subprocess
import sys
from collections.abc import Iterator

import click

from veil.cli.main import _COMMANDS, cli
from veil.tolerances import TOLERANCES


def commands(group: click.Group, ctx: click.Context) -> Iterator[click.Command]:
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        yield command
        if isinstance(command, click.Group):
            yield from commands(command, ctx)


def test_every_tolerate_option_offers_only_accepted_tolerances() -> None:
    ctx = click.Context(cli)
    found = 0
    groups = [cli.get_command(ctx, name) for name in ("cas", "evidence")]
    # (not every group: importing the volume commands loads the FUSE binding)
    for command in (c for group in groups if isinstance(group, click.Group) for c in commands(group, ctx)):
        for param in command.params:
            if "--tolerate" in getattr(param, "opts", []):
                found += 1
                assert isinstance(param.type, click.Choice), command.name
                assert set(param.type.choices) <= set(TOLERANCES), command.name
                assert "out-of-date" not in (getattr(param, "help", "") or "")
    assert found >= 3  # cas attest, cas recovery restore, evidence verify


def test_the_listing_of_veil_help_matches_every_command() -> None:
    """`veil --help` lists summaries kept beside the command table (importing every
    command would cost half a second); each is the command's own first sentence."""
    ctx = click.Context(cli)
    for name, (_, summary) in _COMMANDS.items():
        command = cli.get_command(ctx, name)
        assert command is not None and command.get_short_help_str(1000) == summary, name


def test_veil_help_and_version_import_no_command() -> None:
    script = (
        "import sys, contextlib, io\n"
        "from veil.cli.main import cli\n"
        "for argv in (['--help'], ['--version']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        cli.main(argv, prog_name='veil', standalone_mode=False)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('veil.cli.', 'veil.cas', 'pydantic'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert (
        result.stdout.strip() == "['veil.cli.main', 'veil.cli.output']"
        or result.stdout.strip() == "['veil.cli.main']"
    )
