"""`veil image convert`: a container image into a confidential image and its session."""

import os
import sys
from pathlib import Path
from typing import Any

import click

from veil.cli.options import cas_url_option, owner_client
from veil.cli.output import emit_json, note
from veil.client.http import OwnerClient
from veil.crypto.files import replace_private_file
from veil.image import ConvertOptions, ConvertResult, convert
from veil.policy import with_predecessor


@click.group()
def image() -> None:
    """Confidential container images (docs/image.md)."""


class _Bar:
    """A progress bar on stderr whose length is known once the source image is read."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.done = 0

    def __call__(self, label: str, total: int) -> None:
        if not self.enabled:
            return
        if total == 0:
            note(label)
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="converting", file=sys.stderr, show_pos=True)
            self.bar.__enter__()
        else:
            self.bar.update(1)
        self.bar.label = label
        self.bar.render_progress()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _store_on_cas(result: ConvertResult, session_name: str, client: OwnerClient) -> str:
    text = result.session_text
    if session_name in client.list_sessions():
        text = with_predecessor(text, str(client.get_session(session_name)["hash"]))
        stored = client.update_session(text)
        return f"updated session {stored['name']} to revision {stored['revision']}: {stored['hash']}"
    stored = client.create_session(text)
    return f"created session {stored['name']}: {stored['hash']}"


@image.command("convert")
@click.argument("source")
@click.argument("destination")
@click.option(
    "--session", "session_name", required=True, help="Session the image runs under (e.g. acme/shop)."
)
@click.option("--service", "service_name", required=True, help="Service of that session (e.g. api).")
@click.option(
    "--encrypt",
    multiple=True,
    metavar="PATH",
    help="A directory of the image that becomes an encrypted, read-only volume: code and "
    "files the program reads; its tag never moves, so any number of containers start (repeatable).",
)
@click.option(
    "--authenticate",
    multiple=True,
    metavar="PATH",
    help="A directory that becomes an authenticated (integrity-only), read-only volume (repeatable).",
)
@click.option(
    "--data",
    multiple=True,
    metavar="PATH",
    help="A directory for persistent data: a writable encrypted volume created on first use "
    "in storage the host mounts there, tracked by the CAS; not in the image (repeatable).",
)
@click.option(
    "--tmpfs",
    multiple=True,
    metavar="PATH",
    help="A directory that gets a tmpfs at run time, holding a copy of what it held "
    "(repeatable; besides /tmp, /var/cache, /var/log, /var/tmp).",
)
@click.option(
    "--no-default-tmpfs",
    is_flag=True,
    help="No tmpfs on /tmp, /var/cache, /var/log and /var/tmp unless given with --tmpfs.",
)
@click.option(
    "--template",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the session here (mode 0600: it holds the volume keys).",
)
@click.option(
    "--sim-platform",
    "sim_platforms",
    multiple=True,
    metavar="ID",
    help="A registered sim platform the session accepts (`veil cas platform list`; repeatable).",
)
@cas_url_option
@click.option(
    "--json", "as_json", is_flag=True, help="Print a summary (digest, measurement, layers) as JSON."
)
def convert_command(
    source: str,
    destination: str,
    session_name: str,
    service_name: str,
    encrypt: tuple[str, ...],
    authenticate: tuple[str, ...],
    data: tuple[str, ...],
    tmpfs: tuple[str, ...],
    no_default_tmpfs: bool,
    template: Path | None,
    sim_platforms: tuple[str, ...],
    cas_url: str | None,
    as_json: bool,
) -> None:
    """Convert the image SOURCE into the confidential image DESTINATION.

    SOURCE and DESTINATION use skopeo's syntax: oci:DIR[:TAG] (read and written directly),
    docker-archive:FILE, docker://REF (through skopeo). The paths given to --encrypt and
    --authenticate become protected volumes and their plaintext leaves every layer; the
    runtime becomes the entrypoint; the original command, environment and working
    directory go into the session, with the measurement of the whole image. Writes to
    /tmp, /var/cache, /var/log, /var/tmp and each --tmpfs PATH go to memory at run time,
    so the measured root never changes and the same root file system starts again.

    Give --template FILE to write the session, or --cas URL to create (or update) it on the
    CAS as your owner identity; either or both.
    """
    if template is None and cas_url is None and not os.environ.get("VEIL_CAS_ADDR"):
        raise click.UsageError("give --template FILE, --cas URL, or both: the image needs its session")
    options = ConvertOptions(
        source,
        destination,
        session_name,
        service_name,
        list(encrypt),
        list(authenticate),
        list(sim_platforms),
        list(tmpfs),
        not no_default_tmpfs,
        list(data),
    )
    # reach the CAS (pin, owner certificate) before the work, so a refusal costs nothing
    client = owner_client(cas_url) if cas_url or template is None else None
    bar = _Bar(enabled=not as_json)
    try:
        result = convert(options, bar)
    finally:
        bar.close()
    for warning in result.warnings:
        note(f"warning: {warning}")
    if template is not None:
        replace_private_file(template, result.session_text.encode())
        if result.volumes:
            note(f"{template} holds the volume keys: keep it private, delete it once the session is stored")
    stored = _store_on_cas(result, session_name, client) if client is not None else None
    if as_json:
        emit_json({**result.summary(), "template": str(template) if template else None, "cas": stored})
        return
    click.echo(f"wrote {destination} ({result.manifest_digest})")
    click.echo(f"measurement {result.measurement}")
    for volume in result.volumes:
        if volume.kind == "data":
            click.echo(f"volume {volume.name}: {volume.path} (data: created on first use, writable)")
        else:
            click.echo(f"volume {volume.name}: {volume.path} ({volume.mode}, read-only), tag {volume.tag}")
    if template is not None:
        click.echo(f"session template {template}")
    if stored:
        click.echo(stored)


convert_command.name = "convert"
