"""NVIDIA H100 GPU evidence (docs/attestation.md, "NVIDIA H100 GPUs (SPDM)"): an SPDM 1.1
GET_MEASUREMENTS request and response, parsed exactly, signed by the device's leaf
certificate, whose chain ends at the pinned NVIDIA Device Identity CA.
"""

import datetime as dt
import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from veil.crypto import constant_time_equal
from veil.crypto.certs import check_valid_at
from veil.tee.claims import EvidenceError
from veil.tee.reader import ByteReader

#: SHA-256 of the NVIDIA Device Identity CA certificate (DER)
NVIDIA_ROOT_SHA256 = "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
SPDM_VERSION = 0x11
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
_REQUEST_SIZE = 37
_NONCE = 32
_SIGNATURE = 96  # ECDSA P-384, r || s
_DMTF = 0x01
#: TCG DICE TcbInfo: the leaf's FWID is its last 48 bytes
DICE_TCB_INFO = "2.23.133.5.4.1"
_FWID = 48

#: NVIDIA's opaque data item types, by the names nvtrust gives them
OPAQUE_TYPES = {
    1: "cert_issuer_name",
    2: "cert_authority_key_identifier",
    3: "driver_version",
    4: "gpu_info",
    5: "id_sku",
    6: "vbios_version",
    7: "manufacturer_id",
    8: "tamper_detection",
    9: "smc",
    10: "vpr",
    11: "nvdec0_status",
    12: "measurement_count",
    13: "cpr_info",
    14: "board_id",
    15: "chip_sku",
    16: "chip_sku_mod",
    17: "project",
    18: "project_sku",
    19: "project_sku_mod",
    20: "fwid",
    21: "protected_pcie_status",
    22: "switch_pdi",
    23: "floorswept_ports",
    24: "position_id",
    25: "lock_switch_status",
    32: "gpu_link_conn",
    33: "sys_enable_status",
    34: "opaque_data_version",
    35: "chip_info",
    36: "feature_flag",
}
#: items shown as text (nvtrust shows the two status bytes as characters too: 0x55 is "U")
_TEXT_ITEMS = {
    "driver_version",
    "chip_sku",
    "chip_sku_mod",
    "project",
    "project_sku",
    "chip_info",
    "nvdec0_status",
    "protected_pcie_status",
}


@dataclass(frozen=True)
class GpuReport:
    request_nonce: bytes
    responder_nonce: bytes
    #: measurement index -> value
    measurements: dict[int, bytes]
    opaque: dict[str, object]
    signed: bytes
    signature: bytes
    trailing: int


@dataclass(frozen=True)
class GpuVerified:
    report: GpuReport
    leaf: x509.Certificate
    fwid: bytes


def _u24(data: bytes) -> int:
    return data[0] | data[1] << 8 | data[2] << 16


def parse_report(data: bytes) -> GpuReport:
    if len(data) < _REQUEST_SIZE:
        raise EvidenceError(
            f"an SPDM GET_MEASUREMENTS request has {_REQUEST_SIZE} bytes; the report has {len(data)}"
        )
    version, code, param1 = data[0], data[1], data[2]
    if (version, code) != (SPDM_VERSION, GET_MEASUREMENTS):
        raise EvidenceError(
            f"the report does not start with an SPDM 1.1 GET_MEASUREMENTS request ({version:#x} {code:#x})"
        )
    if not param1 & 1:
        raise EvidenceError("the request did not ask for a signature")
    request_nonce = data[4:36]
    c = ByteReader(data, "SPDM response", "little", _REQUEST_SIZE)
    head = c.take(8, "header")
    if (head[0], head[1]) != (SPDM_VERSION, MEASUREMENTS):
        raise EvidenceError(
            f"the response is not an SPDM 1.1 MEASUREMENTS response ({head[0]:#x} {head[1]:#x})"
        )
    blocks, record_length = head[4], _u24(head[5:8])
    record = ByteReader(c.take(record_length, "measurement record"), "measurement record", "little")
    measurements: dict[int, bytes] = {}
    for _ in range(blocks):
        index, specification = record.u8("block index"), record.u8("block specification")
        if specification != _DMTF:
            raise EvidenceError(f"measurement block {index} is not in the DMTF format")
        block = ByteReader(record.sized(f"measurement block {index}"), f"measurement block {index}", "little")
        block.u8("DMTF type")
        value = block.sized(f"measurement {index}")
        block.end()
        if index in measurements:
            raise EvidenceError(f"measurement index {index} appears twice")
        measurements[index] = value
    record.end()
    responder_nonce = c.take(_NONCE, "nonce")
    opaque = _opaque(c.sized("opaque data"))
    signed_end = c.offset
    signature = c.take(_SIGNATURE, "signature")
    return GpuReport(
        request_nonce,
        responder_nonce,
        measurements,
        opaque,
        data[:signed_end],
        signature,
        len(data) - c.offset,
    )


def _opaque(data: bytes) -> dict[str, object]:
    c = ByteReader(data, "opaque data", "little")
    items: dict[str, object] = {}
    while not c.done:
        kind = c.u16("opaque item type")
        name = OPAQUE_TYPES.get(kind)
        if name is None:
            raise EvidenceError(f"opaque data item type {kind} is not one NVIDIA defines")
        value = c.sized(name)
        if name in items:
            raise EvidenceError(f"opaque data item {name} appears twice")
        items[name] = _opaque_value(name, value)
    for required in ("driver_version", "vbios_version"):
        if required not in items:
            raise EvidenceError(f"the report's opaque data has no {required}")
    return items


def _opaque_value(name: str, value: bytes) -> object:
    if name in _TEXT_ITEMS:
        return value.rstrip(b"\0").decode("ascii", "replace")
    if name == "vbios_version":
        half = len(value) // 2
        if half == 0:
            raise EvidenceError("vbios_version is empty")
        return ".".join(f"{b:02x}" for b in reversed(value[:half])) + f".{value[half]:02x}"
    if name == "measurement_count":
        if len(value) % 4:
            raise EvidenceError("measurement_count is not a list of 32-bit counts")
        return {str(i + 1): n for i, (n,) in enumerate(struct.iter_unpack("<I", value))}
    return value.hex()


def verify_gpu_report(evidence: bytes, chain_pem: bytes, at: dt.datetime | None = None) -> GpuVerified:
    report = parse_report(evidence)
    chain = _chain(chain_pem, at or dt.datetime.now(dt.UTC))
    leaf = chain[0]
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise EvidenceError("the signing certificate's key is not ECDSA P-384")
    r = int.from_bytes(report.signature[:48], "big")
    s = int.from_bytes(report.signature[48:], "big")
    try:
        key.verify(encode_dss_signature(r, s), report.signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise EvidenceError("the report's signature does not verify with the signing certificate") from None
    fwid = _fwid(leaf)
    reported = report.opaque.get("fwid")
    if reported is not None and not constant_time_equal(str(reported), fwid.hex()):
        raise EvidenceError("the report's FWID differs from the signing certificate's")
    return GpuVerified(report, leaf, fwid)


def gpu_claims(v: GpuVerified) -> dict[str, object]:
    return {
        **{key: value for key, value in v.report.opaque.items() if key != "fwid"},
        "fwid": v.fwid.hex(),
        "measurements": {str(i): m.hex() for i, m in sorted(v.report.measurements.items())},
        "responder_nonce": v.report.responder_nonce.hex(),
        "signing_certificate": v.leaf.subject.rfc4514_string(),
        "trailing": v.report.trailing,
        "measurements_compared": False,
    }


def _chain(pem: bytes, at: dt.datetime) -> tuple[x509.Certificate, ...]:
    chain = _signed_chain(pem)
    for cert in chain:
        problem = check_valid_at(cert, at)
        if problem:
            raise EvidenceError(problem)
    return chain


@functools.lru_cache(maxsize=256)
def _signed_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    """The chain's parse, root pin and signatures: a pure function of its bytes, so
    remembered (the validity at the verification time is checked on every call)."""
    try:
        chain = tuple(x509.load_pem_x509_certificates(pem))
    except ValueError:
        raise EvidenceError("the certificate chain is not PEM certificates") from None
    check_chain(chain, NVIDIA_ROOT_SHA256, "the NVIDIA Device Identity CA")
    return chain


def check_chain(chain: Sequence[x509.Certificate], root_sha256: str, root: str) -> None:
    """``chain`` (signer first) has the signing certificate and the root at least, ends at
    the root pinned by ``root_sha256`` (named ``root``), and each certificate is issued by
    the next. EvidenceError otherwise."""
    if len(chain) < 2:
        raise EvidenceError("the certificate chain needs at least the signing certificate and the root")
    if chain[-1].fingerprint(hashes.SHA256()).hex() != root_sha256:
        raise EvidenceError(f"the chain does not end at {root}")
    for cert, issuer in zip(chain, [*chain[1:], chain[-1]], strict=True):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise EvidenceError(
                f"'{cert.subject.rfc4514_string()}' is not issued by '{issuer.subject.rfc4514_string()}'"
            ) from None


def _fwid(leaf: x509.Certificate) -> bytes:
    for extension in leaf.extensions:
        if extension.oid.dotted_string == DICE_TCB_INFO and isinstance(
            extension.value, x509.UnrecognizedExtension
        ):
            value = extension.value.value
            if len(value) >= _FWID:
                return value[-_FWID:]
    raise EvidenceError("the signing certificate has no FWID (TCG DICE TcbInfo extension)")
