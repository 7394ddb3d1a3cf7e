"""`veil owner id`: the owner identity to name in access policies."""

import click

from veil.client.config import ClientConfig


@click.group()
def owner() -> None:
    """Your owner key (under $XDG_CONFIG_HOME/veil, created on first use)."""


@owner.command("id")
def owner_id() -> None:
    """Print your owner identity: the SHA-256 of your owner public key.

    Name it in a session's access_policy (read/update) to give this key rights.
    """
    click.echo(ClientConfig.load().owner_id())
