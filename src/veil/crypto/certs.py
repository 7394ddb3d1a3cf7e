"""Certificate-chain checks over pyca/cryptography, including the RSASSA-PSS that AMD uses.

``verify_issued_by`` checks one link's signature; ``check_valid_at`` a validity window.
Vendor-specific rules (pins, extensions) live with each vendor's verifier.
"""

import datetime as dt
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.serialization import Encoding

from veil.crypto.encoding import sha256_hex
from veil.crypto.errors import SignatureInvalid

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


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
