"""Writing key material to disk: created 0600 from the start, never world-readable."""

import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from veil.crypto.errors import CryptoError


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` (``os.write`` may write fewer); errors raise."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_private_file(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (failing if it exists) and write ``data`` durably."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (0600) atomically: a reader sees the old or the new file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    temporary.unlink(missing_ok=True)
    write_private_file(temporary, data)
    os.replace(temporary, path)


def create_private_file_once(path: Path, data: bytes) -> bool:
    """Create ``path`` (0600) with ``data`` unless it exists; False if another writer won.

    The file appears complete or not at all (written aside, then hard-linked into place).
    """
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    write_private_file(temporary, data)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        temporary.unlink()
    return True


def exposure_problem(path: Path) -> str | None:
    """Why a key file must not be used (others may read it), or None if it is private."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return f"{path} is readable by others (mode {mode:04o}); run: chmod 600 {path}"
    return None


class KeyFileError(CryptoError):
    """A key file is exposed to others or does not hold the expected key."""


def load_private_ec_key_file(path: Path) -> ec.EllipticCurvePrivateKey:
    """An ECDSA private key (PEM) from a file only its owner may read."""
    problem = exposure_problem(path)
    if problem:
        raise KeyFileError(problem)
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise KeyFileError(f"{path} does not hold an ECDSA key")
    return key
