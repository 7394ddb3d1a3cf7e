"""Azure confidential VMs (docs/attestation.md, "Azure confidential VMs (vTPM)"): the HCL
report, its variable data bound into the SNP report or TD quote, and the vTPM quote by the
attestation key that variable data names.
"""

import base64
import binascii
import datetime as dt
import hashlib
import re
import struct
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from veil.crypto import constant_time_equal
from veil.tee.claims import EvidenceError, json_object
from veil.tee.intel import Collateral, IntelVerified, TdReportBody, verify_quote
from veil.tee.snp import SnpProduct, SnpVerified, verify_snp_report
from veil.tee.tpm import QuoteInfo, key_fingerprint, pcr_claims, selected_pcrs

HCL_REPORT_SIZE = 2600
HCL_MAGIC = b"HCLA"
_HARDWARE_AT = 0x20
_HARDWARE_SIZE = 1184
_REQUEST_AT = 0x4C0
_VARIABLE_AT = _REQUEST_AT + 20
#: HCL request header report types
REPORT_TYPES = {"azure-snp-vtpm": 2, "azure-tdx-vtpm": 4}
_HASH_SHA256 = 1
#: the header versions seen (1: SNP CVMs, 2: TDX CVMs)
_HCL_VERSIONS = (1, 2)
_TDREPORT_SIZE = 1024
_URLSAFE = str.maketrans("-_", "+/")
_PEM_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


@dataclass(frozen=True)
class HclReport:
    raw: bytes
    report_type: int
    hardware: bytes
    variable_data: bytes
    #: the variable data's JSON
    runtime: dict[str, Any]

    @classmethod
    def parse(cls, data: bytes, platform: str) -> "HclReport":
        if len(data) != HCL_REPORT_SIZE:
            raise EvidenceError(f"an HCL report has {HCL_REPORT_SIZE} bytes, this one {len(data)}")
        if data[:4] != HCL_MAGIC:
            raise EvidenceError("the HCL report does not start with 'HCLA'")
        version, report_size, request_type, status = struct.unpack_from("<4I", data, 4)
        data_size, request_version, report_type, hash_type, size = struct.unpack_from(
            "<5I", data, _REQUEST_AT
        )
        if report_type != REPORT_TYPES[platform]:
            names = {v: k for k, v in REPORT_TYPES.items()}
            raise EvidenceError(
                f"the HCL report holds report type {report_type} ({names.get(report_type, 'unknown')}), "
                f"not {platform}"
            )
        if hash_type != _HASH_SHA256:
            raise EvidenceError(f"the HCL report's hash type is {hash_type}, not SHA-256 (1)")
        if size == 0 or _VARIABLE_AT + size > len(data):
            raise EvidenceError(f"the HCL report's variable data ({size} bytes) does not fit in it")
        # Nothing signs the header, the request header or the padding: each must be exactly
        # what the paravisor writes, so that no byte of the report goes unchecked.
        expected = {
            "header version": (version, version if version in _HCL_VERSIONS else -1),
            "report size": (report_size, _VARIABLE_AT + size),
            "request type": (request_type, 2),
            "status": (status, 0),
            "request data size": (data_size, size + 20),
            "request version": (request_version, 1),
        }
        for name, (found, wanted) in expected.items():
            if found != wanted:
                raise EvidenceError(f"the HCL report's {name} is {found}, not {wanted}")
        padding_ranges = [(0x14, _HARDWARE_AT), (_VARIABLE_AT + size, len(data))]
        if platform == "azure-tdx-vtpm":
            padding_ranges.append((_HARDWARE_AT + _TDREPORT_SIZE, _HARDWARE_AT + _HARDWARE_SIZE))
        for start, end in padding_ranges:
            if any(data[start:end]):
                raise EvidenceError(f"the HCL report's bytes 0x{start:x}-0x{end - 1:x} must be zero")
        variable = data[_VARIABLE_AT : _VARIABLE_AT + size]
        runtime = json_object(variable, "the HCL report's variable data")
        return cls(data, report_type, data[_HARDWARE_AT : _HARDWARE_AT + _HARDWARE_SIZE], variable, runtime)

    def attestation_key(self) -> rsa.RSAPublicKey:
        """``HCLAkPub`` of the variable data: the vTPM's attestation key."""
        keys = self.runtime.get("keys")
        found = (
            [k for k in keys if isinstance(k, dict) and k.get("kid") == "HCLAkPub"]
            if isinstance(keys, list)
            else []
        )
        if len(found) != 1 or found[0].get("kty") != "RSA":
            raise EvidenceError("the HCL report's variable data has no RSA key HCLAkPub")
        try:
            n = int.from_bytes(_b64url(found[0].get("n")), "big")
            e = int.from_bytes(_b64url(found[0].get("e")), "big")
            return rsa.RSAPublicNumbers(e, n).public_key()
        except (ValueError, TypeError):
            raise EvidenceError("HCLAkPub is not a valid RSA public key") from None


@dataclass(frozen=True)
class AzureParts:
    hcl_report: bytes
    tpm_message: bytes
    tpm_signature: bytes
    pcrs: list[bytes]
    vcek: bytes | None
    td_quote: bytes | None


@dataclass(frozen=True)
class AzureVerified:
    platform: str
    hcl: HclReport
    quote: QuoteInfo
    pcrs: dict[int, bytes]
    ak_fingerprint: str
    snp: SnpVerified | None
    tdx: IntelVerified | None


def read_parts(
    evidence: bytes, hcl_report: bytes | None = None, vcek: bytes | None = None, td_quote: bytes | None = None
) -> AzureParts:
    """The parts from any of the encodings met in the wild (docs/attestation.md)."""
    document = json_object(evidence, "Azure vTPM evidence")
    quote = document.get("tpm_quote", document.get("quote", document))
    if not isinstance(quote, dict) or "message" not in quote:
        raise EvidenceError(
            "the evidence has no TPM quote (tpm_quote or quote with message, signature, pcrs)"
        )
    pcrs = quote.get("pcrs")
    if not isinstance(pcrs, list):
        raise EvidenceError("the TPM quote has no list of PCRs")
    given_report = document.get("hcl_report", document.get("report"))
    return AzureParts(
        hcl_report=hcl_report if hcl_report is not None else _binary(given_report, "hcl_report"),
        tpm_message=_binary(quote.get("message"), "tpm_quote.message", text="hex"),
        tpm_signature=_binary(quote.get("signature"), "tpm_quote.signature", text="hex"),
        pcrs=[_binary(p, f"tpm_quote.pcrs[{i}]", text="hex") for i, p in enumerate(pcrs)],
        vcek=vcek if vcek is not None else _certificate(document.get("vcek")),
        td_quote=td_quote if td_quote is not None else _optional(document.get("td_quote"), "td_quote"),
    )


def td_quote_of(evidence: bytes) -> bytes | None:
    """The TD quote an Azure TDX evidence document carries (to pick its collateral)."""
    try:
        document = json_object(evidence, "Azure vTPM evidence")
    except EvidenceError:
        return None
    return _optional(document.get("td_quote"), "td_quote")


def verify_azure(
    platform: str,
    parts: AzureParts,
    *,
    collateral: Collateral | None = None,
    at: dt.datetime | None = None,
    product: SnpProduct | None = None,
) -> AzureVerified:
    hcl = HclReport.parse(parts.hcl_report, platform)
    digest = hashlib.sha256(hcl.variable_data).digest()
    snp = tdx = None
    if platform == "azure-snp-vtpm":
        if parts.vcek is None:
            raise EvidenceError("Azure SNP evidence needs the VCEK (in the evidence, or --cert)")
        snp = verify_snp_report(hcl.hardware, _first_certificate(parts.vcek), at, product)
        bound = snp.report.report_data
    else:
        if parts.td_quote is None:
            raise EvidenceError("Azure TDX evidence needs the TD quote (in the evidence, or --td-quote)")
        tdx = verify_quote(parts.td_quote, collateral, at)
        if not isinstance(tdx.quote.body, TdReportBody):
            raise EvidenceError("the td_quote is an SGX quote, not a TD quote")
        bound = tdx.quote.body.report_data
        _same_td(hcl.hardware, tdx.quote.body)
    if not constant_time_equal(bound[:32], digest):
        raise EvidenceError(
            "the hardware report's report_data does not hold the SHA-256 of the HCL variable data "
            "(the variable data, and with it the vTPM's key, is not the one the hardware vouched for)"
        )
    ak = hcl.attestation_key()
    quote = QuoteInfo.parse(parts.tpm_message)
    try:
        ak.verify(parts.tpm_signature, parts.tpm_message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise EvidenceError("the TPM quote's signature does not verify with HCLAkPub") from None
    pcrs = selected_pcrs(quote, parts.pcrs)
    return AzureVerified(platform, hcl, quote, pcrs, key_fingerprint(ak), snp, tdx)


def _same_td(tdreport: bytes, body: TdReportBody) -> None:
    """The TDREPORT in the HCL report is MAC'ed by the CPU, which only the CPU can check;
    what the TD quote signs must equal it field by field (Intel TDX ABI, TDREPORT_STRUCT:
    REPORTMACSTRUCT at 0, TEE_TCB_INFO at 256, TDINFO at 512)."""
    fields = {
        "reportdata": (tdreport[128:192], body.report_data),
        "tee_tcb_svn": (tdreport[264:280], body.tee_tcb_svn),
        "mr_seam": (tdreport[280:328], body.mr_seam),
        "mr_signer_seam": (tdreport[328:376], body.mr_signer_seam),
        "seam_attributes": (tdreport[376:384], body.seam_attributes),
        "td_attributes": (tdreport[512:520], body.td_attributes),
        "xfam": (tdreport[520:528], body.xfam),
        "mr_td": (tdreport[528:576], body.mr_td),
        "mr_config_id": (tdreport[576:624], body.mr_config_id),
        "mr_owner": (tdreport[624:672], body.mr_owner),
        "mr_owner_config": (tdreport[672:720], body.mr_owner_config),
        "rtmr": (tdreport[720:912], b"".join(body.rtmr)),
    }
    for name, (reported, quoted) in fields.items():
        if not constant_time_equal(reported, quoted):
            raise EvidenceError(f"the HCL report's TDREPORT and the TD quote differ in {name}")


def azure_claims(v: AzureVerified) -> dict[str, object]:
    return {
        "tpm_extra_data": v.quote.extra_data.hex(),
        "pcr_digest": v.quote.pcr_digest.hex(),
        **pcr_claims(v.pcrs),
        "hcl_ak_fingerprint": v.ak_fingerprint,
        "ak_certified": True,  # by the hardware report, through the variable data's hash
        "vm_configuration": v.hcl.runtime.get("vm-configuration"),
        "user_data": v.hcl.runtime.get("user-data"),
    }


def _binary(value: object, field: str, text: str = "base64url") -> bytes:
    """Bytes as a JSON array of numbers (version 0), or text: hex, or base64url."""
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b <= 255 for b in value):
        return bytes(value)
    if isinstance(value, str):
        try:
            return bytes.fromhex(value) if text == "hex" else _b64url(value)
        except ValueError:
            raise EvidenceError(f"{field} is not {text}") from None
    raise EvidenceError(f"{field} is missing, or neither bytes nor {text} text")


def _optional(value: object, field: str) -> bytes | None:
    return None if value is None else _binary(value, field)


def _certificate(value: object) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str) and "-----BEGIN" in value:
        return value.encode()
    return _binary(value, "vcek")


def _first_certificate(data: bytes) -> bytes:
    """The first certificate of a PEM bundle (Azure ships VCEK, ASK, ARK), or DER as given."""
    block = _PEM_BLOCK.search(data)
    return block.group(0) if block else data


def _b64url(value: object) -> bytes:
    if not isinstance(value, str):
        raise ValueError("not a string")
    padded = value.translate(_URLSAFE) + "=" * (-len(value) % 4)
    try:
        return base64.b64decode(padded, validate=True)
    except binascii.Error:
        raise ValueError("not base64url") from None
