"""private-key, x509 and x509-ca secrets: every format parses, chains and keys are right."""

import datetime as dt
import ipaddress
import string

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_der_private_key, load_pem_private_key, pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.conftest import EmbeddedCas, session_dict
from veil.cas import AccessDenied
from veil.client import EmbeddedCasClient
from veil.crypto.certs import verify_issued_by
from veil.policy import PolicyError, parse_session
from veil.runtime.attest import Provisioned, provision
from veil.tee import SimEvidenceSource

M = "sha256:" + "ab" * 32
SECRETS = [
    {"name": "key", "kind": "private-key"},
    {"name": "rsa", "kind": "private-key", "key_type": "RSA-2048"},
    {"name": "ed", "kind": "private-key", "key_type": "Ed25519"},
    {"name": "p384", "kind": "private-key", "key_type": "P-384", "migrate": True},
    {"name": "ca-key", "kind": "private-key"},
    {"name": "ca", "kind": "x509-ca", "private_key": "ca-key", "common_name": "Payments CA"},
    {
        "name": "cert",
        "kind": "x509",
        "private_key": "key",
        "issuer": "ca",
        "common_name": "api",
        "dns": ["api.internal"],
        "ip": ["10.0.0.1"],
        "usage": ["server"],
    },
    {"name": "client", "kind": "x509", "private_key": "ed", "usage": ["client"]},
]
FILES = {
    "/f/key.pem": "key",
    "/f/key.pkcs8": "key:pkcs8",
    "/f/key.der": "key:der",
    "/f/rsa.pem": "rsa",
    "/f/ed.pem": "ed",
    "/f/p384.pem": "p384",
    "/f/cert.crt": "cert",
    "/f/cert.key": "cert:key",
    "/f/cert.chain": "cert:chain",
    "/f/cert.p12": "cert:pkcs12",
    "/f/cert.der": "cert:der",
    "/f/ca.crt": "ca",
    "/f/client.crt": "client:crt",
}


def doc(**changes: object) -> dict[str, object]:
    d = session_dict(measurement=M, command=["/bin/true"], secrets=SECRETS)
    d["services"][0]["files"] = [{"path": p, "content": f"$$VEIL::{ref}$$"} for p, ref in FILES.items()]
    d.update(changes)
    return d


def provisioned(embedded: EmbeddedCas) -> tuple[Provisioned, dict[str, bytes]]:
    got = provision(EmbeddedCasClient(embedded.cas), SimEvidenceSource(embedded.platform), "test/app/app", M)
    return got, {f.path: f.content for f in got.bundle.files}


def test_every_kind_and_format_parses_and_chains_to_the_session_ca(embedded: EmbeddedCas) -> None:
    embedded.cas.create_session(yaml.safe_dump(doc()), "local")
    got, files = provisioned(embedded)
    assert files["/f/key.pem"].startswith(b"-----BEGIN EC PRIVATE KEY-----")
    assert files["/f/key.pkcs8"].startswith(b"-----BEGIN PRIVATE KEY-----")
    key = load_pem_private_key(files["/f/key.pem"], None)
    assert load_der_private_key(files["/f/key.der"], None).private_numbers() == key.private_numbers()  # type: ignore[union-attr]
    assert isinstance(load_pem_private_key(files["/f/rsa.pem"], None), rsa.RSAPrivateKey)
    assert load_pem_private_key(files["/f/rsa.pem"], None).key_size == 2048  # type: ignore[union-attr]
    assert isinstance(load_pem_private_key(files["/f/ed.pem"], None), ed25519.Ed25519PrivateKey)
    p384 = load_pem_private_key(files["/f/p384.pem"], None)
    assert isinstance(p384, ec.EllipticCurvePrivateKey) and p384.curve.name == "secp384r1"

    cert = x509.load_pem_x509_certificate(files["/f/cert.crt"])
    ca = x509.load_pem_x509_certificate(files["/f/ca.crt"])
    assert x509.load_der_x509_certificate(files["/f/cert.der"]) == cert
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["api.internal"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.1")]
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert cert.public_key() == key.public_key()
    assert load_pem_private_key(files["/f/cert.key"], None).public_key() == cert.public_key()
    verify_issued_by(cert, ca)
    verify_issued_by(ca, got.session_ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert x509.load_pem_x509_certificates(files["/f/cert.chain"]) == [cert, ca, got.session_ca]
    p12_key, p12_cert, extra = pkcs12.load_key_and_certificates(files["/f/cert.p12"], None)
    assert p12_cert == cert and extra == [ca, got.session_ca]
    assert p12_key is not None and p12_key.public_key() == cert.public_key()
    client = x509.load_pem_x509_certificate(files["/f/client.crt"])
    verify_issued_by(client, got.session_ca)
    assert list(client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]


def test_updates_keep_keys_only_with_migrate_and_issue_certificates_again(embedded: EmbeddedCas) -> None:
    first = embedded.cas.create_session(yaml.safe_dump(doc()), "local")
    _, before = provisioned(embedded)
    embedded.cas.update_session(yaml.safe_dump(doc(predecessor=first.hash, version="1")), "local")
    _, after = provisioned(embedded)
    assert after["/f/p384.pem"] == before["/f/p384.pem"], "migrate: true keeps the key"
    assert after["/f/key.pem"] != before["/f/key.pem"], "without migrate a new key is made"
    old, new = (x509.load_pem_x509_certificate(f["/f/cert.crt"]) for f in (before, after))
    assert old.serial_number != new.serial_number
    assert new.public_key() == load_pem_private_key(after["/f/key.pem"], None).public_key()


def test_the_session_ca_is_readable_by_readers_only(embedded: EmbeddedCas) -> None:
    embedded.cas.create_session(yaml.safe_dump(doc()), "local")
    assert embedded.cas.session_ca_pem("test/app", "local").startswith("-----BEGIN CERTIFICATE-----")
    with pytest.raises(AccessDenied):
        embedded.cas.session_ca_pem("test/app", "mallory")


@pytest.mark.parametrize(
    ("secrets", "message"),
    [
        ([{"name": "c", "kind": "x509", "private_key": "nope"}], "'nope' is not a private-key secret"),
        (
            [
                {"name": "k", "kind": "private-key"},
                {"name": "c", "kind": "x509", "private_key": "k", "issuer": "x"},
            ],
            "issuer 'x' is neither session-ca nor an x509-ca secret",
        ),
        (
            [
                {"name": "k", "kind": "private-key"},
                {"name": "a", "kind": "x509-ca", "private_key": "k", "issuer": "b"},
                {"name": "b", "kind": "x509-ca", "private_key": "k", "issuer": "a"},
            ],
            "cycle",
        ),
        (
            [{"name": "k", "kind": "private-key", "dns": ["x"]}],
            "'dns' does not apply to a private-key secret",
        ),
        ([{"name": "c", "kind": "x509"}], "names its key"),
    ],
)
def test_certificate_secret_rules(secrets: list[dict[str, object]], message: str) -> None:
    text = yaml.safe_dump(session_dict(measurement=M, command=["/bin/true"], secrets=secrets))
    with pytest.raises(PolicyError, match=message):
        parse_session(text)


def test_binary_formats_cannot_go_into_the_environment() -> None:
    d = session_dict(
        measurement=M, command=["/bin/true"], secrets=SECRETS, environment={"P12": "$$VEIL::cert:pkcs12$$"}
    )
    with pytest.raises(PolicyError, match="cannot be placed pkcs12 in a command or environment"):
        parse_session(yaml.safe_dump(d))


def test_certificates_are_renewed_at_provisioning_when_due(embedded: EmbeddedCas) -> None:
    now = [dt.datetime.now(dt.UTC)]
    cas = embedded.cas
    cas._clock = lambda: now[0]
    secrets = [
        {"name": "k", "kind": "private-key"},
        {"name": "short", "kind": "x509", "private_key": "k", "valid_days": 30},
        {"name": "long", "kind": "x509", "private_key": "k", "valid_days": 365, "renew_before_days": 10},
    ]
    document = session_dict(measurement=M, command=["/bin/true"], secrets=secrets)
    document["services"][0]["files"] = [
        {"path": "/short.crt", "content": "$$VEIL::short$$"},
        {"path": "/long.crt", "content": "$$VEIL::long$$"},
    ]
    cas.create_session(yaml.safe_dump(document), "local")

    def certificates() -> dict[str, x509.Certificate]:
        _, files = provisioned(embedded)
        return {p: x509.load_pem_x509_certificate(c) for p, c in files.items()}

    first = certificates()
    now[0] += dt.timedelta(days=15)  # half of 30 days left: not yet (a third is 10 days)
    assert certificates()["/short.crt"].serial_number == first["/short.crt"].serial_number
    now[0] += dt.timedelta(days=6)  # 9 days left: renewed, valid for 30 days from now
    renewed = certificates()
    assert renewed["/short.crt"].serial_number != first["/short.crt"].serial_number
    assert renewed["/short.crt"].not_valid_after_utc > now[0] + dt.timedelta(days=29)
    assert renewed["/short.crt"].public_key() == first["/short.crt"].public_key()  # the same key
    assert [e.event["due"] for e in cas.audit.entries() if e.event["event"] == "certificate.renew"] == [
        ["short"]
    ]
    again = certificates()
    assert again["/short.crt"].serial_number == renewed["/short.crt"].serial_number  # once only


@pytest.mark.parametrize(
    ("charset", "allowed"),
    [
        (None, set(string.ascii_letters + string.digits)),
        ("digits", set(string.digits)),
        ("hex", set("0123456789abcdef")),
        ("printable", {chr(c) for c in range(0x21, 0x7F)}),
        ("xy", {"x", "y"}),
    ],
)
def test_generated_ascii_values_use_their_charset(
    embedded: EmbeddedCas, charset: str | None, allowed: set[str]
) -> None:
    secret: dict[str, object] = {"name": "pw", "kind": "ascii", "size": 400}
    if charset is not None:
        secret["charset"] = charset
    embedded.cas.create_session(yaml.safe_dump(session_dict(measurement=M, secrets=[secret])), "local")
    value = embedded.cas._secret_lookup("test/app")["pw"].decode()
    assert len(value) == 400 and set(value) <= allowed and len(set(value)) > len(allowed) // 2


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ({"name": "a", "kind": "ascii", "charset": "x"}, "at least two printable ASCII"),
        ({"name": "a", "kind": "ascii", "charset": "ab\u00e9"}, "at least two printable ASCII"),
        ({"name": "a", "kind": "ascii", "value": "v", "charset": "digits"}, "applies to generated values"),
        ({"name": "a", "kind": "binary", "charset": "digits"}, "'charset' does not apply to a binary secret"),
        (
            {"name": "c", "kind": "x509", "private_key": "k", "valid_days": 5, "renew_before_days": 5},
            "less than the validity",
        ),
    ],
)
def test_charset_and_renewal_rules(secret: dict[str, object], message: str) -> None:
    secrets = [{"name": "k", "kind": "private-key"}, secret]
    with pytest.raises(PolicyError, match=message):
        parse_session(yaml.safe_dump(session_dict(measurement=M, secrets=secrets)))
