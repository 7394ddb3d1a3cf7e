"""`veil session import-scone`: a SCONE CAS session (language 0.3) becomes a veil session."""

import datetime as dt
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from tests.conftest import veil
from veil.crypto.x509ca import spki_sha256
from veil.policy import PolicyError, parse_session
from veil.policy.scone import convert_scone_session

MRENCLAVE = "33d8" + "ab" * 30


def owner_certificate() -> tuple[str, str]:
    """(PEM of a self-signed owner certificate, the veil owner id of its key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "owner")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(Encoding.PEM).decode(), spki_sha256(key.public_key())


def scone_session(owner_pem: str, mode: str = "hardware") -> str:
    document = {
        "name": "Flask_Demo",
        "version": "0.3.10",
        "predecessor": "f" * 64,
        "access_policy": {
            "read": ["CREATOR", owner_pem],
            "update": ["CREATOR"],
            "create_sessions": ["CREATOR"],
        },
        "security": {
            "attestation": {
                "mode": mode,
                "tolerate": ["debug-mode", "hyperthreading", "outdated-tcb", "insecure-igpu"],
                "ignore_advisories": ["INTEL-SA-00615"],
            }
        },
        "services": [
            {
                "name": "api",
                "image_name": "api_image",
                "mrenclaves": [MRENCLAVE] if mode == "hardware" else [],
                "command": "python3 /app/rest_api.py --token $$SCONE::token:hex$$",
                "environment": {"DB_PASSWORD": "$$SCONE::db_password$$", "PORT": "4996"},
                "pwd": "/app",
                "fspf_path": "/fspf/fs.fspf",
                "fspf_key": "00" * 32,
                "fspf_tag": "11" * 16,
            }
        ],
        "images": [
            {
                "name": "api_image",
                "injection_files": [
                    {"path": "/tls/flask.crt", "content": "$$SCONE::flask.crt$$"},
                    {"path": "/tls/flask.key", "content": "$$SCONE::flask:privatekey$$"},
                    {"path": "/tls/ca.pem", "content": "$$SCONE::ca:crt$$"},
                    {"path": "/tls/raw.key", "content": "$$SCONE::raw_key:privatekey$$"},
                ],
                "volumes": [{"name": "Data_Vol", "path": "/data"}],
            }
        ],
        "volumes": [{"name": "Data_Vol", "export": [{"session": "Analytics", "session_hash": "a" * 64}]}],
        "secrets": [
            {"name": "db_password", "kind": "ascii", "size": 16, "export": {"session": "Analytics"}},
            {"name": "token", "kind": "binary", "size": 32},
            {"name": "salt", "kind": "binary", "value": "00ff10"},
            {"name": "ca_key", "kind": "private-key", "key_type": "P-384", "migrate": True},
            {
                "name": "ca",
                "kind": "x509-ca",
                "private_key": "ca_key",
                "valid_for": "3560d",
                "export_public": True,
            },
            {"name": "raw_key", "kind": "private-key"},
            {
                "name": "flask",
                "kind": "x509",
                "private_key": "raw_key",
                "issuer": "ca",
                "dns": ["api"],
                "endpoint": "server",
            },
            {"name": "shared", "import": {"session": "Other/Sess", "secret": "s"}},
        ],
    }
    return yaml.safe_dump(document, sort_keys=False)


def test_a_scone_session_converts_to_a_valid_veil_session() -> None:
    pem, owner_id = owner_certificate()
    document, warnings = convert_scone_session(scone_session(pem))
    session = parse_session(yaml.safe_dump(document))
    assert session.name == "flask_demo"
    assert session.access_policy.read == ["CREATOR", owner_id]
    assert session.security.tolerate == ["debug-mode", "outdated-tcb", "smt"]
    assert session.security.allowed_advisories == ["INTEL-SA-00615"]
    [service] = session.services
    assert service.attestation[0].platform == "sgx" and service.attestation[0].mr_enclave == MRENCLAVE  # type: ignore[union-attr]
    assert service.command == ["python3", "/app/rest_api.py", "--token", "$$VEIL::token:hex$$"]
    assert service.environment == {"DB_PASSWORD": "$$VEIL::db_password$$", "PORT": "4996"}
    assert service.pwd == "/app"
    assert {f.path: f.content for f in service.files} == {
        "/tls/flask.crt": "$$VEIL::flask:crt$$",
        "/tls/flask.key": "$$VEIL::flask:key$$",
        "/tls/ca.pem": "$$VEIL::ca:crt$$",
        "/tls/raw.key": "$$VEIL::raw_key:pem$$",
    }
    assert [(v.name, v.path) for v in service.volumes] == [("data_vol", "/data")]
    [volume] = session.volumes
    assert volume.accept_fresh and [t.session for t in volume.export] == ["analytics"]
    secrets = {s.name: s for s in session.secrets}
    assert secrets["db_password"].export[0].session == "analytics"
    assert (secrets["salt"].value, secrets["salt"].encoding) == ("00ff10", "hex")
    assert secrets["ca"].valid_days == 3560 and secrets["ca"].export_public
    assert secrets["flask"].usage == ["server"] and secrets["flask"].issuer == "ca"
    assert secrets["shared"].import_ is not None and secrets["shared"].import_.session == "other/sess"
    for expected in (
        "'Flask_Demo' becomes 'flask_demo'",
        "predecessor",
        "create_sessions",
        "'insecure-igpu' has no equivalent",
        "fspf_path/fspf_key/fspf_tag have no equivalent",
        "the pin session_hash of 'analytics' is a SCONE hash",
        "secret 'shared': imported without a kind",
    ):
        assert any(expected in w for w in warnings), (expected, warnings)


def test_the_cli_writes_the_result_and_says_what_is_left_to_do(tmp_path: Path) -> None:
    pem, _ = owner_certificate()
    source = tmp_path / "scone.yaml"
    source.write_text(scone_session(pem, mode="none"))
    out = tmp_path / "veil.yaml"
    result = veil("session", "import-scone", str(source), "-o", str(out))
    assert result.returncode == 1
    assert "mapped to tolerating sim evidence" in result.stderr
    assert "service 'api' has no mrenclave" in result.stderr
    assert "needs edits before it is valid" in result.stderr and "services[0].attestation" in result.stderr
    text = out.read_text()
    assert text.startswith("# converted from scone.yaml") and "# warning: fspf_path" not in text
    assert "# warning: service 'api': fspf_path" in text
    assert "sim" in yaml.safe_load(text)["security"]["tolerate"]

    source.write_text(scone_session(pem))
    result = veil("session", "import-scone", str(source))
    assert result.returncode == 0, result.stderr
    assert parse_session(result.stdout).name == "flask_demo"


@pytest.mark.parametrize("text", ["- just\n- a list\n", "name: [unclosed\n"])
def test_input_that_is_not_a_scone_session_is_refused(text: str) -> None:
    with pytest.raises(PolicyError):
        convert_scone_session(text)


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ("secrets: [k]", "3:11: error: secrets[0]: expected a mapping, found a string"),
        ("secrets: {name: k}", "3:10: error: secrets: expected a list, found a mapping"),
        ("services: api", "3:11: error: services: expected a list, found a string"),
        ("security: yes", "3:11: error: security: expected a mapping"),
        ("volumes: [{name: v, import: other}]", "error: volumes[0].import: expected a mapping"),
        ("secrets: [{name: k, export: [3]}]", "error: secrets[0].export: an export names a session"),
        ("services: [{name: a, environment: [A=1]}]", "error: services[0].environment: expected a mapping"),
        ("services: [{name: a, attestation: {mrenclave: [x]}}]", "services[0].attestation: expected a list"),
        ("images: [{name: i, injection_files: [x]}]", "images[0].injection_files[0]: expected a mapping"),
        ("services: [{command: x}]", "3:12: error: services[0]: 'name' is missing"),
    ],
)
def test_every_malformed_part_is_located_not_an_internal_error(body: str, where: str) -> None:
    with pytest.raises(PolicyError) as caught:
        convert_scone_session(f'name: shop\nversion: "0.3"\n{body}\n', "s.yaml")
    assert where in str(caught.value)


def test_an_export_may_be_one_mapping_or_one_name() -> None:
    for export in ("{session: other, session_hash: abcd}", "other"):
        text = f'name: shop\nversion: "0.3"\nsecrets: [{{name: k, kind: ascii, export: {export}}}]\n'
        document, _ = convert_scone_session(text)
        assert document["secrets"][0]["export"] == [{"session": "other"}]
