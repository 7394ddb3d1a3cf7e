"""Private keys and X.509 certificates as session secrets: made, kept, re-issued, rendered.

Private keys are kept across a session update only with ``migrate: true``; certificates are
issued again at every create and update (by the session CA or by an x509-ca secret), with
their chain up to the session CA.
"""

import base64
import datetime as dt
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, pkcs12

from veil.cas.errors import CasError
from veil.crypto.x509ca import (
    CertificateAuthority,
    PrivateKey,
    generate_private_key,
    issue_certificate,
    load_private_key,
    private_key_der,
)
from veil.policy import SecretDefinition
from veil.policy.placeholders import KIND_FORMATS, render_secret

Record = dict[str, Any]


def new_private_key(definition: SecretDefinition) -> bytes:
    return private_key_der(generate_private_key(definition.effective_key_type))


def certificate_order(definitions: list[SecretDefinition]) -> list[SecretDefinition]:
    """CA secrets before what they issue (the policy rules exclude cycles)."""
    pending = [d for d in definitions if d.kind in ("x509", "x509-ca")]
    done: set[str] = set()
    ordered: list[SecretDefinition] = []
    while pending:
        ready = [d for d in pending if d.effective_issuer == "session-ca" or d.effective_issuer in done]
        if not ready:
            raise CasError("certificate secrets name issuers that never resolve")
        for definition in ready:
            ordered.append(definition)
            done.add(definition.name)
            pending.remove(definition)
    return ordered


def issue_for(
    definition: SecretDefinition,
    records: dict[str, Record],
    session_ca: CertificateAuthority,
    now: dt.datetime | None = None,
) -> Record:
    """Issue the certificate of ``definition``; ``records`` holds the keys and CA secrets."""
    subject_key = load_private_key(base64.b64decode(records[definition.private_key or ""]["value"]))
    if definition.effective_issuer == "session-ca":
        issuer_key: PrivateKey = session_ca.key
        issuer_cert, chain = session_ca.certificate, []
    else:
        issuer_record = records[definition.effective_issuer]
        issuer_cert = x509.load_der_x509_certificate(base64.b64decode(issuer_record["value"]))
        issuer_key = load_private_key(base64.b64decode(records[str(issuer_record["key"])]["value"]))
        chain = list(issuer_record["chain"])
    certificate = issue_certificate(
        issuer_key,
        issuer_cert,
        subject_key.public_key(),
        definition.common_name or definition.name,
        definition.dns or [],
        definition.ip or [],
        definition.effective_usage,
        definition.kind == "x509-ca",
        definition.effective_valid_days,
        now,
    )
    return {
        "value": base64.b64encode(certificate.public_bytes(Encoding.DER)).decode(),
        "chain": [base64.b64encode(issuer_cert.public_bytes(Encoding.DER)).decode(), *chain],
        "key": definition.private_key,
    }


def renewal_due(record: Record, definition: SecretDefinition, now: dt.datetime) -> bool:
    """Whether an issued certificate is to be issued again: within ``renew_before_days`` of
    its end (default: the last third of its validity), or for another definition."""
    certificate = x509.load_der_x509_certificate(base64.b64decode(record["value"]))
    end, start = certificate.not_valid_after_utc, certificate.not_valid_before_utc
    margin = (
        dt.timedelta(days=definition.renew_before_days)
        if definition.renew_before_days is not None
        else (end - start) / 3
    )
    return now >= end - margin


def _key_pem(key: PrivateKey, traditional: bool) -> bytes:
    if traditional and isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        return key.private_bytes(Encoding.PEM, PrivateFormat.TraditionalOpenSSL, NoEncryption())
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def renderer(
    definitions: dict[str, SecretDefinition], records: dict[str, Record]
) -> Callable[[str, str | None], bytes]:
    """Render any secret of the session in any of its kind's formats."""

    def render(name: str, fmt: str | None) -> bytes:
        definition, record = definitions[name], records[name]
        fmt = fmt or KIND_FORMATS[definition.kind][0]
        value = base64.b64decode(record["value"])
        if definition.kind in ("ascii", "binary"):
            return render_secret(value, fmt)
        if definition.kind == "private-key":
            key = load_private_key(value)
            return value if fmt == "der" else _key_pem(key, traditional=fmt == "pem")
        cert = x509.load_der_x509_certificate(value)
        chain = [x509.load_der_x509_certificate(base64.b64decode(c)) for c in record["chain"]]
        if fmt == "crt":
            return cert.public_bytes(Encoding.PEM)
        if fmt == "der":
            return value
        if fmt == "chain":
            return b"".join(c.public_bytes(Encoding.PEM) for c in (cert, *chain))
        key = load_private_key(base64.b64decode(records[str(record["key"])]["value"]))
        if fmt == "key":
            return _key_pem(key, traditional=False)
        return pkcs12.serialize_key_and_certificates(name.encode(), key, cert, chain, NoEncryption())

    return render
