"""Verifying an SEV-SNP report: AMD chain, endorsement key binding, report signature.

Returns ``SnpVerified`` or raises ``SnpVerificationError`` naming the failed check. Policy
(debug, SMT, minimum TCB, expected measurement) is applied afterwards, by the caller.
"""

import datetime as dt
import functools
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from veil.crypto import SignatureInvalid, constant_time_equal
from veil.crypto.certs import check_valid_at, common_name, verify_ecdsa, verify_issued_by
from veil.tee.claims import EvidenceError
from veil.tee.snp.certs import EndorsementKeyInfo, builtin_roots, load_certificate
from veil.tee.snp.report import SnpProduct, SnpReport, TcbVersion

_SIGNING_KEYS = {0: "VCEK", 1: "VLEK"}


class SnpVerificationError(EvidenceError):
    """An SEV-SNP report does not verify."""


@dataclass(frozen=True)
class SnpVerified:
    report: SnpReport
    product: SnpProduct
    signing_key: str  # "VCEK" or "VLEK"
    endorsement: EndorsementKeyInfo

    @property
    def reported_tcb(self) -> TcbVersion:
        return self.report.tcb("reported", self.product)


def _product(report: SnpReport, info: EndorsementKeyInfo, override: SnpProduct | None) -> SnpProduct:
    from_cpuid = report.product_from_cpuid
    from_cert = SnpProduct.from_product_name(info.product_name) if info.product_name else None
    choices = [p for p in (override, from_cpuid, from_cert) if p is not None]
    if not choices:
        raise SnpVerificationError(
            "cannot tell the product generation (no CPUID in the report, no productName in the "
            "certificate); name it"
        )
    if any(p is not choices[0] for p in choices):
        names = ", ".join(sorted({p.value for p in choices}))
        raise SnpVerificationError(f"the product generation is ambiguous ({names})")
    return choices[0]


@functools.lru_cache(maxsize=1024)
def _chain_signatures(vek: x509.Certificate, product: SnpProduct, signing_key: str) -> None:
    """VEK -> ASK/ASVK -> ARK signatures; they depend on the bytes only, so a verified
    certificate is remembered (validity at a time is checked on every call)."""
    roots = builtin_roots(product)
    intermediate = roots.ask if signing_key == "VCEK" else roots.asvk
    try:
        verify_issued_by(roots.ark, roots.ark)
        verify_issued_by(intermediate, roots.ark)
        verify_issued_by(vek, intermediate)
    except SignatureInvalid as exc:
        raise SnpVerificationError(f"{signing_key} chain to AMD ARK-{product.value} fails: {exc}") from None


def _check_chain(vek: x509.Certificate, product: SnpProduct, signing_key: str, at: dt.datetime) -> None:
    _chain_signatures(vek, product, signing_key)
    roots = builtin_roots(product)
    intermediate = roots.ask if signing_key == "VCEK" else roots.asvk
    for cert in (vek, intermediate, roots.ark):
        problem = check_valid_at(cert, at)
        if problem:
            raise SnpVerificationError(problem)


@functools.lru_cache(maxsize=1024)
def _endorsement_key(data: bytes) -> tuple[x509.Certificate, EndorsementKeyInfo]:
    """A VCEK/VLEK parsed with its extensions (pure function of its bytes, so remembered)."""
    vek = load_certificate(data)
    return vek, EndorsementKeyInfo.from_certificate(vek)


def verify_snp_report(
    report_bytes: bytes,
    vek_bytes: bytes,
    at: dt.datetime | None = None,
    product: SnpProduct | None = None,
) -> SnpVerified:
    """Verify ``report_bytes`` with the VCEK or VLEK certificate ``vek_bytes`` (DER or PEM)."""
    when = at or dt.datetime.now(dt.UTC)
    report = SnpReport.from_bytes(report_bytes)
    signing_key = _SIGNING_KEYS.get(report.signing_key)
    if signing_key is None:
        raise SnpVerificationError(f"the report names signing key {report.signing_key}, not a VCEK or VLEK")
    vek, info = _endorsement_key(vek_bytes)
    generation = _product(report, info, product)
    expected_cn = "SEV-VCEK" if signing_key == "VCEK" else "SEV-VLEK"
    if common_name(vek.subject) != expected_cn:
        raise SnpVerificationError(
            f"the report is signed by a {signing_key} but the certificate is '{common_name(vek.subject)}'"
        )
    _check_chain(vek, generation, signing_key, when)
    mismatch = info.tcb_mismatch(report.tcb("reported", generation))
    if mismatch:
        raise SnpVerificationError(mismatch)
    if signing_key == "VCEK" and not report.mask_chip_key:
        if info.hwid is None:
            raise SnpVerificationError("the VCEK has no hwID extension")
        chip = report.chip_id[: len(info.hwid)]
        if len(info.hwid) not in (8, 64) or not constant_time_equal(info.hwid, chip):
            raise SnpVerificationError("the VCEK's hwID does not match the report's chip_id")
    key = vek.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise SnpVerificationError(f"the {signing_key} key is not ECDSA P-384")
    if not verify_ecdsa(key, report.signature_der, report.signed_bytes, "sha384"):
        raise SnpVerificationError(f"the report signature does not verify under the {signing_key}")
    return SnpVerified(report, generation, signing_key, info)
