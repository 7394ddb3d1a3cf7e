"""`veil evidence verify`: check hardware evidence the way the CAS does, offline."""

import binascii
import datetime as dt
import re
from pathlib import Path

import click
from cryptography import x509

from veil.cli.output import emit_json
from veil.errors import VeilError
from veil.tee.claims import EvidenceError
from veil.tee.intel import Collateral, Quote
from veil.tee.intel.collateral_store import find_collateral
from veil.tee.intel.pck import PckExtensions
from veil.tee.snp import SnpProduct
from veil.tee.verdict import HARDWARE_PLATFORMS, HardwareVerdict, refusal, verify_hardware_evidence

CLI_TOLERANCES = ("debug-mode", "outdated-tcb", "sw-hardening-needed", "configuration-needed")


def read_binary(path: Path) -> bytes:
    """Evidence as raw bytes, or as hex text (as some tools save reports)."""
    data = path.read_bytes()
    text = data.strip()
    if text and len(text) % 2 == 0 and re.fullmatch(rb"[0-9a-fA-F]+", text):
        return binascii.unhexlify(text)
    return data


def parse_time(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not an RFC 3339 time", param_hint="--at") from None
    if parsed.tzinfo is None:
        raise click.BadParameter("give a time zone, e.g. 2025-07-01T00:00:00Z", param_hint="--at")
    return parsed


def _collateral_for(location: Path, evidence: bytes) -> Collateral:
    quote = Quote.from_bytes(evidence)
    leaf = x509.load_pem_x509_certificates(quote.signature.pck_chain_pem)[0]
    fmspc = PckExtensions.from_certificate(leaf).fmspc
    return find_collateral(location, "tdx" if quote.is_tdx else "sgx", fmspc)


@click.group()
def evidence() -> None:
    """Verify attestation evidence from real hardware."""


@evidence.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--platform", type=click.Choice(HARDWARE_PLATFORMS), required=True, help="What produced FILE.")
@click.option(
    "--cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="SEV-SNP: the VCEK or VLEK certificate (DER or PEM).",
)
@click.option(
    "--collateral",
    type=click.Path(exists=True, path_type=Path),
    help="Intel: a collateral directory, a LAS cache, or a dcap-qvl JSON bundle. Without it, "
    "the TCB status is not evaluated.",
)
@click.option(
    "--event-log",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TDX: a CCEL event log to replay against the RTMRs.",
)
@click.option(
    "--product",
    type=click.Choice([p.value for p in SnpProduct]),
    help="SEV-SNP: the product generation, when the report does not say.",
)
@click.option("--at", "at", metavar="RFC3339", help="Verify as of this time (default: now).")
@click.option(
    "--tolerate", multiple=True, type=click.Choice(CLI_TOLERANCES), help="Accept this condition (repeatable)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(
    file: Path,
    platform: str,
    cert: Path | None,
    collateral: Path | None,
    event_log: Path | None,
    product: str | None,
    at: str | None,
    tolerate: tuple[str, ...],
    as_json: bool,
) -> None:
    """Verify FILE: signatures, certificate chain to the vendor root, TCB status.

    Exit 0 when FILE verifies and its status is acceptable under the tolerances given,
    1 otherwise (with the reason), 2 on usage errors. SMT is reported, not judged: sessions
    decide about it.
    """
    if platform == "sev-snp" and cert is None:
        raise click.UsageError("SEV-SNP evidence needs --cert VCEK_OR_VLEK")
    when = parse_time(at)
    data = read_binary(file)
    try:
        found = (
            _collateral_for(collateral, data) if collateral is not None and platform != "sev-snp" else None
        )
        verdict = verify_hardware_evidence(
            platform,
            data,
            endorsement_key=cert.read_bytes() if cert else None,
            collateral=found,
            at=when,
            product=SnpProduct(product) if product else None,
            event_log=event_log.read_bytes() if event_log else None,
        )
    except (EvidenceError, VeilError) as exc:
        if as_json:
            emit_json({"verified": False, "platform": platform, "reason": str(exc)})
            raise SystemExit(1) from None
        raise EvidenceError(f"not verified: {exc}") from None
    reason = refusal(verdict, tolerate)
    _report(verdict, reason, as_json)
    if reason:
        raise SystemExit(1)


def _report(verdict: HardwareVerdict, reason: str | None, as_json: bool) -> None:
    if as_json:
        emit_json(verdict.to_json() | ({"reason": reason} if reason else {}))
        return
    claims = verdict.claims
    click.echo(f"verified: {verdict.platform} evidence, signatures and certificate chain valid")
    for key in (
        "product",
        "signing_key",
        "measurement",
        "mr_enclave",
        "mr_signer",
        "mr_td",
        "mr_seam",
        "fmspc",
    ):
        if key in claims:
            click.echo(f"  {key}: {claims[key]}")
    click.echo(f"  report_data: {verdict.report_data.hex()}")
    smt = {True: "enabled", False: "disabled", None: "unknown"}[verdict.smt]
    click.echo(f"  debug: {'yes' if verdict.debug else 'no'}  smt: {smt}")
    click.echo(
        f"  status: {verdict.status or 'not evaluated'}"
        + (f"  advisories: {', '.join(verdict.advisories)}" if verdict.advisories else "")
    )
    for note in verdict.notes:
        click.echo(f"  note: {note}")
    click.echo(f"refused: {reason}" if reason else "accepted")
