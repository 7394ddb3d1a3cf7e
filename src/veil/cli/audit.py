"""`veil audit ...`: read and verify the embedded CAS's audit log."""

import datetime as dt
from pathlib import Path

import click

from veil.cli.output import emit_json
from veil.cli.run import default_home, home_option
from veil.runtime.run import EmbeddedHome


@click.group()
def audit() -> None:
    """Read and verify the CAS audit log."""


@audit.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(home: Path | None, as_json: bool) -> None:
    """Check that no audit entry was edited, reordered or removed (exit 1 if one was)."""
    cas, _ = EmbeddedHome(home or default_home()).open()
    try:
        count = cas.audit.verify()
    finally:
        cas.close()
    if as_json:
        emit_json({"verified": True, "entries": count})
    else:
        click.echo(f"audit log intact: {count} entries")


@audit.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def show(home: Path | None, as_json: bool) -> None:
    """Print the audit log, oldest first."""
    cas, _ = EmbeddedHome(home or default_home()).open()
    try:
        entries = cas.audit.entries()
    finally:
        cas.close()
    if as_json:
        emit_json([{"seq": e.seq, "chain": e.chain.hex(), **e.event} for e in entries])
        return
    for e in entries:
        event = dict(e.event)
        when = dt.datetime.fromtimestamp(event.pop("time"), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        name = event.pop("event")
        sim = " [sim]" if event.pop("sim") else ""
        rest = " ".join(f"{k}={v}" for k, v in sorted(event.items()))
        click.echo(f"{e.seq:>5} {when} {name}{sim} {rest}")
