"""Write the CLI reference (docs/cli.md) from the commands themselves.

Run: .venv/bin/python scripts/cli_reference.py > docs/cli.md
tests/unit/cli/test_cli_reference.py fails when docs/cli.md differs from what this prints.
"""

from collections.abc import Iterator

import click

from veil.cli.main import cli

WIDTH = 100
HEADER = """\
# CLI reference

Every `veil` command with its `--help`, generated from the commands themselves
(`.venv/bin/python scripts/cli_reference.py > docs/cli.md`; a test fails when this file
is stale). Exit codes: 0 done, 1 refused or failed (the message says why), 2 usage error.
"""


def _context(command: click.Command, name: str, parent: click.Context | None) -> click.Context:
    """A context as the command line makes one (the group's -h), at a fixed width."""
    settings = {"terminal_width": WIDTH, "max_content_width": WIDTH, **command.context_settings}
    return click.Context(command, info_name=name, parent=parent, **settings)


def _walk(command: click.Command, ctx: click.Context) -> Iterator[click.Context]:
    yield ctx
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            yield from _walk(sub, _context(sub, name, ctx))


def render() -> str:
    parts = [HEADER]
    for ctx in _walk(cli, _context(cli, "veil", None)):
        parts.append(f"\n## {ctx.command_path}\n\n```\n{ctx.command.get_help(ctx).rstrip()}\n```\n")
    return "".join(parts)


if __name__ == "__main__":
    print(render(), end="")
