"""Volume tags in the CAS: only an attested runtime of the right service, compare-and-swap."""

import dataclasses

import pytest
import yaml
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from tests.conftest import EmbeddedCas, session_dict
from veil.cas import VolumeTagRefused
from veil.client import EmbeddedCasClient
from veil.protocol import VolumeTagUpdate
from veil.runtime.attest import Provisioned, provision
from veil.tee import SimEvidenceSource

M = "sha256:" + "ab" * 32


def make(embedded: EmbeddedCas, name: str) -> Provisioned:
    doc = session_dict(name=name, measurement=M, command=["/bin/true"])
    doc["volumes"] = [{"name": "data", "accept_fresh": True}]
    doc["services"][0]["volumes"] = [{"name": "data", "path": "/data"}]
    embedded.cas.create_session(yaml.safe_dump(doc), "owner")
    return provision(EmbeddedCasClient(embedded.cas), SimEvidenceSource(embedded.platform), f"{name}/app", M)


def update(
    p: Provisioned, previous: str | None, tag: str, config_id: str | None = None, volume: str = "data"
) -> VolumeTagUpdate:
    unsigned = VolumeTagUpdate(
        config_id or f"{p.bundle.session}/app",
        volume,
        previous,
        tag,
        p.instance_certificate.public_bytes(Encoding.PEM).decode(),
        b"",
    )
    signature = p.instance_key.sign(unsigned.signed_bytes(), ec.ECDSA(hashes.SHA256()))
    return dataclasses.replace(unsigned, signature=signature)


def test_the_bundle_carries_the_key_and_no_tag_yet(embedded: EmbeddedCas) -> None:
    p = make(embedded, "a/one")
    [volume] = p.bundle.volumes
    assert (volume.name, volume.path, volume.tag, volume.accept_fresh, len(volume.key)) == (
        "data",
        "/data",
        None,
        True,
        32,
    )


def test_tags_move_forward_with_compare_and_swap(embedded: EmbeddedCas) -> None:
    p = make(embedded, "a/one")
    embedded.cas.push_volume_tag(update(p, None, "t1"))
    embedded.cas.push_volume_tag(update(p, "t1", "t2"))
    assert embedded.cas.volume_tag("a/one", "data") == "t2"
    with pytest.raises(VolumeTagRefused, match="an old tag never overwrites a newer one"):
        embedded.cas.push_volume_tag(update(p, "t1", "t-old-writer"))
    with pytest.raises(VolumeTagRefused):
        embedded.cas.push_volume_tag(update(p, None, "t-fresh-again"))
    assert embedded.cas.volume_tag("a/one", "data") == "t2"


def test_another_sessions_runtime_cannot_push_a_tag(embedded: EmbeddedCas) -> None:
    make(embedded, "a/one")
    intruder = make(embedded, "b/two")
    with pytest.raises(VolumeTagRefused, match="not issued by the CA of session 'a/one'"):
        embedded.cas.push_volume_tag(update(intruder, None, "evil", config_id="a/one/app"))
    assert embedded.cas.volume_tag("a/one", "data") is None
    last = embedded.cas.audit.entries()[-1].event
    assert last["event"] == "volume.tag.refuse"


def test_a_tag_update_must_be_signed_by_the_instance_key(embedded: EmbeddedCas) -> None:
    p = make(embedded, "a/one")
    forged = dataclasses.replace(update(p, None, "t1"), tag="t-other")
    with pytest.raises(VolumeTagRefused, match="not signed by the runtime's instance key"):
        embedded.cas.push_volume_tag(forged)


def test_an_unknown_volume_or_service_is_refused(embedded: EmbeddedCas) -> None:
    p = make(embedded, "a/one")
    wrong = dataclasses.replace(update(p, None, "t1"), volume="other")
    with pytest.raises(VolumeTagRefused, match="does not use volume 'other'"):
        embedded.cas.push_volume_tag(wrong)


def _shipped(
    embedded: EmbeddedCas, name: str, key: bytes, tag: str, predecessor: str | None = None
) -> Provisioned:
    doc = session_dict(name=name, measurement=M, command=["/bin/true"])
    doc["secrets"] = [{"name": "data-key", "kind": "binary", "value": key.hex(), "encoding": "hex"}]
    doc["volumes"] = [{"name": "data", "key": "data-key", "initial_tag": tag}]
    doc["services"][0]["volumes"] = [{"name": "data", "path": "/data"}]
    if predecessor:
        doc["predecessor"] = predecessor
        embedded.cas.update_session(yaml.safe_dump(doc), "owner")
    else:
        embedded.cas.create_session(yaml.safe_dump(doc), "owner")
    return provision(EmbeddedCasClient(embedded.cas), SimEvidenceSource(embedded.platform), f"{name}/app", M)


def test_a_shipped_volume_uses_the_session_key_and_starts_at_its_initial_tag(embedded: EmbeddedCas) -> None:
    """A volume made outside the CAS (`veil image convert`): the session names its key and
    the tag it was shipped with; from then on tags only move forward."""
    key, shipped = bytes(range(32)), "1" * 64
    p = _shipped(embedded, "a/shipped", key, shipped)
    [volume] = p.bundle.volumes
    assert (volume.key, volume.tag) == (key, shipped)
    embedded.cas.push_volume_tag(update(p, shipped, "2" * 64))
    with pytest.raises(VolumeTagRefused):
        embedded.cas.push_volume_tag(update(p, shipped, "3" * 64))  # the shipped state is now old

    # the same key again (an unrelated update): the tag stays where the program left it
    current = embedded.cas.session_hash_of("a/shipped")
    again = _shipped(embedded, "a/shipped", key, shipped, predecessor=current)
    assert again.bundle.volumes[0].tag == "2" * 64

    # a new conversion (new key): a new volume, starting at its own shipped tag
    current = embedded.cas.session_hash_of("a/shipped")
    fresh = _shipped(embedded, "a/shipped", bytes(32), "4" * 64, predecessor=current)
    assert (fresh.bundle.volumes[0].key, fresh.bundle.volumes[0].tag) == (bytes(32), "4" * 64)


def test_a_read_only_volume_takes_no_tag_even_from_its_own_runtime(embedded: EmbeddedCas) -> None:
    shipped = "cd" * 32
    doc = session_dict(name="a/code", measurement=M, command=["/bin/true"])
    doc["volumes"] = [{"name": "data", "initial_tag": shipped, "readonly": True}]
    doc["services"][0]["volumes"] = [{"name": "data", "path": "/code"}]
    embedded.cas.create_session(yaml.safe_dump(doc), "owner")
    p = provision(EmbeddedCasClient(embedded.cas), SimEvidenceSource(embedded.platform), "a/code/app", M)
    assert [(v.tag, v.readonly) for v in p.bundle.volumes] == [(shipped, True)]
    with pytest.raises(VolumeTagRefused, match="read-only: its tag does not move"):
        embedded.cas.push_volume_tag(update(p, shipped, "ef" * 32))
    assert embedded.cas.volume_tag("a/code", "data") == shipped


def test_a_read_only_volume_is_never_created_fresh(embedded: EmbeddedCas) -> None:
    doc = session_dict(name="a/code", measurement=M, command=["/bin/true"])
    doc["volumes"] = [{"name": "data", "readonly": True, "accept_fresh": True}]
    doc["services"][0]["volumes"] = [{"name": "data", "path": "/code"}]
    with pytest.raises(Exception, match="never created fresh"):
        embedded.cas.create_session(yaml.safe_dump(doc), "owner")
