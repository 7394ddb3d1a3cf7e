"""Intel DCAP ECDSA quotes: SGX v3, TDX v4, and v5 with SGX, TD 1.0 or TD 1.5 bodies.

Spec: Intel SGX ECDSA Quote Library API, appendix A (quote v3/v4) and the TDX DCAP quote
v5 layout. All integers little-endian; signatures are raw 32+32-byte big-endian r||s.
Bytes after the end of the signature data are tolerated and covered by no check.
"""

import struct
from dataclasses import dataclass

from veil.tee.claims import EvidenceError

HEADER_SIZE = 48
SGX_BODY_SIZE = 384
TD10_BODY_SIZE = 584
TD15_BODY_SIZE = 648
TEE_SGX = 0x00
TEE_TDX = 0x81
ATT_KEY_ECDSA_P256 = 2
CERT_PCK_CHAIN = 5
CERT_QE_REPORT = 6
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")


class QuoteFormatError(EvidenceError):
    """A quote cannot be parsed: unsupported version or inconsistent sizes."""


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    qe_svn: int
    pce_svn: int
    qe_vendor_id: bytes
    user_data: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> "QuoteHeader":
        version, key_type, tee_type, qe_svn, pce_svn = struct.unpack_from("<HHIHH", data, 0)
        return cls(version, key_type, tee_type, qe_svn, pce_svn, data[12:28], data[28:48])


@dataclass(frozen=True)
class SgxReportBody:
    """An SGX REPORT body (also the layout of the QE report)."""

    raw: bytes
    cpu_svn: bytes
    misc_select: int
    attributes: bytes
    mr_enclave: bytes
    mr_signer: bytes
    config_id: bytes
    isv_prod_id: int
    isv_svn: int
    config_svn: int
    isv_family_id: bytes
    report_data: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> "SgxReportBody":
        if len(data) != SGX_BODY_SIZE:
            raise QuoteFormatError(f"an SGX report body has {SGX_BODY_SIZE} bytes, not {len(data)}")
        isv_prod_id, isv_svn, config_svn = struct.unpack_from("<HHH", data, 256)
        return cls(
            raw=bytes(data),
            cpu_svn=data[0:16],
            misc_select=struct.unpack_from("<I", data, 16)[0],
            attributes=data[48:64],
            mr_enclave=data[64:96],
            mr_signer=data[128:160],
            config_id=data[192:256],
            isv_prod_id=isv_prod_id,
            isv_svn=isv_svn,
            config_svn=config_svn,
            isv_family_id=data[304:320],
            report_data=data[320:384],
        )

    @property
    def debug(self) -> bool:
        """ATTRIBUTES.DEBUG (flags bit 1): the enclave's memory is readable by a debugger."""
        return bool(self.attributes[0] & 0x02)


@dataclass(frozen=True)
class TdReportBody:
    """A TD report body, TDX 1.0 (584 bytes) or 1.5 (648 bytes)."""

    raw: bytes
    tee_tcb_svn: bytes
    mr_seam: bytes
    mr_signer_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmr: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None
    mr_servicetd: bytes | None

    @classmethod
    def from_bytes(cls, data: bytes) -> "TdReportBody":
        if len(data) not in (TD10_BODY_SIZE, TD15_BODY_SIZE):
            raise QuoteFormatError(f"a TD report body has 584 or 648 bytes, not {len(data)}")
        v15 = len(data) == TD15_BODY_SIZE
        return cls(
            raw=bytes(data),
            tee_tcb_svn=data[0:16],
            mr_seam=data[16:64],
            mr_signer_seam=data[64:112],
            seam_attributes=data[112:120],
            td_attributes=data[120:128],
            xfam=data[128:136],
            mr_td=data[136:184],
            mr_config_id=data[184:232],
            mr_owner=data[232:280],
            mr_owner_config=data[280:328],
            rtmr=(data[328:376], data[376:424], data[424:472], data[472:520]),
            report_data=data[520:584],
            tee_tcb_svn2=data[584:600] if v15 else None,
            mr_servicetd=data[600:648] if v15 else None,
        )

    @property
    def debug(self) -> bool:
        """TD_ATTRIBUTES.DEBUG (bit 0): the TD runs in debug mode, the host can read it."""
        return bool(self.td_attributes[0] & 0x01)


@dataclass(frozen=True)
class QuoteSignature:
    signature: bytes  # 64 bytes r||s, big-endian
    attestation_key: bytes  # 64 bytes x||y
    qe_report: SgxReportBody
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_chain_pem: bytes


@dataclass(frozen=True)
class Quote:
    raw: bytes
    header: QuoteHeader
    body: SgxReportBody | TdReportBody
    #: the bytes the attestation key signs: header and body (v5: with body type and size).
    signed_bytes: bytes
    signature: QuoteSignature
    trailing: int

    @property
    def is_tdx(self) -> bool:
        return isinstance(self.body, TdReportBody)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Quote":
        if len(data) < HEADER_SIZE:
            raise QuoteFormatError("a quote has at least a 48-byte header")
        header = QuoteHeader.from_bytes(data)
        if header.version not in (3, 4, 5):
            raise QuoteFormatError(f"quote version {header.version} is not supported (3, 4, 5)")
        if header.att_key_type != ATT_KEY_ECDSA_P256:
            raise QuoteFormatError(f"attestation key type {header.att_key_type} is not ECDSA P-256")
        if header.tee_type not in (TEE_SGX, TEE_TDX):
            raise QuoteFormatError(f"unknown TEE type 0x{header.tee_type:x}")
        body, body_end = _body(data, header)
        signed = data[:body_end]
        _need(data, body_end + 4, "signature data length")
        sig_len = struct.unpack_from("<I", data, body_end)[0]
        sig_start = body_end + 4
        sig_end = sig_start + sig_len
        _need(data, sig_end, "signature data")
        signature = (_v3_signature if header.version == 3 else _v4_signature)(data[sig_start:sig_end])
        return cls(bytes(data), header, body, signed, signature, len(data) - sig_end)


def _need(data: bytes, end: int, what: str) -> None:
    if len(data) < end:
        raise QuoteFormatError(f"quote too short for its {what} ({len(data)} < {end} bytes)")


def _body(data: bytes, header: QuoteHeader) -> tuple[SgxReportBody | TdReportBody, int]:
    if header.version in (3, 4):
        size = TD10_BODY_SIZE if header.tee_type == TEE_TDX else SGX_BODY_SIZE
        if header.version == 3 and header.tee_type != TEE_SGX:
            raise QuoteFormatError("a version 3 quote must be an SGX quote")
        start = HEADER_SIZE
    else:
        _need(data, HEADER_SIZE + 6, "body descriptor")
        body_type, size = struct.unpack_from("<HI", data, HEADER_SIZE)
        expected = {1: SGX_BODY_SIZE, 2: TD10_BODY_SIZE, 3: TD15_BODY_SIZE}.get(body_type)
        if expected is None or expected != size:
            raise QuoteFormatError(f"v5 body type {body_type} with size {size} is not supported")
        start = HEADER_SIZE + 6
    end = start + size
    _need(data, end, "report body")
    raw = data[start:end]
    if size == SGX_BODY_SIZE:
        if header.tee_type != TEE_SGX:
            raise QuoteFormatError("an SGX body in a quote whose TEE type is not SGX")
        return SgxReportBody.from_bytes(raw), end
    if header.tee_type != TEE_TDX:
        raise QuoteFormatError("a TD body in a quote whose TEE type is not TDX")
    return TdReportBody.from_bytes(raw), end


class _Reader:
    def __init__(self, data: bytes, what: str) -> None:
        self.data, self.at, self.what = data, 0, what

    def take(self, size: int, field: str) -> bytes:
        if self.at + size > len(self.data):
            raise QuoteFormatError(
                f"{self.what}: {field} runs past its end (certification data size inconsistent)"
            )
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def u16(self, field: str) -> int:
        return int(struct.unpack("<H", self.take(2, field))[0])

    def u32(self, field: str) -> int:
        return int(struct.unpack("<I", self.take(4, field))[0])

    def done(self) -> None:
        if self.at != len(self.data):
            raise QuoteFormatError(
                f"{self.what}: {len(self.data) - self.at} unexplained bytes (size inconsistent)"
            )


def _certification(reader: _Reader, expected_type: int) -> bytes:
    cert_type = reader.u16("certification data type")
    if cert_type != expected_type:
        raise QuoteFormatError(f"certification data type {cert_type}, expected {expected_type}")
    return reader.take(reader.u32("certification data size"), "certification data")


def _qe_part(reader: _Reader) -> tuple[SgxReportBody, bytes, bytes, bytes]:
    qe_report = SgxReportBody.from_bytes(reader.take(SGX_BODY_SIZE, "QE report"))
    qe_signature = reader.take(64, "QE report signature")
    qe_auth = reader.take(reader.u16("QE auth data size"), "QE auth data")
    pem = _certification(reader, CERT_PCK_CHAIN)
    return qe_report, qe_signature, qe_auth, pem


def _v3_signature(data: bytes) -> QuoteSignature:
    reader = _Reader(data, "signature data")
    signature = reader.take(64, "quote signature")
    key = reader.take(64, "attestation key")
    qe_report, qe_signature, qe_auth, pem = _qe_part(reader)
    reader.done()
    return QuoteSignature(signature, key, qe_report, qe_signature, qe_auth, pem)


def _v4_signature(data: bytes) -> QuoteSignature:
    reader = _Reader(data, "signature data")
    signature = reader.take(64, "quote signature")
    key = reader.take(64, "attestation key")
    inner = _Reader(_certification(reader, CERT_QE_REPORT), "QE report certification data")
    reader.done()
    qe_report, qe_signature, qe_auth, pem = _qe_part(inner)
    inner.done()
    return QuoteSignature(signature, key, qe_report, qe_signature, qe_auth, pem)
