"""Sharing between sessions: exports, imports, pins, export_public; only what was exported."""

from typing import Any

import pytest
import yaml

from tests.conftest import EmbeddedCas, session_dict
from tests.unit.cas.test_volume_tags import update as tag_update
from veil.cas import SessionNotFound, VolumeTagRefused
from veil.cas.errors import CasError
from veil.client import EmbeddedCasClient
from veil.policy import PolicyError, parse_session
from veil.protocol import AttestationRefused
from veil.runtime.attest import Provisioned, provision
from veil.tee import SimEvidenceSource

M = "sha256:" + "cd" * 32
#: owner ids (what `veil owner id` prints)
OWNER, ANALYST, MALLORY = "11" * 32, "22" * 32, "33" * 32


def owner_doc(pin: str | None = None, owner_pin: str | None = None, **extra: Any) -> dict[str, Any]:
    target: dict[str, Any] = {"session": "analyst/job"}
    if pin is not None:
        target["session_hash"] = pin
    if owner_pin is not None:
        target["owner"] = owner_pin
    doc = session_dict(name="owner/data", measurement=M, command=["/bin/true"], secrets=[])
    doc["secrets"] = [
        {"name": "token", "kind": "ascii", "size": 20, "export": [target]},
        {"name": "hidden", "kind": "ascii", "size": 20},
        {"name": "banner", "kind": "ascii", "value": "hello world", "export_public": True},
        {"name": "tls_key", "kind": "private-key"},
        {"name": "tls", "kind": "x509", "private_key": "tls_key", "export_public": True},
    ]
    doc["volumes"] = [{"name": "dataset", "accept_fresh": True, "export": [target]}]
    doc["services"][0]["volumes"] = [{"name": "dataset", "path": "/data"}]
    doc.update(extra)
    return doc


def analyst_doc(
    secret: str = "token",
    kind: str = "ascii",
    volume: str = "dataset",
    arg: str = "x",
    exporter: str = OWNER,
    name: str = "analyst/job",
) -> dict[str, Any]:
    source = {"session": "owner/data", "owner": exporter}
    doc = session_dict(
        name=name,
        measurement=M,
        command=["/bin/true", arg],
        secrets=[{"name": "imported", "kind": kind, "import": {**source, "secret": secret}}],
        environment={"TOKEN": "$$VEIL::imported$$"},
    )
    doc["volumes"] = [{"name": "shared", "import": {**source, "volume": volume}}]
    doc["services"][0]["volumes"] = [{"name": "shared", "path": "/data"}]
    return doc


def create(embedded: EmbeddedCas, doc: dict[str, Any], owner: str = OWNER) -> str:
    return embedded.cas.create_session(yaml.safe_dump(doc), owner).hash


def attest(embedded: EmbeddedCas, config_id: str) -> Provisioned:
    return provision(EmbeddedCasClient(embedded.cas), SimEvidenceSource(embedded.platform), config_id, M)


def test_the_importer_gets_exactly_the_exported_secret_and_volume(embedded: EmbeddedCas) -> None:
    analyst_hash = create(embedded, analyst_doc(), ANALYST)
    create(embedded, owner_doc(pin=analyst_hash), OWNER)
    provisioned = attest(embedded, "analyst/job/app")
    token = embedded.cas._secret_lookup("owner/data")["token"]
    assert provisioned.bundle.environment["TOKEN"] == token.decode()
    [volume] = provisioned.bundle.volumes
    owner_key = embedded.cas.volume_key_for_owner("owner/data", "dataset", OWNER)
    assert (volume.name, volume.path, volume.key) == ("shared", "/data", owner_key)


def test_a_volume_has_one_tag_for_exporter_and_importer(embedded: EmbeddedCas) -> None:
    create(embedded, analyst_doc(), ANALYST)
    create(embedded, owner_doc(), OWNER)
    analyst = attest(embedded, "analyst/job/app")
    embedded.cas.push_volume_tag(tag_update(analyst, None, "t1", "analyst/job/app", volume="shared"))
    assert embedded.cas.volume_tag("owner/data", "dataset") == "t1"
    owner = attest(embedded, "owner/data/app")
    embedded.cas.push_volume_tag(tag_update(owner, "t1", "t2", volume="dataset"))
    with pytest.raises(VolumeTagRefused, match="newer tag"):
        embedded.cas.push_volume_tag(tag_update(analyst, "t1", "t3", "analyst/job/app", volume="shared"))


def test_a_secret_that_is_not_exported_is_refused(embedded: EmbeddedCas) -> None:
    create(embedded, analyst_doc(secret="hidden"), ANALYST)
    create(embedded, owner_doc(), OWNER)
    with pytest.raises(
        AttestationRefused, match="'owner/data' does not export secret 'hidden' to session 'analyst/job'"
    ):
        attest(embedded, "analyst/job/app")


def test_a_volume_that_is_not_exported_is_refused(embedded: EmbeddedCas) -> None:
    owner = owner_doc()
    owner["volumes"].append({"name": "private"})
    create(embedded, analyst_doc(volume="private"), ANALYST)
    create(embedded, owner, OWNER)
    with pytest.raises(AttestationRefused, match="does not export volume 'private'"):
        attest(embedded, "analyst/job/app")


def test_an_export_to_another_session_is_not_an_export_to_this_one(embedded: EmbeddedCas) -> None:
    create(embedded, analyst_doc(name="mallory/job"), MALLORY)
    create(embedded, owner_doc(owner_pin=ANALYST), OWNER)
    with pytest.raises(AttestationRefused, match="does not export secret 'token' to session 'mallory/job'"):
        attest(embedded, "mallory/job/app")


def test_an_import_from_a_missing_session_is_refused_and_warned_about(embedded: EmbeddedCas) -> None:
    record = embedded.cas.create_session(yaml.safe_dump(analyst_doc()), ANALYST)
    assert any("'owner/data', which does not exist" in w for w in embedded.cas.sharing_warnings(record))
    with pytest.raises(AttestationRefused, match="which does not exist"):
        attest(embedded, "analyst/job/app")


def test_changing_the_importer_breaks_the_pin_naming_both_sessions(embedded: EmbeddedCas) -> None:
    first = create(embedded, analyst_doc(), ANALYST)
    create(embedded, owner_doc(pin=first), OWNER)
    attest(embedded, "analyst/job/app")
    changed = analyst_doc(arg="cat-everything")
    changed["predecessor"] = first
    record = embedded.cas.update_session(yaml.safe_dump(changed), ANALYST)
    assert any("pinned at" in w for w in embedded.cas.sharing_warnings(record))
    with pytest.raises(AttestationRefused) as refused:
        attest(embedded, "analyst/job/app")
    message = str(refused.value)
    assert "session 'owner/data'" in message and "session 'analyst/job' pinned at hash" in message
    assert first[:16] in message and record.hash[:16] in message


def test_a_broken_pin_stops_tag_updates_too(embedded: EmbeddedCas) -> None:
    first = create(embedded, analyst_doc(), ANALYST)
    owner_hash = create(embedded, owner_doc(pin=first), OWNER)
    analyst = attest(embedded, "analyst/job/app")
    repinned = owner_doc(pin="0" * 64, predecessor=owner_hash)
    embedded.cas.update_session(yaml.safe_dump(repinned), OWNER)
    with pytest.raises(VolumeTagRefused, match="pinned at hash"):
        embedded.cas.push_volume_tag(tag_update(analyst, None, "t1", "analyst/job/app", volume="shared"))


def test_the_declared_kind_must_match_the_exported_one(embedded: EmbeddedCas) -> None:
    create(embedded, analyst_doc(kind="private-key"), ANALYST)
    create(embedded, owner_doc(), OWNER)
    with pytest.raises(
        AttestationRefused, match="is ascii, but session 'analyst/job' imports it as private-key"
    ):
        attest(embedded, "analyst/job/app")


def test_the_importer_cannot_read_the_exporter_or_its_volume_key(embedded: EmbeddedCas) -> None:
    create(embedded, analyst_doc(), ANALYST)
    create(embedded, owner_doc(), OWNER)
    with pytest.raises(CasError):
        embedded.cas.get_session("owner/data", ANALYST)
    with pytest.raises(CasError):
        embedded.cas.volume_key_for_owner("owner/data", "dataset", ANALYST)
    with pytest.raises(CasError, match="no volume 'shared'"):
        embedded.cas.volume_key_for_owner("analyst/job", "shared", ANALYST)


def test_export_public_values_are_readable_without_their_private_parts(embedded: EmbeddedCas) -> None:
    create(embedded, owner_doc(owner_pin=ANALYST), OWNER)
    assert embedded.cas.public_secret("owner/data", "banner", None) == b"hello world"
    assert embedded.cas.public_secret("owner/data", "tls", None).startswith(b"-----BEGIN CERTIFICATE-----")
    chain = embedded.cas.public_secret("owner/data", "tls", "chain")
    assert chain.count(b"BEGIN CERTIFICATE") == 2
    with pytest.raises(CasError, match="available as crt, chain, der"):
        embedded.cas.public_secret("owner/data", "tls", "key")
    for name in ("token", "hidden", "tls_key", "nothing"):
        with pytest.raises(SessionNotFound, match=f"no public secret '{name}'"):
            embedded.cas.public_secret("owner/data", name, None)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"secrets": [{"name": "k", "kind": "private-key", "export_public": True}]},
            "cannot be export_public",
        ),
        (
            {
                "secrets": [
                    {"name": "i", "kind": "ascii", "size": 3, "import": {"session": "a/b", "secret": "s"}}
                ]
            },
            "remove size",
        ),
        (
            {"volumes": [{"name": "v", "accept_fresh": True, "import": {"session": "a/b", "volume": "v"}}]},
            "remove accept_fresh",
        ),
        (
            {"secrets": [{"name": "i", "kind": "ascii", "import": {"session": "test/app", "secret": "s"}}]},
            "cannot import from itself",
        ),
        (
            {
                "secrets": [
                    {"name": "s", "kind": "ascii", "export": [{"session": "x/y", "session_hash": "abc"}]}
                ]
            },
            "session_hash is a session hash",
        ),
        (
            {
                "secrets": [
                    {"name": "k", "kind": "binary", "import": {"session": "a/b", "secret": "k"}},
                ],
                "volumes": [{"name": "v", "key": "k"}],
            },
            "'k' is imported",
        ),
    ],
)
def test_bad_sharing_declarations_are_located_errors(change: dict[str, Any], message: str) -> None:
    doc = {**session_dict(measurement=M, command=["/bin/true"]), **change}
    with pytest.raises(PolicyError, match=message):
        parse_session(yaml.safe_dump(doc), "s.yaml")


def measurement_session(value: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The owner exports the measurement the analyst's program must have; the analyst's
    attestation entry names it by placeholder."""
    owner = session_dict(name="owner/data", measurement=M, command=["/bin/true"], secrets=[])
    owner["secrets"] = [
        {"name": "approved", "kind": "ascii", "value": value, "export": [{"session": "analyst/job"}]}
    ]
    analyst = session_dict(name="analyst/job", measurement=M, command=["/bin/true"], secrets=[])
    source = {"session": "owner/data", "secret": "approved", "owner": OWNER}
    analyst["secrets"] = [{"name": "approved", "kind": "ascii", "import": source}]
    analyst["services"][0]["attestation"] = [{"platform": "sim", "measurement": "$$VEIL::approved$$"}]
    return owner, analyst


def test_attestation_values_may_come_from_secrets(embedded: EmbeddedCas) -> None:
    owner, analyst = measurement_session(M)
    create(embedded, analyst, ANALYST)
    create(embedded, owner, OWNER)
    assert attest(embedded, "analyst/job/app").bundle.session == "analyst/job"


def test_an_attestation_value_from_a_secret_must_match(embedded: EmbeddedCas) -> None:
    owner, analyst = measurement_session("sha256:" + "00" * 32)
    create(embedded, analyst, ANALYST)
    create(embedded, owner, OWNER)
    with pytest.raises(AttestationRefused, match="matches no attestation entry"):
        attest(embedded, "analyst/job/app")


def test_an_attestation_value_from_a_secret_is_validated_when_filled_in(embedded: EmbeddedCas) -> None:
    owner, analyst = measurement_session("not-a-measurement")
    create(embedded, analyst, ANALYST)
    create(embedded, owner, OWNER)
    with pytest.raises(
        AttestationRefused, match=r"attestation\[0\]: with its secrets filled in, the entry is not valid"
    ):
        attest(embedded, "analyst/job/app")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"platform": "sim", "measurement": "$$VEIL::nope$$"}, "unknown secret 'nope'"),
        ({"platform": "sim", "measurement": "$$VEIL::pw$$", "mr_td": "x"}, "unknown key"),
        ({"platform": "vax", "measurement": "$$VEIL::pw$$"}, "unknown platform 'vax'"),
    ],
)
def test_bad_templated_attestation_entries_are_refused(entry: dict[str, Any], message: str) -> None:
    doc = session_dict(measurement=M, command=["/bin/true"])
    doc["services"][0]["attestation"] = [entry]
    with pytest.raises(PolicyError, match=message):
        parse_session(yaml.safe_dump(doc), "s.yaml")


# -- pins: a session created later under an expected name is not the one meant -----------


def test_sharing_with_a_session_that_does_not_exist_yet_needs_a_pin(embedded: EmbeddedCas) -> None:
    doc = owner_doc()
    with pytest.raises(PolicyError) as refused:
        embedded.cas.create_session(yaml.safe_dump(doc, sort_keys=False), OWNER, "owner.yaml")
    problems = refused.value.problems
    assert [(p.line > 0, "analyst/job" in p.message) for p in problems] == [(True, True)] * 2
    assert all("owner: OWNER_ID" in p.hint and "session_hash" in p.hint for p in problems)
    doc = analyst_doc()
    del doc["secrets"][0]["import"]["owner"]
    with pytest.raises(PolicyError, match="session 'owner/data' does not exist yet"):
        embedded.cas.create_session(yaml.safe_dump(doc), ANALYST)
    assert embedded.cas.session_hash_of("owner/data") is None
    assert embedded.cas.session_hash_of("analyst/job") is None


def test_an_export_pinned_to_an_owner_does_not_reach_a_squatter(embedded: EmbeddedCas) -> None:
    create(embedded, owner_doc(owner_pin=ANALYST), OWNER)
    create(embedded, analyst_doc(), MALLORY)  # Mallory takes the name the owner exported to
    with pytest.raises(AttestationRefused) as refused:
        attest(embedded, "analyst/job/app")
    assert f"as created by owner {ANALYST[:16]}" in str(refused.value)
    assert f"was created by {MALLORY[:16]}" in str(refused.value)


def test_an_import_pinned_to_an_owner_does_not_take_a_squatters_values(embedded: EmbeddedCas) -> None:
    create(embedded, analyst_doc(), ANALYST)  # imports from owner/data, created by OWNER
    create(embedded, owner_doc(), MALLORY)  # Mallory creates owner/data, exporting her own values
    with pytest.raises(
        AttestationRefused, match=f"imports from session 'owner/data' as created by owner {OWNER[:16]}"
    ):
        attest(embedded, "analyst/job/app")


def test_an_unpinned_export_is_pinned_to_the_importers_creator_when_stored(embedded: EmbeddedCas) -> None:
    create(embedded, analyst_doc(), ANALYST)
    create(embedded, owner_doc(), OWNER)
    stored = embedded.cas.get_session("owner/data", OWNER)
    assert stored.peers == {"analyst/job": ANALYST}
    assert attest(embedded, "analyst/job/app").bundle.environment["TOKEN"]


def test_a_record_stored_before_pins_were_recorded_shares_nothing(embedded: EmbeddedCas) -> None:
    create(embedded, analyst_doc(), ANALYST)
    create(embedded, owner_doc(), OWNER)
    version, raw = embedded.cas.records.get("session", "owner/data")  # type: ignore[misc]
    embedded.cas.records.put("session", "owner/data", {k: v for k, v in raw.items() if k != "peers"}, version)
    with pytest.raises(AttestationRefused, match="stored before the CAS recorded pins: update 'owner/data'"):
        attest(embedded, "analyst/job/app")
