"""Printing for the CLI: data as JSON or text on stdout, messages and banners on stderr."""

import json
import sys
from typing import Any

import click

SIM_BANNER = (
    "veil: SIM MODE: no TEE protects this program or the embedded CAS (its master key is a "
    "plain file); root on this host can read their secrets. For development only."
)


NETWORK_SIM_BANNER = (
    "veil: SIM MODE: no TEE protects this CAS or the programs it provisions (sim evidence, "
    "master key sealed to a platform key that is a plain file); root on their hosts can read every "
    "secret. For development only."
)


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


def note(message: str) -> None:
    click.echo(f"veil: {message}", err=True)


def sim_banner(text: str = SIM_BANNER) -> None:
    tty = sys.stderr.isatty()
    click.echo(click.style(text, fg="yellow" if tty else None, bold=tty), err=True)
