"""`veil cas serve|attest|platform`: run a network CAS, pin one, register node platforms."""

import os
import re
import sys
from pathlib import Path

import click

from veil.cas import Cas
from veil.cas.identity import CasIdentity
from veil.cas.postgres import PostgresStore
from veil.cas.sealing import load_or_create_master_key
from veil.cas.server import CasApp, CasSelf, serve
from veil.cas.storage import RecordStore, SqliteStore
from veil.cli.options import HOST_PORT, cas_url_option
from veil.cli.output import NETWORK_SIM_BANNER, emit_json, note, sim_banner
from veil.client.config import ClientConfig, normalize_url
from veil.client.http import OwnerClient
from veil.client.pinning import attest_cas
from veil.crypto import PlatformSigningKey
from veil.las.client import LasClient
from veil.runtime.evidence_sources import evidence_source, resolve_mode
from veil.tee.measure import measure_veil


@click.group()
def cas() -> None:
    """The network CAS: serve it, verify and pin it, register node platforms."""


@cas.command("serve")
@click.option(
    "--listen", type=HOST_PORT, default="127.0.0.1:8443", show_default=True, help="HOST:PORT to listen on."
)
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Data directory: SQLite store, master key, identity key.",
)
@click.option(
    "--db",
    default=None,
    help="postgresql://... : records in PostgreSQL (replicas share it) [default: SQLite in --data].",
)
@click.option("--name", "names", multiple=True, help="Extra host name for the TLS certificate (repeatable).")
@click.option(
    "--auditor",
    "auditors",
    multiple=True,
    help="Owner id (veil owner id) allowed to read the audit log (repeatable) [default: every owner].",
)
def serve_command(
    listen: tuple[str, int], data: Path, db: str | None, names: tuple[str, ...], auditors: tuple[str, ...]
) -> None:
    """Serve the CAS API over HTTPS (TLS 1.3) until SIGINT/SIGTERM.

    Replicas: several processes with --db on one PostgreSQL serve the same sessions; for
    now they share the identity and master key by copying --data (the attested hand-over
    of the master key between replicas is not built yet).

    The first start creates the CAS identity (key and CA certificate, what clients pin with
    `veil cas attest`) and the master key that seals every stored record. VEIL_MODE=hw
    makes the CAS attest itself with this machine's TEE; otherwise it runs in sim mode and
    says so in every answer (header Veil-Sim: true).
    """
    host, port = listen
    mode = resolve_mode(os.environ.get("VEIL_MODE", "sim"))
    if mode == "sim":
        sim_banner(NETWORK_SIM_BANNER)
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    identity = CasIdentity.load_or_create(data)
    platform_key = PlatformSigningKey.load_or_create(data / "platform.key")
    me = CasSelf(
        identity=identity,
        measurement=measure_veil(),
        evidence=evidence_source(mode, platform_key),
        platform_public_key=platform_key.public_bytes if mode == "sim" else None,
    )
    store: RecordStore = SqliteStore(data / "cas.db") if db is None else PostgresStore(db)
    service = Cas(store, load_or_create_master_key(data / "master.key"), sim_mode=mode == "sim")
    for auditor in auditors:
        if not re.fullmatch(r"[0-9a-f]{64}", auditor):
            raise click.BadParameter(
                f"'{auditor}' is not an owner id (64 hex digits)", param_hint="--auditor"
            )
    app = CasApp(service, me, frozenset(auditors))

    def ready(url: str) -> None:
        click.echo(f"veil CAS listening on {url} (identity {identity.digest[:16]}…)", err=True)
        sys.stderr.flush()

    try:
        serve(app, host, port, [host, *names, "localhost", "127.0.0.1"], ready)
    finally:
        service.close()


@cas.command("attest")
@click.argument("url")
@click.option("--measurement", default=None, help="Expected CAS measurement (refused if different).")
@click.option(
    "--tolerate", multiple=True, help="Accept this weakness (sim, debug-mode, out-of-date, ...); repeatable."
)
@click.option("--json", "as_json", is_flag=True, help="Print the pinned identity as JSON.")
def attest_command(url: str, measurement: str | None, tolerate: tuple[str, ...], as_json: bool) -> None:
    """Verify the CAS at URL by its own evidence and pin its identity.

    Later commands and runtimes talk to URL only if it presents the pinned key. The first
    pinned CAS becomes the default (--cas may then be left out).
    """
    url = normalize_url(url)
    pin = attest_cas(url, tolerate, measurement)
    if pin.sim:
        sim_banner(NETWORK_SIM_BANNER)
    config = ClientConfig.load()
    previous = config.pins.get(url)
    if previous is not None and previous.identity == pin.identity:
        pin.owner_certificate = previous.owner_certificate
    config.pins[url] = pin
    config.default_url = config.default_url or url
    config.save()
    if as_json:
        emit_json({"url": url, "identity": pin.identity, "measurement": pin.measurement, "sim": pin.sim})
    else:
        click.echo(f"pinned {url}: identity {pin.identity}, measurement {pin.measurement}")


@cas.group("platform")
def platform() -> None:
    """Node platforms whose sim evidence the CAS accepts."""


@platform.command("add")
@click.argument("url", required=False)
@cas_url_option
@click.option("--las", "las_address", default=None, help="The LAS address (unix:PATH, PATH or HOST:PORT).")
@click.option(
    "--key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A platform key file instead of a running LAS (the LAS's platform.key).",
)
def platform_add(
    url: str | None, cas_url: str | None, las_address: str | None, key_file: Path | None
) -> None:
    """Register a node's sim platform key with the CAS at URL (an owner action, audited).

    URL (or --cas) defaults to $VEIL_CAS_ADDR or the pinned default CAS.
    """
    if (las_address is None) == (key_file is None):
        raise click.UsageError("give exactly one of --las ADDRESS or --key-file FILE")
    if las_address is not None:
        public_key = LasClient(las_address).platform_public_key()
    else:
        assert key_file is not None
        public_key = PlatformSigningKey.load_or_create(key_file).public_bytes
    config = ClientConfig.load()
    target = config.resolve_url(url or cas_url)
    platform_id = OwnerClient(target, config).register_platform(public_key)
    note(f"registered sim platform {platform_id} with {target}")
    click.echo(platform_id)
