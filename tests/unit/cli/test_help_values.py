"""Help texts offer exactly the values the code accepts (issue #27: `--tolerate` said
`out-of-date`, which nothing accepted)."""

from collections.abc import Iterator

import click

from veil.cli.main import cli
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
