"""NVIDIA reference integrity manifests (RIMs; docs/attestation.md, "Reference integrity
manifests"): signed SWID tags (ISO/IEC 19770-2) that list, per measurement index, the
values a GPU's firmware (the VBIOS RIM) and driver (the driver RIM) may report.

A RIM is trusted only as its XML signature (XML-DSig, checked by signxml) made by the first
certificate of its KeyInfo, whose chain ends at the pinned NVIDIA CoRIM signing Root CA;
only the signed element is read afterwards. Comparing a report with a VBIOS and a driver
RIM: each must be for the report's version, and every index either RIM marks active must
hold one of its values in the report (RIM index i is the report's SPDM measurement block
i + 1, as nvtrust counts).
"""

import base64
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from veil.crypto import constant_time_equal
from veil.crypto.certs import check_valid_at
from veil.tee.claims import EvidenceError
from veil.tee.nvidia import GpuReport, check_chain

#: SHA-256 of the NVIDIA CoRIM signing Root CA certificate (DER), the root of RIM signers
RIM_ROOT_SHA256 = "12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1"
_SWID = "{http://standards.iso.org/iso/19770/-2/2015/schema.xsd}"
_SHA384 = "{http://www.w3.org/2001/04/xmlenc#sha384}"
_DSIG = "{http://www.w3.org/2000/09/xmldsig#}"
_MEASUREMENT = 48
#: the largest RIM read (NVIDIA's are ~20 KB)
MAX_RIM = 1 << 20


@dataclass(frozen=True)
class ReferenceManifest:
    """What a verified RIM says."""

    #: the firmware or driver version it is for (``colloquialVersion``), as written
    version: str
    #: active measurement index -> the values it may have
    measurements: dict[int, tuple[bytes, ...]]
    signer: str


def load_rim(data: bytes, at: dt.datetime | None = None, root_sha256: str | None = None) -> ReferenceManifest:
    """Verify a RIM and read it. EvidenceError with the reason when it does not verify:
    not XML, no or a bad signature, a chain not ending at the pinned root, a certificate
    not valid at ``at`` (now by default), or a payload that is not NVIDIA's."""
    # lxml and signxml: loaded only by a verifier given RIMs
    from lxml import etree  # type: ignore[import-untyped]  # noqa: PLC0415
    from signxml.exceptions import InvalidInput, InvalidSignature  # noqa: PLC0415
    from signxml.verifier import XMLVerifier  # noqa: PLC0415

    if len(data) > MAX_RIM:
        raise EvidenceError(f"a RIM of {len(data)} bytes is larger than any NVIDIA writes ({MAX_RIM})")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        document = etree.fromstring(data, parser=parser)
    except etree.XMLSyntaxError as exc:
        raise EvidenceError(f"the RIM is not XML: {exc}") from None
    chain = _certificates(document)
    check_chain(chain, root_sha256 or RIM_ROOT_SHA256, "the NVIDIA CoRIM signing Root CA")
    when = at or dt.datetime.now(dt.UTC)
    for cert in chain:
        problem = check_valid_at(cert, when)
        if problem:
            raise EvidenceError(f"RIM signer: {problem}")
    try:
        verified = XMLVerifier().verify(data, x509_cert=chain[0].public_bytes(Encoding.PEM).decode())
    except (InvalidSignature, InvalidInput) as exc:
        raise EvidenceError(f"the RIM's signature does not verify: {exc}") from None
    signed = None if isinstance(verified, list) else verified.signed_xml
    if signed is None or signed.tag != f"{_SWID}SoftwareIdentity":
        raise EvidenceError("the RIM's signature does not cover a SoftwareIdentity")
    return ReferenceManifest(_version(signed), _measurements(signed), chain[0].subject.rfc4514_string())


def _certificates(document: object) -> tuple[x509.Certificate, ...]:
    found = document.findall(f".//{_DSIG}KeyInfo/{_DSIG}X509Data/{_DSIG}X509Certificate")  # type: ignore[attr-defined]
    try:
        return tuple(x509.load_der_x509_certificate(base64.b64decode("".join(e.text.split()))) for e in found)
    except (ValueError, TypeError, AttributeError):
        raise EvidenceError("a certificate in the RIM's KeyInfo does not parse") from None


def _version(signed: object) -> str:
    meta = signed.find(f"{_SWID}Meta")  # type: ignore[attr-defined]
    version = meta.get("colloquialVersion") if meta is not None else None
    if not version:
        raise EvidenceError("the RIM names no version (Meta colloquialVersion)")
    return str(version)


def _measurements(signed: object) -> dict[int, tuple[bytes, ...]]:
    payload = signed.find(f"{_SWID}Payload")  # type: ignore[attr-defined]
    if payload is None:
        raise EvidenceError("the RIM has no Payload")
    measurements: dict[int, tuple[bytes, ...]] = {}
    for resource in payload.findall(f"{_SWID}Resource"):
        if resource.get("type") != "Measurement" or resource.get("active") != "True":
            continue
        try:
            index, count = int(resource.get("index")), int(resource.get("alternatives"))
            values = tuple(bytes.fromhex(resource.get(f"{_SHA384}Hash{i}")) for i in range(count))
        except (TypeError, ValueError):
            raise EvidenceError(f"the RIM's measurement {resource.get('name')!r} does not parse") from None
        if index in measurements or not values or any(len(v) != _MEASUREMENT for v in values):
            raise EvidenceError(f"the RIM's measurement index {index} is repeated or not 48-byte values")
        measurements[index] = values
    if not measurements:
        raise EvidenceError("the RIM has no active measurement")
    return measurements


def compare(report: GpuReport, rims: Sequence[ReferenceManifest]) -> None:
    """The report's measurements against a VBIOS and a driver RIM: EvidenceError naming
    the first mismatch. Each RIM must be for the report's VBIOS or driver version."""
    versions = {
        "VBIOS": str(report.opaque.get("vbios_version", "")),
        "driver": str(report.opaque.get("driver_version", "")),
    }
    chosen: dict[str, ReferenceManifest] = {}
    for rim in rims:
        kind = next((k for k, v in versions.items() if v and rim.version.lower() == v.lower()), None)
        if kind is None:
            raise EvidenceError(
                f"a RIM for version {rim.version} matches neither the report's VBIOS "
                f"({versions['VBIOS']}) nor its driver ({versions['driver']})"
            )
        if kind in chosen:
            raise EvidenceError(f"two RIMs for the {kind} {rim.version}")
        chosen[kind] = rim
    for kind, version in versions.items():
        if kind not in chosen:
            raise EvidenceError(f"no RIM for the report's {kind} {version}: give both, VBIOS and driver")
    vbios, driver = chosen["VBIOS"].measurements, chosen["driver"].measurements
    for index in sorted(set(vbios) & set(driver)):
        raise EvidenceError(f"measurement {index} is active in both the VBIOS and the driver RIM")
    for index, values in sorted({**vbios, **driver}.items()):
        kind = "VBIOS" if index in vbios else "driver"
        reported = report.measurements.get(index + 1)  # RIMs count from 0, SPDM blocks from 1
        if reported is None:
            raise EvidenceError(
                f"the report has no measurement {index} (SPDM block {index + 1}), which the {kind} RIM lists"
            )
        if not any(constant_time_equal(reported, value) for value in values):
            raise EvidenceError(
                f"measurement {index} (SPDM block {index + 1}) is not one the {kind} RIM allows"
            )
