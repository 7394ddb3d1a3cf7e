"""AMD's SEV-SNP certificates: the built-in, pinned roots, and VCEK/VLEK extensions.

Chains: VCEK -> ASK -> ARK, VLEK -> ASVK -> ARK, all RSASSA-PSS except the P-384 leaf key.
The ASVK must never be accepted as the issuer of a VCEK, nor the ASK of a VLEK.
"""

import functools
import warnings
from dataclasses import dataclass
from importlib import resources

from cryptography import x509

from veil.crypto import certs
from veil.crypto.certs import fingerprint
from veil.crypto.der import DerError, DerValue, decode_der
from veil.tee.claims import EvidenceError
from veil.tee.snp.report import SnpProduct, TcbVersion

#: SHA-256 of each built-in certificate's DER (AMD KDS; checked against three public copies).
PINS: dict[tuple[SnpProduct, str], str] = {
    (SnpProduct.MILAN, "ark"): "69D063B45344D26A2E94E1F4210DE49EF555308287D4C174445C95639A540BCD",
    (SnpProduct.MILAN, "ask"): "67D303BD3905FD38DB8B20E0793699870E7FA612EAAD5DEC358293FD8C0BAC1B",
    (SnpProduct.MILAN, "asvk"): "C5E081F59B7EFAB1FE2F8B505E159704E72F29CAB7EF7CF628A05A42439082F5",
    (SnpProduct.GENOA, "ark"): "4C6598D19C18719C5DFD4A7D335F674E5BFE1D8F800CEA2CF270C10D103DB2F1",
    (SnpProduct.GENOA, "ask"): "5464738C1546AED5F2CECF1DC98C5C960A92E8913238A61711BC90EC6E828521",
    (SnpProduct.GENOA, "asvk"): "197E610743A917D6B9BB982A5A9226CCC0A15B611BE0619E626ACA9151457372",
    (SnpProduct.TURIN, "ark"): "1F084161A44BB6D93778A904877D4819CAFA5D05EF4193B2DED9DD9C73DD3F6A",
    (SnpProduct.TURIN, "ask"): "5B77EF5FE7A7A004FD9032668FBA9D0FDA22F88C4442069A479636A6AE3B3185",
    (SnpProduct.TURIN, "asvk"): "104E10A8BD060A3C20A434261A57D0588FD65A88915B4F65B08BDECAF8DF1A3C",
}

_ARC = "1.3.6.1.4.1.3704.1"
OID_STRUCT_VERSION = f"{_ARC}.1"
OID_PRODUCT_NAME = f"{_ARC}.2"
OID_BL_SPL = f"{_ARC}.3.1"
OID_TEE_SPL = f"{_ARC}.3.2"
OID_SNP_SPL = f"{_ARC}.3.3"
OID_UCODE_SPL = f"{_ARC}.3.8"
OID_FMC_SPL = f"{_ARC}.3.9"
OID_HWID = f"{_ARC}.4"
OID_CSP_ID = f"{_ARC}.5"


class SnpCertificateError(EvidenceError):
    """An AMD certificate is malformed, not AMD's, or does not chain."""


@dataclass(frozen=True)
class AmdRoots:
    product: SnpProduct
    ark: x509.Certificate
    ask: x509.Certificate
    asvk: x509.Certificate


@functools.cache
def builtin_roots(product: SnpProduct) -> AmdRoots:
    """The pinned AMD certificates of a product generation (refuses a file that drifted)."""
    loaded: dict[str, x509.Certificate] = {}
    folder = resources.files("veil.tee.snp") / "amd"
    for role in ("ark", "ask", "asvk"):
        pem = (folder / f"{product.value.lower()}_{role}.pem").read_bytes()
        cert = x509.load_pem_x509_certificate(pem)
        if fingerprint(cert) != PINS[(product, role)]:
            raise SnpCertificateError(
                f"built-in AMD {role.upper()} for {product.value} does not match its pin"
            )
        loaded[role] = cert
    return AmdRoots(product, loaded["ark"], loaded["ask"], loaded["asvk"])


def load_certificate(data: bytes) -> x509.Certificate:
    """A VCEK or VLEK in DER or PEM (AMD serves DER; some tools save PEM).

    Every VCEK AMD issues has serial number 0, which cryptography 48 accepts with a
    deprecation warning (a future release may refuse; the dependency is pinned below 49).
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Parsed a serial number which wasn't positive")
            return certs.load_certificate(data, "the VCEK/VLEK certificate")
    except certs.MalformedCertificate as exc:
        raise SnpCertificateError(str(exc)) from None


def _extension_bytes(cert: x509.Certificate, oid: str) -> bytes | None:
    for ext in cert.extensions:
        if ext.oid.dotted_string == oid:
            value = ext.value
            return value.value if isinstance(value, x509.UnrecognizedExtension) else None
    return None


def _der_value(raw: bytes, what: str) -> DerValue:
    try:
        return decode_der(raw)
    except DerError as exc:
        raise SnpCertificateError(f"VCEK extension {what}: {exc}") from None


def _der_int(cert: x509.Certificate, oid: str, what: str) -> int | None:
    raw = _extension_bytes(cert, oid)
    if raw is None:
        return None
    value = _der_value(raw, what)
    if not isinstance(value, int) or isinstance(value, bool):
        raise SnpCertificateError(f"VCEK extension {what} is not an INTEGER")
    return value


def _der_text(raw: bytes | None, what: str) -> str | None:
    if raw is None:
        return None
    value = _der_value(raw, what)
    if not isinstance(value, str):
        raise SnpCertificateError(f"VCEK extension {what} is not a string")
    return value


def hwid_from_extension(raw: bytes) -> bytes:
    """The chip id in its encodings: raw bytes (real VCEKs) or a DER OCTET STRING around them."""
    if len(raw) >= 2 and raw[0] == 0x04 and raw[1] == len(raw) - 2 and len(raw) - 2 in (8, 64):
        return raw[2:]
    if len(raw) in (8, 64):
        return raw
    raise SnpCertificateError(f"VCEK hwID has an unexpected length ({len(raw)} bytes)")


@dataclass(frozen=True)
class EndorsementKeyInfo:
    """What a VCEK or VLEK certificate says about the platform it belongs to."""

    struct_version: int | None
    product_name: str | None
    bootloader: int | None
    tee: int | None
    snp: int | None
    microcode: int | None
    fmc: int | None
    hwid: bytes | None
    csp_id: str | None

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> "EndorsementKeyInfo":
        name_raw = _extension_bytes(cert, OID_PRODUCT_NAME)
        csp_raw = _extension_bytes(cert, OID_CSP_ID)
        hwid_raw = _extension_bytes(cert, OID_HWID)
        return cls(
            struct_version=_der_int(cert, OID_STRUCT_VERSION, "structVersion"),
            product_name=_der_text(name_raw, "productName"),
            bootloader=_der_int(cert, OID_BL_SPL, "blSPL"),
            tee=_der_int(cert, OID_TEE_SPL, "teeSPL"),
            snp=_der_int(cert, OID_SNP_SPL, "snpSPL"),
            microcode=_der_int(cert, OID_UCODE_SPL, "ucodeSPL"),
            fmc=_der_int(cert, OID_FMC_SPL, "fmcSPL"),
            hwid=hwid_from_extension(hwid_raw) if hwid_raw is not None else None,
            csp_id=_der_text(csp_raw, "csp_id"),
        )

    def tcb_mismatch(self, tcb: TcbVersion) -> str | None:
        """Why the certificate's SPLs differ from the report's reported TCB, or None."""
        expected = tcb.components()
        certified = {
            "bootloader": self.bootloader,
            "tee": self.tee,
            "snp": self.snp,
            "microcode": self.microcode,
        }
        if "fmc" in expected:
            certified["fmc"] = self.fmc
        different = [f"{k} {certified[k]} != {v}" for k, v in expected.items() if certified[k] != v]
        if different:
            return "the VCEK's TCB does not match the report's reported_tcb (" + ", ".join(different) + ")"
        return None
