"""The CAS's own identity: a P-256 key and a self-signed CA certificate.

The CA certificate is what clients pin (``veil cas attest``). The key signs the CAS's TLS
server certificate, the owner certificates it issues on enrolment, and audit log heads.
It is sealed in the database under the master key, so every replica has it.
"""

import base64
import datetime as dt
import ipaddress
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from veil.cas.errors import CasError, Conflict
from veil.cas.sealing import SealedRecords
from veil.crypto import tls
from veil.crypto.files import load_private_ec_key_file
from veil.crypto.tls import load_chain_in_memory
from veil.crypto.x509ca import CertificateAuthority, PublicKey, spki_sha256
from veil.protocol import b64

SERVER_VALIDITY = dt.timedelta(days=90)
_RECORD = ("cas-identity", "ca")
OWNER_VALIDITY = dt.timedelta(days=365)
_SKEW = dt.timedelta(minutes=5)


class EnrolmentRefused(CasError):
    """An owner certificate request is malformed or its signature does not verify."""


def owner_id(public_key: PublicKey) -> str:
    """An owner is the SHA-256 of its public key (SubjectPublicKeyInfo DER), in hex."""
    return spki_sha256(public_key)


def _unpack(value: dict[str, str]) -> tuple[bytes, bytes]:
    return base64.b64decode(value["key"]), base64.b64decode(value["certificate"])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True)
class CasIdentity:
    ca: CertificateAuthority = field(repr=False)

    @classmethod
    def load_or_store(cls, records: SealedRecords, data_dir: Path) -> "CasIdentity":
        """The identity every replica presents, sealed in the database; on the first start
        it is taken from an older data directory's ``identity.key``/``identity.crt`` when
        present, else created."""
        found = records.get(*_RECORD)
        if found is not None:
            return cls(CertificateAuthority.from_der(*_unpack(found[1])))
        key_file, cert_file = data_dir / "identity.key", data_dir / "identity.crt"
        if key_file.exists():
            key = load_private_ec_key_file(key_file)
            ca = CertificateAuthority(key, x509.load_pem_x509_certificate(cert_file.read_bytes()))
        else:
            ca = CertificateAuthority.create("veil CAS")
        key_der, cert_der = ca.to_der()
        try:
            records.put(*_RECORD, {"key": b64(key_der), "certificate": b64(cert_der)}, None)
        except Conflict:  # another replica stored one first: that one is the identity
            return cls.load_or_store(records, data_dir)
        return cls(ca)

    @property
    def certificate_pem(self) -> str:
        return self.ca.certificate_pem

    @property
    def digest(self) -> str:
        return spki_sha256(self.ca.key.public_key())

    def sign(self, message: bytes) -> bytes:
        return self.ca.key.sign(message, ec.ECDSA(hashes.SHA256()))

    def _issue(
        self,
        subject: x509.Name,
        public_key: PublicKey,
        validity: dt.timedelta,
        purpose: x509.ObjectIdentifier,
        names: list[x509.GeneralName],
    ) -> x509.Certificate:
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.ca.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self.ca.key, hashes.SHA256())

    def server_context(self, host_names: list[str]) -> ssl.SSLContext:
        """TLS 1.3 server context with a fresh server certificate for ``host_names``.

        Client certificates are optional at the TLS layer (runtimes have none); when one
        is sent it must be an owner certificate this CAS issued.
        """
        names: list[x509.GeneralName] = []
        for name in dict.fromkeys(host_names):
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                names.append(x509.DNSName(name))
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "veil CAS server")])
        cert = self._issue(subject, key.public_key(), SERVER_VALIDITY, ExtendedKeyUsageOID.SERVER_AUTH, names)
        context = tls.server_context()
        load_chain_in_memory(
            context,
            cert.public_bytes(Encoding.PEM) + self.certificate_pem.encode(),
            key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
        )
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cadata=self.certificate_pem)
        return context

    def issue_owner_certificate(self, public_key: PublicKey) -> str:
        """A client certificate (PEM) for an owner key whose possession a CSR proved
        (``owner_from_csr``). It only makes the key presentable in TLS; rights come from
        the principal records and sessions' access policies."""
        owner = owner_id(public_key)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, owner)])
        cert = self._issue(subject, public_key, OWNER_VALIDITY, ExtendedKeyUsageOID.CLIENT_AUTH, [])
        return cert.public_bytes(Encoding.PEM).decode("ascii")


def owner_from_csr(csr_pem: str) -> tuple[str, PublicKey]:
    """(owner id, public key) of a signed CSR: its signature proves possession of the key."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        valid = csr.is_signature_valid
        public_key = csr.public_key()
    except (ValueError, InvalidSignature, TypeError):
        raise EnrolmentRefused("the certificate request does not parse (PEM CSR expected)") from None
    if not valid:
        raise EnrolmentRefused("the certificate request's signature does not verify")
    if not isinstance(public_key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise EnrolmentRefused("owner keys must be ECDSA, Ed25519 or RSA")
    return owner_id(public_key), public_key
