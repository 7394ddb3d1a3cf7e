"""`veil cas serve|config|backup|restore|attest|platform|recovery`: run a network CAS, check
its configuration, back it up and restore it, pin one, register node platforms, restore a
lost master key."""

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click

from veil.cas import Cas
from veil.cas.backup import create_backup, open_backup
from veil.cas.custody import Custody, PlatformSealer, obtain_master_key
from veil.cas.datadir import check_data_dir, mark_data_dir
from veil.cas.errors import MasterKeyError
from veil.cas.identity import SERVER_VALIDITY, CasIdentity
from veil.cas.postgres import PostgresStore
from veil.cas.principals import ROLES, Role
from veil.cas.replicas import check_identity
from veil.cas.replicas import join as join_replica
from veil.cas.server import CasApp, CasSelf, serve
from veil.cas.server.app import NO_RECOVERY_KEY
from veil.cas.server.recovery import RecoveryApp, wait_for_recovery
from veil.cas.storage import SCHEMA_VERSION, RecordStore, SqliteStore
from veil.cli.options import (
    HOST_PORT,
    cas_measurement_option,
    cas_tolerate_option,
    cas_url_option,
    collateral_store_option,
    owner_client,
)
from veil.cli.output import NETWORK_SIM_BANNER, emit_json, note, sim_banner
from veil.cli.settings import (
    ConfigFileError,
    check_file,
    configurable,
    read_settings,
    setting_options,
    sources,
)
from veil.client.config import ClientConfig, normalize_url
from veil.client.http import OwnerClient, enrol
from veil.client.pinning import attest_cas
from veil.client.recovery import (
    generate_recovery_key,
    load_recovery_private_key,
    load_recovery_public_key,
    restore,
)
from veil.crypto import PlatformSigningKey
from veil.crypto.encoding import sha256_hex
from veil.crypto.files import replace_private_file
from veil.las.client import LasClient
from veil.logs import FORMATS, LEVELS
from veil.logs import configure as configure_logs
from veil.runtime.evidence_sources import MODES, evidence_source, resolve_mode
from veil.sdnotify import notify
from veil.tee.measure import measure_veil

log = logging.getLogger("veil.cas")


@click.group()
def cas() -> None:
    """The network CAS: serve, configure and pin it, register node platforms, back it up, recover it."""


@configurable("VEIL_CAS_")
@cas.command("serve")
@click.option(
    "--listen", type=HOST_PORT, default="127.0.0.1:8443", show_default=True, help="HOST:PORT to listen on."
)
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="This node's directory: platform key, sealed master key, SQLite store (without --db).",
)
@click.option(
    "--db",
    default=None,
    help="postgresql://... : records in PostgreSQL (replicas share it) [default: SQLite in --data].",
)
@click.option("--name", "names", multiple=True, help="Extra host name for the TLS certificate (repeatable).")
@click.option(
    "--admin",
    "admins",
    multiple=True,
    help="Owner id (veil owner id) to admit as an administrator at start (repeatable). Without "
    "any administrator, the CAS writes a one-time bootstrap token to DATA/bootstrap-token.",
)
@click.option(
    "--auditor",
    "auditors",
    multiple=True,
    help="Owner id to admit as an auditor at start: reads the whole audit log (repeatable).",
)
@click.option(
    "--open-enrolment",
    is_flag=True,
    help="Anyone who can reach the CAS may enrol an owner key and create sessions in free "
    "namespaces (development only; platforms and other owners' sessions stay closed to them).",
)
@click.option(
    "--join",
    "join_url",
    default=None,
    help="URL of a running replica: obtain the master key from it after attesting (new replicas).",
)
@click.option(
    "--recovery-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Owners' recovery public key (veil cas recovery keygen): keep a copy of the master key "
    "encrypted to it in the database.",
)
@collateral_store_option(
    "the TCB status of TDX and SGX evidence is evaluated with it (runtimes', and a replica's "
    "when one joins); without it runtimes' such evidence is accepted only by sessions that "
    "tolerate no-tcb-check, and a replica's TCB is not evaluated."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Processes serving the API on the same port, each with its own store connection "
    "(one per core is a good start).",
)
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default=None,
    help="sim, hw (this machine's TEE) or auto [default: $VEIL_MODE, else sim].",
)
@click.option(
    "--log-format",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="Log lines as text (for a terminal), or logfmt or JSON for a collector; one line per request.",
)
@click.option(
    "--log-level",
    type=click.Choice(LEVELS),
    default="info",
    show_default=True,
    help="The least severe line logged (debug adds the health and metrics probes).",
)
def serve_command(
    listen: tuple[str, int],
    data: Path,
    db: str | None,
    names: tuple[str, ...],
    admins: tuple[str, ...],
    auditors: tuple[str, ...],
    open_enrolment: bool,
    join_url: str | None,
    recovery_key: Path | None,
    collateral: Path | None,
    workers: int,
    mode: str | None,
    log_format: str,
    log_level: str,
) -> None:
    """Serve the CAS API over HTTPS (TLS 1.3) until SIGINT/SIGTERM.

    The CAS starts closed: only admitted owners may use it. Name the first administrator
    with --admin $(veil owner id), or redeem the one-time token the first start writes to
    DATA/bootstrap-token with `veil cas enrol URL --token-file FILE`. Administrators admit
    owners (`veil cas owner add ID`) and register node platforms.

    The master key that seals every record is never stored in the clear: it is sealed to
    this node's platform identity (DATA/master.sealed). The first start creates it and the
    CAS identity (what clients pin with `veil cas attest`, kept sealed in the database, so
    every replica presents it).

    Replicas: several processes with --db on one PostgreSQL serve the same sessions. A new
    replica starts with --join URL of a running one: it verifies that replica, attests
    itself (same measurement; in sim mode its platform key must be registered with
    `veil cas platform add --key-file DATA/platform.key`, or be the running replica's) and
    receives the master key.

    Recovery: with --recovery-key FILE.pub the database also holds the master key encrypted
    to the owners' recovery key. A node that can neither unseal nor join starts in recovery
    mode until an owner runs `veil cas recovery restore URL --key FILE`.

    Workers: --workers N serves the API from N processes on the same port (one per core),
    each with its own store connection; they stop together, and die with the first.

    --mode hw makes the CAS attest itself with this machine's TEE (no sealing key there:
    every start joins or is recovered); otherwise it runs in sim mode and says so in every
    answer (header Veil-Sim: true).

    Settings: every option is also a VEIL_CAS_* variable and a key of the TOML file named
    by --config (check one with `veil cas config check FILE`); a flag wins over a
    variable, a variable over the file. Logs: one line per request on stderr.
    """
    host, port = listen
    configure_logs(log_format, log_level)
    mode = resolve_mode(mode or os.environ.get("VEIL_MODE", "sim"))
    sim = mode == "sim"
    if sim:
        if log_format == "text":
            sim_banner(NETWORK_SIM_BANNER)
        else:
            log.warning(NETWORK_SIM_BANNER.removeprefix("veil: "))
    for option, values in (("--admin", admins), ("--auditor", auditors)):
        for value in values:
            if not re.fullmatch(r"[0-9a-f]{64}", value):
                raise click.BadParameter(
                    f"'{value}' is not an owner id (64 hex digits, `veil owner id`)", param_hint=option
                )
    if open_enrolment:
        log.warning("open enrolment: anyone who reaches this CAS may enrol as an owner (development only)")
    recovery_public = load_recovery_public_key(recovery_key) if recovery_key is not None else None
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    check_data_dir(data)
    platform_key = PlatformSigningKey.load_or_create(data / "platform.key")
    evidence = evidence_source(mode, platform_key)
    measurement = measure_veil()
    platform_public = platform_key.public_bytes if sim else None

    def open_store() -> RecordStore:
        return SqliteStore(data / "cas.db") if db is None else PostgresStore(db)

    store = open_store()
    custody = Custody(store, data / "master.sealed", PlatformSealer(platform_key) if sim else None)
    hosts = [host, *names, "localhost", "127.0.0.1"]

    def ready(url: str) -> None:
        log.info(f"CAS listening on {url}", extra={"fields": {"url": url, "workers": workers}})
        sys.stderr.flush()
        notify("READY=1")

    try:
        join = (
            None
            if join_url is None
            else lambda: join_replica(join_url, custody, evidence, measurement, sim, collateral)
        )
        obtained = obtain_master_key(custody, data, join)
        master = obtained.master
        if master is None:
            if custody.recovery() is None:
                raise MasterKeyError(
                    "this node cannot unseal the master key and no recovery key was set: start it with "
                    "--join URL of a running replica"
                )
            log.warning("recovery mode: waiting for `veil cas recovery restore URL --key FILE`")
            master = wait_for_recovery(
                RecoveryApp(custody, evidence, measurement, platform_public), host, port, hosts, ready
            )
            if master is None:
                return
        service = Cas(store, master, sim_mode=sim)
        if store.upgraded_from < SCHEMA_VERSION:
            service.audit.append(
                "store.migrated", sim, schema_from=store.upgraded_from, schema_to=SCHEMA_VERSION
            )
            log.info(f"upgraded the store from schema version {store.upgraded_from} to {SCHEMA_VERSION}")
        identity = CasIdentity.load_or_store(service.records, data)
        mark_data_dir(data)
        if obtained.attested_identity is not None:
            check_identity(obtained.attested_identity, identity.digest)
        events = {"joined": "replica.joined", "recovery": "recovery.restore"}
        if obtained.how in events:
            service.audit.append(events[obtained.how], sim, identity=identity.digest)
        if recovery_public is not None and custody.set_recovery(master, recovery_public):
            service.audit.append("recovery.set", sim, public_key=sha256_hex(recovery_public))
        recoverable = custody.recovery() is not None
        if not recoverable:
            log.warning(NO_RECOVERY_KEY)
        how = {"joined": f"received from {join_url}", "recovery": "restored by an owner"}
        log.info(
            f"master key {how.get(obtained.how, obtained.how)}; identity {identity.digest[:16]}…",
            extra={"fields": {"identity": identity.digest}},
        )
        _bootstrap_principals(service, data, admins, auditors)
    finally:
        store.close()  # each serving process opens its own connection (after the fork)
    expiry = {
        "ca": identity.ca.certificate.not_valid_after_utc.timestamp(),
        "server": time.time() + SERVER_VALIDITY.total_seconds(),  # issued at start (server_context)
    }
    me = CasSelf(identity, measurement, evidence, platform_public, recoverable, expiry)

    def build() -> CasApp:
        return CasApp(Cas(open_store(), master, sim_mode=sim, collateral_dir=collateral), me, open_enrolment)

    serve(build, identity.server_context(hosts), host, port, ready, workers)


@cas.group("config")
def config_group() -> None:
    """The configuration file of `veil cas serve` (TOML; docs/operations.md)."""


@config_group.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the effective settings as JSON.")
def config_check(file: Path, as_json: bool) -> None:
    """Check FILE as `veil cas serve --config FILE` would read it: syntax, unknown keys
    (with the nearest known one), values the flags would refuse, each with its line. Then
    print the settings the server would use with the current VEIL_CAS_* variables, and
    where each comes from (environment, file, default). Exit 1 on any problem."""
    problems = check_file(file, serve_command)
    if problems:
        raise ConfigFileError(problems)
    try:
        ctx = serve_command.make_context("veil cas serve", ["--config", str(file)])
    except click.UsageError as exc:
        raise click.ClickException(f"{file}: {exc.format_message()}") from None
    origin = sources(ctx)
    settings = {
        key: {"value": _shown(ctx.params[str(option.name)]), "from": origin[key]}
        for key, option in setting_options(serve_command).items()
    }
    for warning in config_warnings(file, settings):
        note(f"warning: {warning}")
    if as_json:
        emit_json({"file": str(file), "settings": settings})
        return
    click.echo(f"{file}: valid")
    for key, setting in settings.items():
        click.echo(f"  {key} = {json.dumps(setting['value'])}  ({setting['from']})")


def _shown(value: object) -> object:
    """A setting as printed: paths and tuples as JSON values, a database password hidden."""
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], int):  # HOST:PORT
        return f"{value[0]}:{value[1]}"
    if isinstance(value, tuple | list):
        return [_shown(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str) and "://" in value:
        return re.sub(r"://([^:/@]+):[^@/]*@", r"://\1:***@", value)
    return value


def config_warnings(file: Path, settings: dict[str, dict[str, object]]) -> list[str]:
    """What is allowed but unwise: a readable file holding a database password, sim mode,
    open enrolment, no recovery key."""
    warnings = []
    db = settings.get("db", {}).get("value")
    in_file = settings.get("db", {}).get("from") == "file" and isinstance(db, str) and "***@" in db
    if in_file and file.stat().st_mode & 0o077:
        warnings.append(f"{file} holds a database password and others may read it: chmod 600 {file}")
    if settings.get("open-enrolment", {}).get("value") is True:
        warnings.append("open-enrolment: anyone who reaches the CAS may enrol (development only)")
    if settings.get("recovery-key", {}).get("value") is None:
        warnings.append("no recovery-key: a lost node can make every secret unrecoverable")
    return warnings


def _bootstrap_principals(
    service: Cas, data: Path, admins: tuple[str, ...], auditors: tuple[str, ...]
) -> None:
    """Admit --admin and --auditor; with no administrator at all, write a one-time token
    that makes its redeemer one (DATA/bootstrap-token, 0600); remove a used one."""
    principals = service.principals
    principals.admit_at_start(admins, Role.ADMIN, "veil cas serve --admin")
    principals.admit_at_start(auditors, Role.AUDITOR, "veil cas serve --auditor")
    token_file = data / "bootstrap-token"
    token = principals.issue_bootstrap_token()
    if token is not None:
        replace_private_file(token_file, (token + "\n").encode())
    if principals.administrators():
        token_file.unlink(missing_ok=True)
        return
    if token_file.exists():
        log.warning(
            f"no administrator yet: the first one runs `veil cas enrol URL --token-file {token_file}` "
            "(one use), or restart with --admin OWNER_ID"
        )
    else:
        log.warning(
            "no administrator yet, and the bootstrap token was written on another node: restart with --admin"
        )


def _store_location(config: Path | None, data: Path | None, db: str | None) -> tuple[Path, str | None]:
    """The data directory and database of `veil cas serve`: flags, else VEIL_CAS_DATA and
    VEIL_CAS_DB, else the configuration file the server reads."""
    data = data or (Path(os.environ["VEIL_CAS_DATA"]) if os.environ.get("VEIL_CAS_DATA") else None)
    db = db or os.environ.get("VEIL_CAS_DB") or None
    if config is not None:
        values, problems = read_settings(config, serve_command)
        if problems:
            raise ConfigFileError(problems)
        data = data or (Path(values["data"]) if values.get("data") else None)
        db = db or values.get("db")
    if data is None:
        raise click.UsageError("name the CAS's data directory: --data DIR or --config FILE")
    return data, db


_STORE_OPTIONS = [
    click.option(
        "--config",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        envvar="VEIL_CAS_CONFIG",
        help="The `veil cas serve` configuration file: its data and db say where the store is.",
    ),
    click.option(
        "--data",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="The CAS's data directory [default: $VEIL_CAS_DATA, or from --config].",
    ),
    click.option(
        "--db",
        default=None,
        help="postgresql://... when the records are in PostgreSQL [default: $VEIL_CAS_DB].",
    ),
]


def _store_options(command: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(_STORE_OPTIONS):
        command = option(command)
    return command


@cas.command("backup")
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The backup file (0600).",
)
@_store_options
@click.option(
    "--recovery-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Encrypt to this recovery public key [default: the one the CAS holds].",
)
@click.option("--json", "as_json", is_flag=True, help="Print what the backup holds as JSON.")
def backup_command(
    out: Path,
    config: Path | None,
    data: Path | None,
    db: str | None,
    recovery_key: Path | None,
    as_json: bool,
) -> None:
    """Write a consistent copy of the CAS's records and audit log to OUT, encrypted to the
    owners' recovery key; the CAS may keep serving meanwhile.

    Run it on a CAS node (it reads the store directly: the SQLite file in the data
    directory, or PostgreSQL). The records stay sealed with the master key, and the
    recovery key opens both the file and the master key: keep the recovery private key
    offline and the backup anywhere. Restore with `veil cas restore`.
    """
    data, db = _store_location(config, data, db)
    if out.exists():
        raise click.UsageError(f"{out} exists; choose another name (a backup never overwrites one)")
    check_data_dir(data)
    public = load_recovery_public_key(recovery_key) if recovery_key is not None else None
    store = SqliteStore(data / "cas.db") if db is None else PostgresStore(db)
    try:
        blob, summary = create_backup(store, public)
    finally:
        store.close()
    replace_private_file(out, blob)
    if as_json:
        emit_json({"file": str(out), "bytes": len(blob), **summary.to_json()})
        return
    click.echo(
        f"wrote {out} ({len(blob)} bytes): {summary.records} records, {summary.audit_entries} audit "
        f"entries (chain verified), master key {summary.master_id[:16]}…, encrypted to recovery key "
        f"{summary.recovery_key[:16]}…"
    )


@cas.command("restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--key",
    "key_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The recovery private key the backup is encrypted to.",
)
@_store_options
@click.option("--json", "as_json", is_flag=True, help="Print what was restored as JSON.")
def restore_command(
    file: Path, key_file: Path, config: Path | None, data: Path | None, db: str | None, as_json: bool
) -> None:
    """Restore a backup of `veil cas backup` into a new, empty store: a data directory
    without cas.db, or an empty PostgreSQL database.

    The restored CAS keeps its identity (clients' pins hold), its sessions, secrets and
    volume tags as of the backup, and its audit chain. A node that cannot unseal the
    master key (a new node) starts in recovery mode: then run
    `veil cas recovery restore URL --key FILE`, which checks the CAS's evidence before
    handing it the key. Restoring an older backup rolls the CAS back: see
    docs/operations.md, "Backups", for what that means for volumes.
    """
    data, db = _store_location(config, data, db)
    snapshot, summary = open_backup(file.read_bytes(), load_recovery_private_key(key_file))
    if db is None and (data / "cas.db").exists():
        raise click.ClickException(f"{data / 'cas.db'} exists: restore into a new data directory")
    check_data_dir(data)
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = SqliteStore(data / "cas.db") if db is None else PostgresStore(db)
    try:
        store.load(snapshot)
    finally:
        store.close()
    mark_data_dir(data)
    if not (data / "master.sealed").exists():
        note(
            "this node holds no sealed master key: `veil cas serve` will wait in recovery mode for "
            "`veil cas recovery restore URL --key FILE`"
        )
    if as_json:
        emit_json({"file": str(file), **summary.to_json()})
        return
    click.echo(
        f"restored {summary.records} records and {summary.audit_entries} audit entries (chain verified) "
        f"from a backup of {summary.created}; master key {summary.master_id[:16]}…"
    )


@cas.group("recovery")
def recovery() -> None:
    """The owners' recovery key: restores the master key when every replica is lost."""


@recovery.command("keygen")
@click.option(
    "-o", "--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Private key file."
)
def recovery_keygen(out: Path) -> None:
    """Create a recovery key pair: OUT (private, 0600: keep it offline) and OUT.pub (give it
    to `veil cas serve --recovery-key`)."""
    public = generate_recovery_key(out)
    note(f"private key {out} (keep it offline); public key {public}")
    click.echo(str(public))


@recovery.command("restore")
@click.argument("url")
@click.option(
    "--key",
    "key_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The recovery private key (veil cas recovery keygen).",
)
@cas_measurement_option
@cas_tolerate_option
def recovery_restore(url: str, key_file: Path, measurement: str | None, tolerate: tuple[str, ...]) -> None:
    """Restore the master key to the CAS in recovery mode at URL.

    The CAS's evidence must bind a fresh nonce and the key the master key is sent to; the
    recovery copy is opened here, with KEY, never on the CAS host.
    """
    master_id = restore(normalize_url(url), key_file, tolerate, measurement)
    note(f"restored master key {master_id[:16]}…; the CAS now serves")


@cas.command("ca")
@click.argument("url", required=False)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the certificate here (what VEIL_CAS_CA names) instead of printing it.",
)
def ca_command(url: str | None, output: Path | None) -> None:
    """Print the CA certificate pinned for the CAS at URL (default: $VEIL_CAS_ADDR or the
    first pinned CAS), as `veil cas attest` verified it: what a runtime's VEIL_CAS_CA file
    must hold. Nothing is fetched from the network."""
    config = ClientConfig.load()
    pem = config.pin(config.resolve_url(url)).ca_certificate
    if output is None:
        click.echo(pem, nl=not pem.endswith("\n"))
        return
    output.write_text(pem)
    note(f"wrote {output}")


@cas.command("attest")
@click.argument("url")
@cas_measurement_option
@cas_tolerate_option
@collateral_store_option(
    "a TDX or SGX CAS's TCB status is evaluated with it (and refused as the tolerances say); "
    "without it, it is not evaluated, and the output says so."
)
@click.option("--json", "as_json", is_flag=True, help="Print the pinned identity as JSON.")
def attest_command(
    url: str, measurement: str | None, tolerate: tuple[str, ...], collateral: Path | None, as_json: bool
) -> None:
    """Verify the CAS at URL by its own evidence and pin its identity.

    Later commands and runtimes talk to URL only if it presents the pinned key. The first
    pinned CAS becomes the default (--cas may then be left out).
    """
    url = normalize_url(url)
    pin = attest_cas(url, tolerate, measurement, collateral)
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
        emit_json(
            {
                "url": url,
                "identity": pin.identity,
                "measurement": pin.measurement,
                "sim": pin.sim,
                "tcb_status": pin.tcb_status,
            }
        )
    else:
        tcb = f", Intel TCB {pin.tcb_status}" if pin.tcb_status else ""
        click.echo(f"pinned {url}: identity {pin.identity}, measurement {pin.measurement}{tcb}")


@cas.group("platform")
def platform() -> None:
    """Node platforms whose sim evidence the CAS accepts (administrators register them;
    a session accepts those it names under security.sim_platforms)."""


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
@click.option("--name", default="", help="A label for the node, shown by `veil cas platform list`.")
def platform_add(
    url: str | None, cas_url: str | None, las_address: str | None, key_file: Path | None, name: str
) -> None:
    """Register a node's sim platform key with the CAS at URL (administrators; audited).

    Prints the platform id: sessions that should accept this node's sim evidence list it
    under security.sim_platforms. URL (or --cas) defaults to $VEIL_CAS_ADDR or the pinned
    default CAS.
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
    platform_id = OwnerClient(target, config).register_platform(public_key, name)
    note(f"registered sim platform {platform_id} with {target}")
    click.echo(platform_id)


@platform.command("list")
@cas_url_option
@click.option("--json", "as_json", is_flag=True, help="Print the platforms as JSON.")
def platform_list(cas_url: str | None, as_json: bool) -> None:
    """The registered platforms (owners may list them, to name them in sessions)."""
    rows = owner_client(cas_url).list_platforms()
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        click.echo(
            f"{row['platform_id']}  {row['kind']}  {row.get('name') or '-'}  by {str(row['by'])[:16]}…"
        )


@platform.command("remove")
@click.argument("platform_id")
@cas_url_option
def platform_remove(platform_id: str, cas_url: str | None) -> None:
    """Forget a registered platform: its evidence is refused from now on (administrators)."""
    owner_client(cas_url).remove_platform(platform_id)
    note(f"removed platform {platform_id}")


@cas.command("enrol")
@click.argument("url", required=False)
@cas_url_option
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The one-time bootstrap token a new CAS wrote to DATA/bootstrap-token: makes you its "
    "first administrator.",
)
@click.option("--json", "as_json", is_flag=True, help="Print your owner id and roles as JSON.")
def enrol_command(url: str | None, cas_url: str | None, token_file: Path | None, as_json: bool) -> None:
    """Obtain your owner certificate from the CAS at URL and show your roles.

    The CAS issues it only to admitted owners (ask an administrator to run `veil cas owner
    add` with your `veil owner id`), to the holder of the bootstrap token, or to anyone
    when it runs with --open-enrolment. Other commands enrol on first use by themselves.
    """
    config = ClientConfig.load()
    target = config.resolve_url(url or cas_url)
    token = token_file.read_text().strip() if token_file is not None else None
    _, roles = enrol(target, config, token)
    owner = config.owner_id()
    if as_json:
        emit_json({"url": target, "owner": owner, "roles": roles})
    else:
        click.echo(f"enrolled with {target} as owner {owner}: {', '.join(roles) or 'no role'}")


@cas.group("owner")
def owner_group() -> None:
    """Principals of the CAS: who may use it, with which role (administrators)."""


_ROLE_OPTION = click.option(
    "--role",
    "roles",
    type=click.Choice(ROLES),
    multiple=True,
    help="admin (manages the CAS), owner (sessions) or auditor (the whole audit log); repeatable.",
)


@owner_group.command("add")
@click.argument("owner_id")
@_ROLE_OPTION
@cas_url_option
def owner_add(owner_id: str, roles: tuple[str, ...], cas_url: str | None) -> None:
    """Admit OWNER_ID (their `veil owner id`) with --role (default: owner), keeping the
    roles it has."""
    client = owner_client(cas_url)
    current = next((o for o in client.list_owners() if o["owner"] == owner_id), None)
    wanted = sorted({*(current["roles"] if current else []), *(roles or ("owner",))})
    result = client.set_owner_roles(owner_id, wanted)
    click.echo(f"{result['owner']}: {', '.join(result['roles'])}")


@owner_group.command("remove")
@click.argument("owner_id")
@_ROLE_OPTION
@cas_url_option
def owner_remove(owner_id: str, roles: tuple[str, ...], cas_url: str | None) -> None:
    """Take --role from OWNER_ID, or without --role remove it entirely: its certificate no
    longer opens anything. The last administrator cannot be removed."""
    client = owner_client(cas_url)
    current = next((o for o in client.list_owners() if o["owner"] == owner_id), None)
    if current is None:
        raise click.ClickException(f"owner {owner_id} is not admitted")
    left = sorted(set(current["roles"]) - set(roles)) if roles else []
    if left:
        result = client.set_owner_roles(owner_id, left)
        click.echo(f"{result['owner']}: {', '.join(result['roles'])}")
    else:
        client.remove_owner(owner_id)
        click.echo(f"{owner_id}: removed")


@owner_group.command("list")
@cas_url_option
@click.option("--json", "as_json", is_flag=True, help="Print the principals as JSON.")
def owner_list(cas_url: str | None, as_json: bool) -> None:
    """Every admitted owner id with its roles."""
    rows = owner_client(cas_url).list_owners()
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        click.echo(f"{row['owner']}  {','.join(row['roles'])}  by {str(row['by'])[:24]}")
