"""Key files of the owner and of the CAS identity are refused when others may read them."""

from pathlib import Path

import pytest

from veil.cas.identity import CasIdentity
from veil.client.config import ClientConfig
from veil.crypto.files import KeyFileError


def test_a_widened_owner_key_is_refused(tmp_path: Path) -> None:
    config = ClientConfig.load(tmp_path / "veil")
    first = config.owner_id()
    assert config.owner_key_file.stat().st_mode & 0o777 == 0o600
    assert ClientConfig.load(tmp_path / "veil").owner_id() == first  # the same key again
    config.owner_key_file.chmod(0o640)
    with pytest.raises(KeyFileError, match="chmod 600"):
        config.owner_key()


def test_a_widened_cas_identity_key_is_refused(tmp_path: Path) -> None:
    identity = CasIdentity.load_or_create(tmp_path)
    assert CasIdentity.load_or_create(tmp_path).digest == identity.digest
    (tmp_path / "identity.key").chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        CasIdentity.load_or_create(tmp_path)
