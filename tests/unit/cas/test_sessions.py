"""Sessions in the CAS: create, update with predecessor, secrets kept, sealed storage, audit."""

import sqlite3
from pathlib import Path

import pytest
import yaml

from tests.conftest import EmbeddedCas, session_dict, session_yaml
from veil.cas import AccessDenied, AuditChainBroken, Cas, Conflict, PredecessorMismatch, StorageCorrupted
from veil.cas.errors import MasterKeyError
from veil.policy import PolicyError


def secrets_of(cas: Cas, session: str) -> dict[str, bytes]:
    return cas._secret_lookup(session)


def update_text(previous_hash: str, **kwargs: object) -> str:
    return yaml.safe_dump({**session_dict(**kwargs), "predecessor": previous_hash})  # type: ignore[arg-type]


def test_create_then_update_naming_the_predecessor(embedded: EmbeddedCas) -> None:
    first = embedded.cas.create_session(session_yaml(), "local")
    second = embedded.cas.update_session(update_text(first.hash, environment={"X": "1"}), "local")
    assert second.revision == 2
    assert embedded.cas.session_hash_of("test/app") == second.hash


def test_create_twice_is_a_conflict(embedded: EmbeddedCas) -> None:
    embedded.cas.create_session(session_yaml(), "local")
    with pytest.raises(Conflict, match="already exists"):
        embedded.cas.create_session(session_yaml(), "local")


def test_update_without_predecessor_is_refused_and_nothing_changes(embedded: EmbeddedCas) -> None:
    first = embedded.cas.create_session(session_yaml(), "local")
    with pytest.raises(PredecessorMismatch, match=f"predecessor: {first.hash}"):
        embedded.cas.update_session(session_yaml(environment={"X": "1"}), "local")
    assert embedded.cas.session_hash_of("test/app") == first.hash


def test_update_with_a_wrong_predecessor_is_refused_and_nothing_changes(embedded: EmbeddedCas) -> None:
    first = embedded.cas.create_session(session_yaml(), "local")
    before = secrets_of(embedded.cas, "test/app")
    with pytest.raises(PredecessorMismatch, match="is not the current hash"):
        embedded.cas.update_session(update_text("0" * 64, environment={"X": "1"}), "local")
    assert embedded.cas.session_hash_of("test/app") == first.hash
    assert secrets_of(embedded.cas, "test/app") == before


def test_a_stale_predecessor_loses_against_a_concurrent_update(embedded: EmbeddedCas) -> None:
    first = embedded.cas.create_session(session_yaml(), "local")
    embedded.cas.update_session(update_text(first.hash, environment={"A": "1"}), "local")
    with pytest.raises(PredecessorMismatch):
        embedded.cas.update_session(update_text(first.hash, environment={"B": "1"}), "local")


def test_generated_secrets_are_kept_when_their_definition_is_unchanged(embedded: EmbeddedCas) -> None:
    first = embedded.cas.create_session(session_yaml(), "local")
    value = secrets_of(embedded.cas, "test/app")["pw"]
    assert len(value) == 24 and value.isalnum()
    embedded.cas.update_session(update_text(first.hash, environment={"X": "1"}), "local")
    assert secrets_of(embedded.cas, "test/app")["pw"] == value


def test_a_changed_definition_gives_a_new_value(embedded: EmbeddedCas) -> None:
    first = embedded.cas.create_session(session_yaml(), "local")
    value = secrets_of(embedded.cas, "test/app")["pw"]
    embedded.cas.update_session(
        update_text(first.hash, secrets=[{"name": "pw", "kind": "ascii", "size": 30}]), "local"
    )
    new = secrets_of(embedded.cas, "test/app")["pw"]
    assert len(new) == 30 and new != value


def test_explicit_values_are_stored_as_given(embedded: EmbeddedCas) -> None:
    secrets = [
        {"name": "pw", "kind": "ascii", "value": "hunter2"},
        {"name": "k", "kind": "binary", "value": "AAEC", "encoding": "base64"},
    ]
    embedded.cas.create_session(session_yaml(secrets=secrets), "local")
    assert secrets_of(embedded.cas, "test/app") == {"pw": b"hunter2", "k": b"\x00\x01\x02"}


def test_only_allowed_owners_may_update(embedded: EmbeddedCas) -> None:
    first = embedded.cas.create_session(session_yaml(), "alice")
    with pytest.raises(AccessDenied):
        embedded.cas.update_session(update_text(first.hash, environment={"X": "1"}), "mallory")
    with pytest.raises(AccessDenied):
        embedded.cas.get_session("test/app", "mallory")
    assert embedded.cas.session_hash_of("test/app") == first.hash


def test_an_invalid_session_is_refused_before_anything_is_stored(embedded: EmbeddedCas) -> None:
    with pytest.raises(PolicyError):
        embedded.cas.create_session("name: x\nversion: '1'\nbogus: 1\n", "local")
    assert embedded.cas.session_hash_of("x") is None


def test_no_secret_value_is_stored_in_plaintext(embedded: EmbeddedCas, tmp_path: Path) -> None:
    embedded.cas.create_session(
        session_yaml(secrets=[{"name": "pw", "kind": "ascii", "value": "PLAINTEXT-MARK-1234"}]), "local"
    )
    embedded.cas.close()
    for path in (tmp_path / "cas").iterdir():
        assert b"PLAINTEXT-MARK-1234" not in path.read_bytes(), path


def test_one_flipped_byte_in_a_sealed_sqlite_record_is_detected(tmp_path: Path) -> None:
    cas = Cas.open_embedded(tmp_path / "cas")
    cas.create_session(session_yaml(), "local")
    cas.close()
    db = sqlite3.connect(tmp_path / "cas" / "cas.db")
    blob = bytearray(db.execute("SELECT blob FROM records WHERE kind = 'session'").fetchone()[0])
    blob[len(blob) // 2] ^= 0x01
    db.execute("UPDATE records SET blob = ? WHERE kind = 'session'", (bytes(blob),))
    db.commit()
    db.close()
    cas = Cas.open_embedded(tmp_path / "cas")
    with pytest.raises(StorageCorrupted, match="session/test/app failed authentication"):
        cas.get_session("test/app", "local")
    cas.close()


def test_a_record_copied_onto_another_is_detected(tmp_path: Path) -> None:
    cas = Cas.open_embedded(tmp_path / "cas")
    cas.create_session(session_yaml(name="a/one"), "local")
    cas.create_session(session_yaml(name="a/two"), "local")
    cas.close()
    db = sqlite3.connect(tmp_path / "cas" / "cas.db")
    blob = db.execute("SELECT blob FROM records WHERE kind = 'session' AND key = 'a/one'").fetchone()[0]
    db.execute("UPDATE records SET blob = ? WHERE kind = 'session' AND key = 'a/two'", (blob,))
    db.commit()
    db.close()
    cas = Cas.open_embedded(tmp_path / "cas")
    with pytest.raises(StorageCorrupted):
        cas.get_session("a/two", "local")
    cas.close()


def test_the_audit_chain_records_changes_and_detects_edits(tmp_path: Path) -> None:
    cas = Cas.open_embedded(tmp_path / "cas")
    first = cas.create_session(session_yaml(), "local")
    cas.update_session(update_text(first.hash, environment={"X": "1"}), "local")
    assert [e.event["event"] for e in cas.audit.entries()] == ["session.create", "session.update"]
    assert cas.audit.verify() == 2
    cas.close()
    db = sqlite3.connect(tmp_path / "cas" / "cas.db")
    body = db.execute("SELECT body FROM audit_log WHERE seq = 1").fetchone()[0]
    db.execute("UPDATE audit_log SET body = ? WHERE seq = 1", (body.replace(b"local", b"evil!"),))
    db.commit()
    db.close()
    cas = Cas.open_embedded(tmp_path / "cas")
    with pytest.raises(AuditChainBroken, match="entry 1 was modified"):
        cas.audit.verify()
    cas.close()


def test_a_value_of_the_wrong_type_is_reported_as_corruption(tmp_path: Path) -> None:
    cas = Cas.open_embedded(tmp_path / "cas")
    cas.create_session(session_yaml(), "local")
    cas.close()
    db = sqlite3.connect(tmp_path / "cas" / "cas.db")
    db.execute("UPDATE audit_log SET body = 'text' WHERE seq = 1")
    db.execute("UPDATE records SET blob = 'text' WHERE kind = 'session'")
    db.commit()
    db.close()
    cas = Cas.open_embedded(tmp_path / "cas")
    with pytest.raises(StorageCorrupted, match="audit entry 1 is not a sealed blob"):
        cas.audit.verify()
    with pytest.raises(StorageCorrupted, match="record session/test/app is not a sealed blob"):
        cas.get_session("test/app", "local")
    cas.close()


def test_removing_the_newest_audit_entry_is_detected(tmp_path: Path) -> None:
    cas = Cas.open_embedded(tmp_path / "cas")
    first = cas.create_session(session_yaml(), "local")
    cas.update_session(update_text(first.hash, environment={"X": "1"}), "local")
    cas.close()
    db = sqlite3.connect(tmp_path / "cas" / "cas.db")
    db.execute("DELETE FROM audit_log WHERE seq = 2")
    db.commit()
    db.close()
    cas = Cas.open_embedded(tmp_path / "cas")
    with pytest.raises(AuditChainBroken, match="entries were removed"):
        cas.audit.verify()
    cas.close()


def test_master_key_file_is_private_and_a_widened_mode_is_refused(tmp_path: Path) -> None:
    Cas.open_embedded(tmp_path / "cas").close()
    key_file = tmp_path / "cas" / "master.key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key_file.chmod(0o644)
    with pytest.raises(MasterKeyError, match="chmod 600"):
        Cas.open_embedded(tmp_path / "cas")
