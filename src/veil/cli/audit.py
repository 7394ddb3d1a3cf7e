"""`veil audit ...`: read and verify the audit log of the embedded or a network CAS."""

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import click
from cryptography.hazmat.primitives.asymmetric import ec

from veil.cas.audit import verify_export, verify_filtered_export
from veil.cli.options import cas_url_option
from veil.cli.output import emit_json
from veil.cli.run import default_home, home_option
from veil.client.config import ClientConfig
from veil.client.http import OwnerClient
from veil.crypto.certs import load_pem_chain, verify_ecdsa
from veil.runtime.run import EmbeddedHome


@click.group()
def audit() -> None:
    """Read and verify the CAS audit log."""


def _pinned_signature_check(cas_url: str | None) -> tuple[str, Callable[[bytes, bytes], bool]]:
    config = ClientConfig.load()
    url = config.resolve_url(cas_url)
    key = load_pem_chain(config.pin(url).ca_certificate.encode())[0].public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise click.ClickException(f"the pinned identity of {url} is not an ECDSA key")
    return url, lambda message, signature: verify_ecdsa(key, signature, message, "sha256")


@audit.command()
@home_option
@cas_url_option
@click.option(
    "--file",
    "export_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Verify an exported log (veil audit export) against the pinned CAS identity.",
)
@click.option("--network", is_flag=True, help="Verify the log of the network CAS (--cas or the default).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(
    home: Path | None, cas_url: str | None, export_file: Path | None, network: bool, as_json: bool
) -> None:
    """Check that no audit entry was edited, reordered or removed (exit 1 if one was).

    Without --cas/--network/--file: the embedded CAS under --home. With them: a network
    CAS's export (fetched, or read from --file), whose head must be signed by the pinned
    CAS identity key. Administrators and auditors get the whole log; an owner gets the
    entries of the sessions it may read, each checked on its own (a filtered view cannot
    show that no entry between them is missing: an auditor's export can).
    """
    if cas_url is not None or network or export_file is not None:
        url, signature_valid = _pinned_signature_check(cas_url)
        if export_file is not None:
            document = json.loads(export_file.read_text())
        else:
            document = OwnerClient(url, ClientConfig.load()).audit_export()
        if document.get("scope") == "filtered":
            shown, total = verify_filtered_export(document, signature_valid)
            if as_json:
                emit_json({"verified": True, "scope": "filtered", "entries": shown, "of": total})
            else:
                click.echo(
                    f"audit entries intact: {shown} of {total} (those of your sessions; the log's "
                    "completeness needs an auditor's export)"
                )
            return
        count = verify_export(document, signature_valid)
    else:
        cas, _ = _existing(home).open()
        try:
            count = cas.audit.verify()
        finally:
            cas.close()
    if as_json:
        emit_json({"verified": True, "scope": "full", "entries": count})
    else:
        click.echo(f"audit log intact: {count} entries")


def _existing(home: Path | None) -> EmbeddedHome:
    """The embedded CAS whose log is asked for: one that exists (reading a log never
    creates a CAS, with a master key, in the wrong directory)."""
    found = EmbeddedHome(home or default_home())
    if not found.cas_dir.is_dir():
        raise click.ClickException(
            f"no embedded CAS at {found.root} (give --home or VEIL_HOME; `veil run --policy` creates one)"
        )
    return found


@audit.command()
@cas_url_option
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None, help="File [stdout]."
)
def export(cas_url: str | None, output: Path | None) -> None:
    """Export a network CAS's audit log with its signed head (JSON), for offline checks."""
    config = ClientConfig.load()
    document = OwnerClient(config.resolve_url(cas_url), config).audit_export()
    text = json.dumps(document, indent=1)
    if output is None:
        click.echo(text)
    else:
        output.write_text(text + "\n")
        click.echo(f"veil: wrote {len(document['entries'])} entries to {output}", err=True)


@audit.command()
@home_option
@click.option("--json", "as_json", is_flag=True, help="Print the entries as JSON.")
def show(home: Path | None, as_json: bool) -> None:
    """Print the audit log, oldest first."""
    cas, _ = _existing(home).open()
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
