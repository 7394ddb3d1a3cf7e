"""Verifying an Intel DCAP quote (SGX or TDX) offline, at a given time.

Order: quote structure; PCK chain to the pinned Intel SGX Root CA; QE report signature by
the PCK key; QE binding of the attestation key; quote signature; then, with collateral:
signatures and validity windows of TCB info, QE identity and CRLs, revocation, FMSPC and
PCE-ID, QE identity, platform TCB level, TDX module. Each failure raises
``QuoteVerificationError`` (or a subclass) naming the check.
"""

import datetime as dt
import functools
import itertools
import re
from dataclasses import dataclass
from importlib import resources

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from veil.crypto import SignatureInvalid, constant_time_equal, sha256
from veil.crypto.certs import (
    MalformedCertificate,
    check_valid_at,
    common_name,
    fingerprint,
    load_pem_chain,
    p256_key_from_xy,
    raw_ecdsa_to_der,
    verify_ecdsa,
    verify_issued_by,
)
from veil.tee.claims import EvidenceError
from veil.tee.intel.collateral import Collateral, SignedCollateral
from veil.tee.intel.pck import PckExtensions
from veil.tee.intel.quote import INTEL_QE_VENDOR_ID, Quote, TdReportBody
from veil.tee.intel.tcb import (
    TcbEvaluationError,
    TcbResult,
    merge,
    parse_time,
    platform_level,
    qe_identity_level,
    tdx_module_level,
)

INTEL_ROOT_FINGERPRINT = "44A0196B2B99F889B8E149E95B807A350E7424964399E885A7CBB8CCFAB674D3"


class QuoteVerificationError(EvidenceError):
    """An Intel quote or its collateral does not verify."""


@functools.cache
def intel_root() -> x509.Certificate:
    der = (resources.files("veil.tee.intel") / "intel_sgx_root_ca.der").read_bytes()
    cert = x509.load_der_x509_certificate(der)
    if fingerprint(cert) != INTEL_ROOT_FINGERPRINT:
        raise QuoteVerificationError("the built-in Intel SGX Root CA does not match its pin")
    return cert


@dataclass(frozen=True)
class IntelVerified:
    quote: Quote
    pck: PckExtensions
    pck_chain: tuple[x509.Certificate, ...]
    #: None when no collateral was given (signatures and chain only).
    tcb: TcbResult | None
    platform_tcb: TcbResult | None
    qe_tcb: TcbResult | None
    module_tcb: TcbResult | None


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _check_chain_to_root(chain: tuple[x509.Certificate, ...], at: dt.datetime, what: str) -> None:
    """``chain`` is leaf first and ends at the trusted root (or omits it)."""
    for cert in _chain_signatures(chain, what):
        problem = check_valid_at(cert, at)
        if problem:
            raise QuoteVerificationError(f"{what}: {problem}")


@functools.lru_cache(maxsize=1024)
def _chain_signatures(chain: tuple[x509.Certificate, ...], what: str) -> tuple[x509.Certificate, ...]:
    """The chain's signatures up to the pinned root (bytes only, so remembered); returns the
    certificates whose validity windows apply."""
    root = intel_root()
    certs = list(chain)
    if certs and _der(certs[-1]) != _der(root):
        if certs[-1].subject == root.subject or len(certs) > 1:
            raise QuoteVerificationError(f"{what}: the root certificate is not the trusted Intel SGX Root CA")
    else:
        certs = certs[:-1]
    certs.append(root)
    try:
        for child, parent in itertools.pairwise(certs):
            verify_issued_by(child, parent)
    except SignatureInvalid as exc:
        raise QuoteVerificationError(f"{what}: {exc}") from None
    return tuple(certs)


@functools.lru_cache(maxsize=1024)
def _load_pck_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    return load_pem_chain(pem, "a PCK chain certificate")


@functools.lru_cache(maxsize=1024)
def pck_extensions(leaf: x509.Certificate) -> PckExtensions:
    """The SGX extension of a PCK certificate (a pure function of it, so remembered)."""
    return PckExtensions.from_certificate(leaf)


_PEM_CHAIN = re.compile(
    rb"\s*(?:-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+-----END CERTIFICATE-----\s*)+\x00?"
)


def _pck_chain(quote: Quote, at: dt.datetime) -> tuple[x509.Certificate, ...]:
    # Only PEM certificates, whitespace between them, and an optional C-string terminator:
    # anything else in the certification data is not what the QE produced.
    if not _PEM_CHAIN.fullmatch(quote.signature.pck_chain_pem):
        raise QuoteVerificationError(
            "PCK chain invalid: the certification data is not a PEM certificate chain"
        )
    try:
        chain = _load_pck_chain(quote.signature.pck_chain_pem)
    except MalformedCertificate as exc:
        raise QuoteVerificationError(f"PCK chain invalid: {exc}") from None
    if len(chain) != 3:
        raise QuoteVerificationError(
            f"PCK chain invalid: expected leaf, intermediate and root, got {len(chain)}"
        )
    if _der(chain[2]) != _der(intel_root()):
        raise QuoteVerificationError(
            "PCK chain invalid: the root certificate is not the trusted Intel SGX Root CA"
        )
    if common_name(chain[1].subject) not in ("Intel SGX PCK Platform CA", "Intel SGX PCK Processor CA"):
        raise QuoteVerificationError(
            f"PCK chain invalid: unexpected intermediate '{common_name(chain[1].subject)}'"
        )
    _check_chain_to_root(chain, at, "PCK chain invalid")
    return chain


def _verify_raw(key: ec.EllipticCurvePublicKey, signature: bytes, data: bytes) -> bool:
    return verify_ecdsa(key, raw_ecdsa_to_der(signature[:32], signature[32:64], "big"), data, "sha256")


#: the subject CN of the certificate that signs TCB info and QE identity
TCB_SIGNING_CN = "Intel SGX TCB Signing"


def _verify_signed_collateral(item: SignedCollateral, at: dt.datetime, what: str) -> dict[str, object]:
    if not item.issuer_chain:
        raise QuoteVerificationError(f"{what}: no issuer chain")
    _check_chain_to_root(item.issuer_chain, at, f"{what} issuer chain")
    signer = item.issuer_chain[0]
    # By role, as Intel's verifier does: any certificate under the Intel root (a PCK
    # Platform CA, say) must not be able to vouch for a TCB level.
    if common_name(signer.subject) != TCB_SIGNING_CN:
        raise QuoteVerificationError(
            f"{what} is signed by '{common_name(signer.subject)}', not by the {TCB_SIGNING_CN} certificate"
        )
    key = signer.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not _verify_raw(key, item.signature, item.body):
        raise QuoteVerificationError(
            f"{what} signature does not verify under '{common_name(signer.subject)}'"
        )
    parsed = item.parsed()
    _check_window(parsed.get("issueDate"), parsed.get("nextUpdate"), at, what)
    return parsed


def _check_window(issued: object, next_update: object, at: dt.datetime, what: str) -> None:
    if not isinstance(issued, str) or not isinstance(next_update, str):
        raise QuoteVerificationError(f"{what} lacks issueDate or nextUpdate")
    start, end = parse_time(issued), parse_time(next_update)
    if at < start:
        raise QuoteVerificationError(f"{what} is not valid before {issued}")
    if at >= end:
        raise QuoteVerificationError(f"{what} expired at {next_update} (outside its validity window)")


def _check_crl(
    crl: x509.CertificateRevocationList, issuer: x509.Certificate, at: dt.datetime, what: str
) -> None:
    if crl.issuer != issuer.subject:
        raise QuoteVerificationError(
            f"{what} is issued by '{crl.issuer.rfc4514_string()}', not by '{common_name(issuer.subject)}'"
        )
    if not _crl_signed_by(crl, issuer):
        raise QuoteVerificationError(f"{what} signature does not verify")
    next_update = crl.next_update_utc
    if at < crl.last_update_utc or next_update is None or at >= next_update:
        raise QuoteVerificationError(f"{what} is outside its validity window at {at:%Y-%m-%dT%H:%M:%SZ}")


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    return _crl_der_signed_by(crl.public_bytes(Encoding.DER), issuer)


@functools.lru_cache(maxsize=256)
def _crl_der_signed_by(crl_der: bytes, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    crl = x509.load_der_x509_crl(crl_der)
    return isinstance(key, ec.EllipticCurvePublicKey) and crl.is_signature_valid(key)


def verify_quote(
    data: bytes, collateral: Collateral | None = None, at: dt.datetime | None = None
) -> IntelVerified:
    when = at or dt.datetime.now(dt.UTC)
    quote = Quote.from_bytes(data)
    if quote.header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise QuoteVerificationError(f"QE vendor {quote.header.qe_vendor_id.hex()} is not Intel's")
    chain = _pck_chain(quote, when)
    pck_key = chain[0].public_key()
    if not isinstance(pck_key, ec.EllipticCurvePublicKey):
        raise QuoteVerificationError("the PCK key is not ECDSA")
    sig = quote.signature
    if not _verify_raw(pck_key, sig.qe_report_signature, sig.qe_report.raw):
        raise QuoteVerificationError("the QE report signature does not verify under the PCK certificate")
    expected = sha256(sig.attestation_key + sig.qe_auth_data)
    if not constant_time_equal(sig.qe_report.report_data[:32], expected) or any(
        sig.qe_report.report_data[32:]
    ):
        raise QuoteVerificationError("the QE report does not bind the attestation key")
    try:
        attestation_key = p256_key_from_xy(sig.attestation_key)
    except ValueError:
        raise QuoteVerificationError("the attestation key is not a P-256 point") from None
    if not _verify_raw(attestation_key, sig.signature, quote.signed_bytes):
        raise QuoteVerificationError("the quote signature does not verify under the attestation key")
    pck = pck_extensions(chain[0])
    if collateral is None:
        return IntelVerified(quote, pck, chain, None, None, None, None)
    platform, qe, module = _evaluate(quote, pck, chain, collateral, when)
    overall = merge(platform, qe, *([module] if module else []))
    return IntelVerified(quote, pck, chain, overall, platform, qe, module)


def check_platform_identity(tcb_info: dict[str, object], pck: PckExtensions) -> None:
    """The TCB info must be for this platform: FMSPC and PCE-ID of the PCK certificate."""
    fmspc = str(tcb_info.get("fmspc", "")).lower()
    if fmspc != pck.fmspc.hex():
        raise QuoteVerificationError(f"FMSPC mismatch: PCK {pck.fmspc.hex()} vs TCB info {fmspc}")
    pce_id = str(tcb_info.get("pceId", "")).lower()
    if pce_id != pck.pce_id.hex():
        raise QuoteVerificationError(f"PCE-ID mismatch: PCK {pck.pce_id.hex()} vs TCB info {pce_id}")


def check_collateral_signatures(collateral: Collateral, at: dt.datetime) -> None:
    """Signatures, chains and validity windows of all collateral items at ``at``."""
    _verify_signed_collateral(collateral.tcb_info, at, "TCB info")
    _verify_signed_collateral(collateral.qe_identity, at, "QE identity")
    _check_crl(collateral.root_ca_crl, intel_root(), at, "root CA CRL")
    if not collateral.pck_crl_issuer_chain:
        raise QuoteVerificationError("PCK CRL: no issuer chain")
    _check_chain_to_root(collateral.pck_crl_issuer_chain, at, "PCK CRL issuer chain")


def _evaluate(
    quote: Quote,
    pck: PckExtensions,
    chain: tuple[x509.Certificate, ...],
    collateral: Collateral,
    at: dt.datetime,
) -> tuple[TcbResult, TcbResult, TcbResult | None]:
    tcb_info = _verify_signed_collateral(collateral.tcb_info, at, "TCB info")
    identity = _verify_signed_collateral(collateral.qe_identity, at, "QE identity")
    expected_id = "TDX" if quote.is_tdx else "SGX"
    if tcb_info.get("id", "SGX") != expected_id:
        raise QuoteVerificationError(f"the TCB info is for {tcb_info.get('id')}, the quote is {expected_id}")
    expected_qe = "TD_QE" if quote.is_tdx else "QE"
    if identity.get("id", "QE") != expected_qe:
        raise QuoteVerificationError(
            f"the QE identity is for {identity.get('id')}, the quote needs {expected_qe}"
        )
    check_platform_identity(tcb_info, pck)
    _check_crl(collateral.root_ca_crl, intel_root(), at, "root CA CRL")
    _check_crl(collateral.pck_crl, chain[1], at, "PCK CRL")
    if collateral.root_ca_crl.get_revoked_certificate_by_serial_number(chain[1].serial_number) is not None:
        raise QuoteVerificationError(f"'{common_name(chain[1].subject)}' is revoked")
    if collateral.pck_crl.get_revoked_certificate_by_serial_number(chain[0].serial_number) is not None:
        raise QuoteVerificationError("the PCK certificate is revoked")
    try:
        qe = qe_identity_level(identity, quote.signature.qe_report)
        body = quote.body
        tee_tcb_svn = body.tee_tcb_svn if isinstance(body, TdReportBody) else None
        platform = platform_level(tcb_info, pck, tee_tcb_svn)
        module = tdx_module_level(tcb_info, body) if isinstance(body, TdReportBody) else None
    except TcbEvaluationError as exc:
        raise QuoteVerificationError(str(exc)) from None
    return platform, qe, module
