"""`veil evidence verify`: check hardware evidence the way the CAS does, offline."""

import binascii
import datetime as dt
import re
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from veil.cli.output import emit_json
from veil.crypto.files import load_private_ec_key_file
from veil.crypto.x509ca import spki_sha256
from veil.errors import VeilError
from veil.tee.azure import td_quote_of
from veil.tee.claims import EvidenceError
from veil.tee.ear import ResultSigner
from veil.tee.intel import Collateral, Quote
from veil.tee.intel.collateral_store import find_collateral
from veil.tee.intel.pck import PckExtensions
from veil.tee.snp import SnpProduct
from veil.tee.verdict import (
    EVIDENCE_PLATFORMS,
    NO_RIM_CHECK,
    NO_TCB_CHECK,
    UNCERTIFIED_AK,
    Appraisal,
    appraise,
)

CLI_TOLERANCES = (
    "debug-mode",
    "outdated-tcb",
    "sw-hardening-needed",
    "configuration-needed",
    NO_TCB_CHECK,
    UNCERTIFIED_AK,
    NO_RIM_CHECK,
)


def read_binary(path: Path) -> bytes:
    """Evidence as raw bytes, or as hex text as some tools save it: an optional ``0x``,
    digits in either case, line breaks and spaces anywhere. Bytes that are not ASCII make
    it binary."""
    data = path.read_bytes()
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return data
    compact = re.sub(r"\s+", "", text)
    compact = compact[2:] if compact[:2].lower() == "0x" else compact
    if not compact or not re.fullmatch(r"[0-9a-fA-F]+", compact):
        return data
    if len(compact) % 2:
        raise click.BadParameter(
            f"{path} looks like hex text with an odd number of digits", param_hint="FILE"
        )
    return binascii.unhexlify(compact)


def parse_nonce(value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        nonce = bytes.fromhex(value.removeprefix("0x"))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not hex", param_hint="--nonce") from None
    if not nonce:
        raise click.BadParameter("an empty nonce proves nothing", param_hint="--nonce")
    return nonce


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


def _signer(path: Path) -> ResultSigner:
    key = load_private_ec_key_file(path)
    if not isinstance(key.curve, ec.SECP256R1):
        raise click.BadParameter(
            f"{path} holds a {key.curve.name} key; an EAR is signed ES256 (P-256)", param_hint="--ear"
        )
    return ResultSigner(key, spki_sha256(key.public_key()))


def _intel_quote(platform: str, data: bytes, td_quote: Path | None) -> bytes | None:
    """The Intel quote whose FMSPC picks the collateral, if the evidence has one."""
    if platform in ("tdx", "sgx"):
        return data
    if platform == "azure-tdx-vtpm":
        return td_quote.read_bytes() if td_quote else td_quote_of(data)
    return None


@click.group()
def evidence() -> None:
    """Verify attestation evidence from real hardware."""


@evidence.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--platform",
    type=click.Choice(EVIDENCE_PLATFORMS),
    required=True,
    help="What produced FILE (tpm: a JSON document with ak_public and tpm_quote).",
)
@click.option(
    "--cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="SEV-SNP: the VCEK or VLEK certificate (DER or PEM; Azure: the first of a PEM bundle). "
    "NVIDIA GPU: the device certificate chain (PEM, leaf first).",
)
@click.option(
    "--collateral",
    type=click.Path(exists=True, path_type=Path),
    help="Intel: a collateral directory, a LAS cache, or a dcap-qvl JSON bundle. Without it the "
    "TCB status cannot be evaluated, and the quote is refused unless --no-tcb-check.",
)
@click.option(
    "--no-tcb-check",
    is_flag=True,
    help="Intel: accept a quote without evaluating its TCB status (no collateral); the platform "
    "may be out of date or revoked. The same as --tolerate no-tcb-check.",
)
@click.option(
    "--event-log",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TDX: a CCEL event log to replay against the RTMRs.",
)
@click.option(
    "--hcl-report",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Azure: the HCL report, when FILE is only the vTPM quote.",
)
@click.option(
    "--td-quote",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Azure TDX: the TD quote, when FILE does not carry it.",
)
@click.option(
    "--rim",
    "rims",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="NVIDIA GPU: a reference integrity manifest (signed SWID tag) to compare the "
    "measurements with; give the VBIOS and the driver RIM of the report's versions. Without "
    "them the measurements are not compared (tolerance no-rim-check).",
)
@click.option(
    "--product",
    type=click.Choice([p.value for p in SnpProduct]),
    help="SEV-SNP: the product generation, when the report does not say.",
)
@click.option(
    "--nonce",
    metavar="HEX",
    help="The evidence's report data (TPM: extraData) must be this nonce, or it followed by zero bytes.",
)
@click.option("--at", "at", metavar="RFC3339", help="Verify as of this time (default: now).")
@click.option(
    "--tolerate", multiple=True, type=click.Choice(CLI_TOLERANCES), help="Accept this condition (repeatable)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option(
    "--ear",
    "ear_key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Print an attestation result (EAR, a JWT) signed ES256 with this P-256 key (PEM, 0600) "
    "instead of the report: for a relying party (docs/attestation.md, 'Attestation results').",
)
def verify(
    file: Path,
    platform: str,
    cert: Path | None,
    collateral: Path | None,
    event_log: Path | None,
    hcl_report: Path | None,
    td_quote: Path | None,
    rims: tuple[Path, ...],
    product: str | None,
    nonce: str | None,
    at: str | None,
    tolerate: tuple[str, ...],
    no_tcb_check: bool,
    as_json: bool,
    ear_key: Path | None,
) -> None:
    """Verify FILE: signatures, certificate chain to the vendor root, TCB status.

    Exit 0 when FILE verifies and is acceptable under the tolerances given, 1 otherwise
    (with the reason), 2 on usage errors. With --json, `accepted` is that decision;
    `signature_valid` and `chain_valid` say only that the evidence is authentic (a debug
    TD has valid signatures and is not accepted). SMT is reported, not judged: sessions
    decide about it.
    """
    azure = platform.startswith("azure-")
    if platform == "sev-snp" and cert is None:
        raise click.UsageError("SEV-SNP evidence needs --cert VCEK_OR_VLEK")
    if platform == "nvidia-gpu" and cert is None:
        raise click.UsageError("NVIDIA GPU evidence needs --cert CHAIN.pem (the device certificate chain)")
    if rims and platform != "nvidia-gpu":
        raise click.UsageError("--rim applies to --platform nvidia-gpu only")
    when = parse_time(at)
    expected = parse_nonce(nonce)
    data = file.read_bytes() if platform == "tpm" or azure else read_binary(file)
    try:
        quote = _intel_quote(platform, data, td_quote)
        found = _collateral_for(collateral, quote) if collateral is not None and quote is not None else None
    except (EvidenceError, VeilError) as exc:
        _report(Appraisal(platform, False, str(exc), None), as_json)
        raise SystemExit(1) from None
    appraisal = appraise(
        platform,
        data,
        (*tolerate, NO_TCB_CHECK) if no_tcb_check else tolerate,
        endorsement_key=cert.read_bytes() if cert else None,
        collateral=found,
        at=when,
        product=SnpProduct(product) if product else None,
        event_log=event_log.read_bytes() if event_log else None,
        nonce=expected,
        hcl_report=hcl_report.read_bytes() if hcl_report else None,
        td_quote=td_quote.read_bytes() if td_quote else None,
        rims=[rim.read_bytes() for rim in rims],
    )
    if ear_key is not None:
        tolerated = sorted({*tolerate, *((NO_TCB_CHECK,) if no_tcb_check else ())})
        click.echo(_signer(ear_key).issue_appraisal(appraisal, tolerated, expected))
    else:
        _report(appraisal, as_json)
    if not appraisal.accepted:
        raise SystemExit(1)


def _report(appraisal: Appraisal, as_json: bool) -> None:
    if as_json:
        emit_json(appraisal.to_json())
        return
    verdict = appraisal.verdict
    if verdict is None:
        raise EvidenceError(f"not verified: {appraisal.reason}")
    claims = verdict.claims
    checked = (
        "signature valid (no certificate chain: the key is taken from the evidence)"
        if verdict.platform == "tpm"
        else "signatures and certificate chain valid"
    )
    click.echo(f"authentic: {verdict.platform} evidence, {checked}")
    for key in (
        "product",
        "signing_key",
        "measurement",
        "mr_enclave",
        "mr_signer",
        "mr_td",
        "mr_seam",
        "fmspc",
        "pcr_digest",
        "ak_fingerprint",
        "driver_version",
        "vbios_version",
        "fwid",
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
    click.echo(f"refused: {appraisal.reason}" if appraisal.reason else "accepted")
