"""Key files of the owner and of the CAS identity are refused when others may read them."""

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from veil.cas import Cas
from veil.cas.identity import CasIdentity
from veil.client.config import ClientConfig
from veil.crypto.files import KeyFileError
from veil.crypto.x509ca import CertificateAuthority


def test_a_widened_owner_key_is_refused(tmp_path: Path) -> None:
    config = ClientConfig.load(tmp_path / "veil")
    first = config.owner_id()
    assert config.owner_key_file.stat().st_mode & 0o777 == 0o600
    assert ClientConfig.load(tmp_path / "veil").owner_id() == first  # the same key again
    config.owner_key_file.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        config.owner_key()


def test_the_cas_identity_is_sealed_in_the_database_and_a_widened_legacy_key_is_refused(
    tmp_path: Path,
) -> None:
    cas = Cas.open_embedded(tmp_path / "db")
    identity = CasIdentity.load_or_store(cas.records, tmp_path)
    assert CasIdentity.load_or_store(cas.records, tmp_path).digest == identity.digest
    assert not (tmp_path / "identity.key").exists(), "never written to a file"
    cas.close()
    # an older data directory's identity key is imported, unless others may read it
    legacy = CertificateAuthority.create("veil CAS")
    key_pem = legacy.key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "identity.key").write_bytes(key_pem)
    (tmp_path / "old" / "identity.crt").write_text(legacy.certificate_pem)
    (tmp_path / "old" / "identity.key").chmod(0o644)
    fresh = Cas.open_embedded(tmp_path / "db2")
    with pytest.raises(KeyFileError, match="readable by others"):
        CasIdentity.load_or_store(fresh.records, tmp_path / "old")
    (tmp_path / "old" / "identity.key").chmod(0o600)
    imported = CasIdentity.load_or_store(fresh.records, tmp_path / "old")
    assert imported.digest == CasIdentity(legacy).digest
    fresh.close()
