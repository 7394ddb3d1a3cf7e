"""Options shared by several commands."""

import click

cas_url_option = click.option(
    "--cas", "cas_url", default=None, help="CAS URL [default: $VEIL_CAS_ADDR or the pinned default]."
)
