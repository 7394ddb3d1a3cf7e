"""Volumes as veil 0.1.0 wrote them (format version 1: a path-keyed manifest of version 1 or
2, no journal), built byte for byte from that format's spec, to test the upgrade."""

import hmac
import json
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from veil.crypto import canonical_json
from veil.volume.chunks import tags_root
from veil.volume.keys import VolumeKeys
from veil.volume.manifest import legacy_tag


def build_v1(
    root: Path,
    key: bytes,
    files: dict[str, bytes],
    dirs: tuple[str, ...] = (),
    mode: str = "encrypted",
    chunk_size: int = 8192,
    manifest_version: int = 2,
) -> str:
    """Write a format-1 volume holding ``files`` (and ``dirs``); its tag."""
    volume_id = os.urandom(16)
    keys = VolumeKeys.derive(key, volume_id)
    (root / "objects").mkdir(parents=True)
    header = {
        "format": "veil-volume",
        "version": 1,
        "mode": mode,
        "volume_id": volume_id.hex(),
        "chunk_size": chunk_size,
        "key_check": hmac.new(keys.check, b"veil-volume-key-check", "sha256").hexdigest(),
    }
    (root / "volume.json").write_text(json.dumps(header))
    entries: dict[str, dict[str, object]] = {"/": {"type": "dir", "mode": 0o755, "mtime": 1.7e9}}
    for directory in dirs:
        entries[directory] = {"type": "dir", "mode": 0o750, "mtime": 1.7e9}
    for path, data in files.items():
        file_id = os.urandom(16)
        codec = keys.codec(file_id, mode == "encrypted")
        records, tags = b"", b""
        for index in range(-(-len(data) // chunk_size)):
            record, tag = codec.seal(index, data[index * chunk_size : (index + 1) * chunk_size])
            records, tags = records + record, tags + tag
        where = root / "objects" / file_id.hex()[:2]
        where.mkdir(exist_ok=True)
        (where / file_id.hex()).write_bytes(records)
        entry: dict[str, object] = {
            "type": "file",
            "mode": 0o640,
            "mtime": 1.7e9,
            "size": len(data),
            "id": file_id.hex(),
        }
        if manifest_version == 2 and len(tags) <= 32:
            entry["tags"] = tags.hex()
        else:
            (where / f"{file_id.hex()}.tags").write_bytes(tags)
            entry["root"] = tags_root(tags)
        entries[path] = entry
    plaintext = canonical_json(
        {
            "format": "veil-volume-manifest",
            "version": manifest_version,
            "volume_id": volume_id.hex(),
            "mode": mode,
            "chunk_size": chunk_size,
            "generation": 7,
            "entries": entries,
        }
    )
    nonce = os.urandom(12)
    sealed = nonce + AESGCM(keys.manifest).encrypt(nonce, plaintext, b"veil-manifest-v1" + volume_id)
    (root / "manifest").write_bytes(sealed)
    return legacy_tag(sealed)
