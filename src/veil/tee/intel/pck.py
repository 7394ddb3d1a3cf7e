"""The SGX extension of a PCK certificate (OID 1.2.840.113741.1.13.1).

Spec: Intel SGX PCK Certificate and Certificate Revocation List Profile Specification.
A SEQUENCE of (OID, value) pairs; the TCB (``.2``) and configuration (``.7``) are nested.
"""

from dataclasses import dataclass

from cryptography import x509

from veil.crypto.der import DerError, DerValue, Oid, decode_der
from veil.tee.claims import EvidenceError

SGX_EXTENSION = "1.2.840.113741.1.13.1"
_P = SGX_EXTENSION


class PckCertificateError(EvidenceError):
    """A PCK certificate lacks or garbles its SGX extension."""


@dataclass(frozen=True)
class PckExtensions:
    ppid: bytes
    tcb_components: tuple[int, ...]  # 16 SGX TCB component SVNs
    pce_svn: int
    cpu_svn: bytes
    pce_id: bytes
    fmspc: bytes
    sgx_type: int
    platform_instance_id: bytes | None
    dynamic_platform: bool | None
    cached_keys: bool | None
    smt_enabled: bool | None

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> "PckExtensions":
        raw = next(
            (
                e.value.value
                for e in cert.extensions
                if e.oid.dotted_string == SGX_EXTENSION and isinstance(e.value, x509.UnrecognizedExtension)
            ),
            None,
        )
        if raw is None:
            raise PckCertificateError("the PCK certificate has no SGX extension")
        try:
            items = _pairs(decode_der(raw))
        except DerError as exc:
            raise PckCertificateError(f"the PCK SGX extension: {exc}") from None
        tcb = _pairs(_get(items, f"{_P}.2"))
        config = _pairs(items[f"{_P}.7"]) if f"{_P}.7" in items else {}
        return cls(
            ppid=_bytes(items, f"{_P}.1"),
            tcb_components=tuple(_int(tcb, f"{_P}.2.{i}") for i in range(1, 17)),
            pce_svn=_int(tcb, f"{_P}.2.17"),
            cpu_svn=_bytes(tcb, f"{_P}.2.18"),
            pce_id=_bytes(items, f"{_P}.3"),
            fmspc=_bytes(items, f"{_P}.4"),
            sgx_type=_int(items, f"{_P}.5"),
            platform_instance_id=_bytes(items, f"{_P}.6") if f"{_P}.6" in items else None,
            dynamic_platform=_flag(config, f"{_P}.7.1"),
            cached_keys=_flag(config, f"{_P}.7.2"),
            smt_enabled=_flag(config, f"{_P}.7.3"),
        )


def _pairs(node: DerValue) -> dict[str, DerValue]:
    if not isinstance(node, list):
        raise PckCertificateError("the PCK SGX extension is not a SEQUENCE of (OID, value)")
    out: dict[str, DerValue] = {}
    for item in node:
        if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], Oid):
            raise PckCertificateError("the PCK SGX extension holds an entry that is not (OID, value)")
        out[item[0].dotted] = item[1]
    return out


def _get(items: dict[str, DerValue], oid: str) -> DerValue:
    if oid not in items:
        raise PckCertificateError(f"the PCK SGX extension lacks {oid}")
    return items[oid]


def _int(items: dict[str, DerValue], oid: str) -> int:
    value = _get(items, oid)
    if not isinstance(value, int) or isinstance(value, bool):
        raise PckCertificateError(f"the PCK SGX extension's {oid} is not an INTEGER")
    return value


def _bytes(items: dict[str, DerValue], oid: str) -> bytes:
    value = _get(items, oid)
    if not isinstance(value, bytes):
        raise PckCertificateError(f"the PCK SGX extension's {oid} is not an OCTET STRING")
    return value


def _flag(items: dict[str, DerValue], oid: str) -> bool | None:
    value = items.get(oid)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise PckCertificateError(f"the PCK SGX extension's {oid} is not a BOOLEAN")
    return value
