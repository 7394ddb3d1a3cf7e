"""A small X.509 certificate authority: session CAs and the certificates they issue.

Keys are ECDSA P-256. Certificates carry the service identity both as a DNS SAN (the
service name, for TLS hostname checks) and as a URI SAN ``veil://SESSION/SERVICE``.
"""

import datetime as dt
import ipaddress
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
    load_der_private_key,
    load_der_public_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from veil.crypto.encoding import sha256_hex
from veil.crypto.errors import CryptoError

CA_VALIDITY = dt.timedelta(days=3650)
INSTANCE_VALIDITY = dt.timedelta(hours=24)
_CLOCK_SKEW = dt.timedelta(minutes=5)
#: what a CA key may do: sign certificates and CRLs, nothing else
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def public_key_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def load_p256_public_key(der: bytes) -> ec.EllipticCurvePublicKey:
    try:
        key = load_der_public_key(der)
    except ValueError as exc:
        raise CryptoError(f"not a DER public key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise CryptoError("the instance key must be an ECDSA P-256 public key")
    return key


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA key and its self-signed certificate. Its repr never shows the key."""

    key: ec.EllipticCurvePrivateKey = field(repr=False)
    certificate: x509.Certificate

    @classmethod
    def create(cls, common_name: str) -> "CertificateAuthority":
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                CA_KEY_USAGE,
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def to_der(self) -> tuple[bytes, bytes]:
        """(private key PKCS#8 DER, certificate DER), for sealed storage only."""
        key = self.key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
        return key, self.certificate.public_bytes(Encoding.DER)

    @classmethod
    def from_der(cls, key_der: bytes, cert_der: bytes) -> "CertificateAuthority":
        key = load_der_private_key(key_der, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CryptoError("a CA key must be an ECDSA key")
        return cls(key, x509.load_der_x509_certificate(cert_der))

    @property
    def certificate_pem(self) -> str:
        return self.certificate.public_bytes(Encoding.PEM).decode("ascii")

    def issue_instance_certificate(
        self,
        subject_key: ec.EllipticCurvePublicKey,
        session: str,
        service: str,
        validity: dt.timedelta = INSTANCE_VALIDITY,
    ) -> x509.Certificate:
        """A client+server certificate for an attested runtime's instance key."""
        now = _now()
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        return (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.COMMON_NAME, service),
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, session),
                    ]
                )
            )
            .issuer_name(self.certificate.subject)
            .public_key(subject_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _CLOCK_SKEW)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName(service),
                        x509.UniformResourceIdentifier(f"veil://{session}/{service}"),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski.value),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )


def spki_sha256(key: "PublicKey") -> str:
    """SHA-256 of a public key's SubjectPublicKeyInfo DER, in hex (owner and CAS identities)."""
    return sha256_hex(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def certificate_fingerprint(cert: x509.Certificate) -> str:
    return sha256_hex(cert.public_bytes(Encoding.DER))


PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


def generate_private_key(key_type: str) -> PrivateKey:
    """P-256, P-384, Ed25519, RSA-2048 or RSA-3072."""
    if key_type == "P-256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "P-384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if key_type in ("RSA-2048", "RSA-3072"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise CryptoError(f"unknown key type '{key_type}'")


def private_key_der(key: PrivateKey) -> bytes:
    return key.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())


def load_private_key(der: bytes) -> PrivateKey:
    key = load_der_private_key(der, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey):
        raise CryptoError("unsupported private key type")
    return key


def issue_certificate(
    issuer_key: PrivateKey,
    issuer_certificate: x509.Certificate,
    subject_key: PublicKey,
    common_name: str,
    dns: list[str],
    ips: list[str],
    usage: list[str],
    is_ca: bool,
    valid_days: int,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """A certificate for ``subject_key`` signed by the issuer (the session CA or a CA secret)."""
    now = now or _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer_certificate.subject)
        .public_key(subject_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=0 if is_ca else None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if is_ca:
        builder = builder.add_extension(
            CA_KEY_USAGE,
            critical=True,
        )
    else:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ips]
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        purposes = {"server": ExtendedKeyUsageOID.SERVER_AUTH, "client": ExtendedKeyUsageOID.CLIENT_AUTH}
        builder = builder.add_extension(x509.ExtendedKeyUsage([purposes[u] for u in usage]), critical=False)
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(issuer_key, algorithm)
