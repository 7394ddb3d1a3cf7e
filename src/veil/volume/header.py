"""A volume's plaintext header (``volume.json``) and the lock one process holds on it
(docs/volume-format.md, "Layout")."""

import fcntl
import hmac
import json
import os
from pathlib import Path
from typing import Any

from veil.volume.errors import IntegrityError, VolumeBusy, VolumeError
from veil.volume.keys import VolumeKeys

FORMAT = "veil-volume"
VERSION = 3  # 3: a chunk's record in one of two slots (ID or ID.b); 2: ID only
_READS = (1, 2, 3)
MODES = ("encrypted", "authenticated")


def new_header(mode: str, volume_id: bytes, chunk_size: int, keys: VolumeKeys) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "mode": mode,
        "volume_id": volume_id.hex(),
        "chunk_size": chunk_size,
        "key_check": hmac.new(keys.check, b"veil-volume-key-check", "sha256").hexdigest(),
    }


def read_header(root: Path) -> dict[str, Any]:
    try:
        header: dict[str, Any] = dict(json.loads((root / "volume.json").read_text()))
    except FileNotFoundError:
        raise VolumeError(f"{root} is not a veil volume (no volume.json)") from None
    except ValueError:
        raise IntegrityError(f"{root}/volume.json is not valid JSON") from None
    if header.get("format") != FORMAT:
        raise VolumeError(f"{root} is not a veil volume")
    if header.get("version") not in _READS:
        raise VolumeError(
            f"volume format version {header.get('version')} is not supported (this veil reads "
            f"{', '.join(str(v) for v in _READS)})"
        )
    if header.get("mode") not in MODES or not isinstance(header.get("chunk_size"), int):
        raise IntegrityError(f"{root}/volume.json is damaged")
    try:
        if len(bytes.fromhex(str(header["volume_id"]))) != 16:
            raise ValueError
    except (KeyError, ValueError):
        raise IntegrityError(f"{root}/volume.json has no valid volume id") from None
    return header


def take_lock(root: Path) -> int:
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise VolumeBusy(f"{root} is open in another process") from None
    return fd
