"""Options shared by several commands."""

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from veil.client.config import ClientConfig
from veil.client.http import OwnerClient
from veil.shield.shields import split_address
from veil.tolerances import TOLERANCES

F = TypeVar("F", bound=Callable[..., Any])

cas_url_option = click.option(
    "--cas", "cas_url", default=None, help="CAS URL [default: $VEIL_CAS_ADDR or the pinned default]."
)

#: checking a CAS's own evidence (`veil cas attest`, `veil cas recovery restore`)
cas_measurement_option = click.option(
    "--measurement", default=None, help="Expected CAS measurement (refused if different)."
)


def collateral_store_option(use: str) -> Callable[[F], F]:
    """``--collateral DIR``: an Intel collateral store; ``use`` says what it does there."""
    return click.option(
        "--collateral",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        default=None,
        help=f"Intel collateral store (`veil las collateral import --cache DIR`): {use}",
    )


cas_tolerate_option = click.option(
    "--tolerate",
    multiple=True,
    type=click.Choice(TOLERANCES),
    help="Accept this weakness of the CAS's platform (repeatable).",
)


class HostPort(click.ParamType):  # type: ignore[type-arg]
    """HOST:PORT (``:PORT`` means every interface), parsed to (host, port)."""

    name = "HOST:PORT"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[str, int]:
        if isinstance(value, tuple):
            return value
        try:
            address = split_address(str(value))
        except ValueError:
            address = ""
        if isinstance(address, str):
            self.fail(f"'{value}' is not HOST:PORT", param, ctx)
        return address


HOST_PORT = HostPort()


def owner_client(cas_url: str | None) -> OwnerClient:
    """The owner's authenticated client for ``--cas`` (or the configured default)."""
    config = ClientConfig.load()
    return OwnerClient(config.resolve_url(cas_url), config)
