"""Certificate-chain checks over pyca/cryptography, including the RSASSA-PSS that AMD uses.

``verify_issued_by`` checks one link's signature; ``check_valid_at`` a validity window.
Vendor-specific rules (pins, extensions) live with each vendor's verifier.
"""

import datetime as dt
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.serialization import Encoding

from veil.crypto.encoding import sha256_hex
from veil.crypto.errors import CryptoError, SignatureInvalid

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


class MalformedCertificate(CryptoError):
    """A certificate does not parse completely."""


_PARSE_ERRORS = (
    ValueError,
    KeyError,
    TypeError,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.InvalidVersion,
)


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of content, end) of the DER element at ``at``."""
    if at + 2 > len(data):
        raise ValueError("truncated DER element")
    tag, length, head = data[at], data[at + 1], at + 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or head + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[head : head + count], "big")
        head += count
    if head + length > len(data):
        raise ValueError("DER element runs past its container")
    return tag, head, head + length


def _check_outer_structure(cert: x509.Certificate, what: str) -> None:
    """RFC 5280 4.1.1.2: the outer signatureAlgorithm equals the TBS's; the signature BIT
    STRING has no unused bits. Neither is covered by the signature itself."""
    der = cert.public_bytes(Encoding.DER)
    try:
        _tag, content, _end = _tlv(der, 0)
        _tbs_tag, tbs_content, tbs_end = _tlv(der, content)
        _alg_tag, _alg_start, alg_end = _tlv(der, tbs_end)
        outer_alg = der[tbs_end:alg_end]
        bits_tag, bits_content, _ = _tlv(der, alg_end)
        at = tbs_content
        first, _, first_end = _tlv(der, at)
        if first == 0xA0:  # [0] EXPLICIT version
            at = first_end
        _serial, _, serial_end = _tlv(der, at)
        _inner, _, inner_end = _tlv(der, serial_end)
        inner_alg = der[serial_end:inner_end]
    except ValueError as exc:
        raise MalformedCertificate(f"{what} is malformed: {exc}") from None
    if outer_alg != inner_alg:
        raise MalformedCertificate(f"{what}: the outer signature algorithm differs from the signed one")
    if bits_tag != 0x03 or der[bits_content] != 0:
        raise MalformedCertificate(f"{what}: the signature BIT STRING is malformed")


def parsed_completely(cert: x509.Certificate, what: str = "certificate") -> x509.Certificate:
    """Touch every field veil reads, so that a corrupt certificate fails here, clearly.

    cryptography parses lazily: a garbled name or extension would otherwise surface as a
    ValueError or KeyError wherever it is first read.
    """
    try:
        _ = (cert.subject.rfc4514_string(), cert.issuer.rfc4514_string(), list(cert.extensions))
        _ = (cert.public_key(), cert.not_valid_before_utc, cert.not_valid_after_utc, cert.serial_number)
        _ = (cert.signature_hash_algorithm, cert.signature_algorithm_parameters, cert.tbs_certificate_bytes)
    except _PARSE_ERRORS as exc:
        raise MalformedCertificate(f"{what} is malformed: {exc!r}") from None
    _check_outer_structure(cert, what)
    return cert


def load_certificate(data: bytes, what: str = "certificate") -> x509.Certificate:
    """One certificate, DER or PEM, parsed completely; MalformedCertificate otherwise."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except _PARSE_ERRORS as exc:
        raise MalformedCertificate(f"{what} is not an X.509 certificate: {exc}") from None
    return parsed_completely(cert, what)


def load_pem_chain(data: bytes, what: str = "certificate chain") -> tuple[x509.Certificate, ...]:
    """All PEM certificates in ``data``, each parsed completely."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except _PARSE_ERRORS as exc:
        raise MalformedCertificate(f"{what} is not PEM certificates: {exc}") from None
    return tuple(parsed_completely(c, what) for c in certs)


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER encoding, upper-case hex (as vendors publish pins)."""
    return sha256_hex(cert.public_bytes(Encoding.DER)).upper()


def common_name(name: x509.Name) -> str:
    attrs = name.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else name.rfc4514_string()


def verify_issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Raise SignatureInvalid unless ``issuer``'s key signed ``cert`` (ECDSA, RSA, RSA-PSS)."""
    key = issuer.public_key()
    algorithm = cert.signature_hash_algorithm
    try:
        if isinstance(key, ec.EllipticCurvePublicKey) and algorithm is not None:
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        elif isinstance(key, rsa.RSAPublicKey) and algorithm is not None:
            pss = cert.signature_algorithm_parameters
            pad: padding.AsymmetricPadding = pss if isinstance(pss, padding.PSS) else padding.PKCS1v15()
            key.verify(cert.signature, cert.tbs_certificate_bytes, pad, algorithm)
        else:
            raise SignatureInvalid(f"unsupported signature on '{common_name(cert.subject)}'")
    except InvalidSignature:
        raise SignatureInvalid(
            f"'{common_name(cert.subject)}' is not signed by '{common_name(issuer.subject)}'"
        ) from None


def check_valid_at(cert: x509.Certificate, at: dt.datetime) -> str | None:
    """Why ``cert`` is not valid at ``at``, or None."""
    if at < cert.not_valid_before_utc:
        start = cert.not_valid_before_utc
        return f"'{common_name(cert.subject)}' is not valid before {start:%Y-%m-%dT%H:%M:%SZ}"
    if at > cert.not_valid_after_utc:
        return f"'{common_name(cert.subject)}' expired at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}"
    return None


def raw_ecdsa_to_der(r: bytes, s: bytes, byteorder: Literal["little", "big"]) -> bytes:
    """A raw (r, s) pair as vendors lay it out, as the DER that cryptography verifies."""
    return utils.encode_dss_signature(int.from_bytes(r, byteorder), int.from_bytes(s, byteorder))


def verify_ecdsa(key: ec.EllipticCurvePublicKey, signature_der: bytes, data: bytes, hash_name: str) -> bool:
    try:
        key.verify(signature_der, data, ec.ECDSA(_HASHES[hash_name]()))
    except InvalidSignature:
        return False
    return True


def p256_key_from_xy(xy: bytes) -> ec.EllipticCurvePublicKey:
    """An uncompressed P-256 point given as 64 bytes x||y (Intel's attestation key layout)."""
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + xy)
