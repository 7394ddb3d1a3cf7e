"""The workload measurement of a program: what `veil measure` prints (docs/measurement.md).

Covered, by content (SHA-256), in this order: the executable argv[0] resolves to (symlinks
followed); for a script, the interpreter named on its ``#!`` line (and, for
``#!/usr/bin/env NAME``, the program NAME resolves to); every later argument that is the
path of an existing regular file. Not covered: paths themselves (the argv is part of the
session and its hash), shared libraries, files the program opens later, the environment.
"""

import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from veil.crypto import canonical_json, sha256
from veil.policy.placeholders import PLACEHOLDER
from veil.tee.claims import EvidenceError

_DOMAIN = b"veil-measurement-v1\n"
_CHUNK = 1 << 20


class MeasurementError(EvidenceError):
    """The program to measure cannot be found or read."""


@dataclass(frozen=True)
class CoveredFile:
    role: str  # "executable", "interpreter" or "argument"
    argument_index: int
    path: str
    sha256: str


@dataclass(frozen=True)
class Measurement:
    executable: str
    covered: tuple[CoveredFile, ...]

    @property
    def digest(self) -> bytes:
        items = [{"role": c.role, "index": c.argument_index, "sha256": c.sha256} for c in self.covered]
        return sha256(_DOMAIN + canonical_json(items))

    @property
    def value(self) -> str:
        return "sha256:" + self.digest.hex()

    def covered_json(self) -> list[dict[str, object]]:
        """The covered files as `veil measure --json` prints them."""
        return [
            {"role": c.role, "argument_index": c.argument_index, "path": c.path, "sha256": c.sha256}
            for c in self.covered
        ]


def stream_sha256(handle: IO[bytes]) -> str:
    """SHA-256 (hex) of what is left to read in ``handle``."""
    digest = hashlib.sha256()
    while chunk := handle.read(_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _file_sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return stream_sha256(handle)


def resolve_executable(program: str, pwd: str, search_path: str | None) -> str:
    """The real path of the file that ``execvpe(program, ..., env)`` would run."""
    if "/" in program:
        candidate = os.path.join(pwd, program)
        if not os.path.isfile(candidate):
            raise MeasurementError(f"program '{program}' not found (looked at {candidate})")
    else:
        found = shutil.which(program, path=search_path if search_path is not None else os.defpath)
        if found is None:
            raise MeasurementError(f"program '{program}' not found on PATH")
        candidate = found
    if not os.access(candidate, os.X_OK):
        raise MeasurementError(f"program '{candidate}' is not executable")
    return os.path.realpath(candidate)


def _interpreters(executable: str, search_path: str | None) -> list[str]:
    with open(executable, "rb") as handle:
        head = handle.read(256)
    if not head.startswith(b"#!"):
        return []
    line = head[2:].split(b"\n", 1)[0].decode("utf-8", "replace").strip().split()
    if not line:
        return []
    found = [os.path.realpath(line[0])]
    if os.path.basename(line[0]) == "env" and len(line) > 1 and not line[1].startswith("-"):
        target = shutil.which(line[1], path=search_path if search_path is not None else os.defpath)
        if target:
            found.append(os.path.realpath(target))
    return [p for p in found if os.path.isfile(p)]


def measure_command(argv: list[str], pwd: str = "/", search_path: str | None = None) -> Measurement:
    """Measure the program ``argv`` would run from ``pwd`` with PATH ``search_path``."""
    if not argv:
        raise MeasurementError("nothing to measure: the command is empty")
    try:
        executable = resolve_executable(argv[0], pwd, search_path)
        covered = [CoveredFile("executable", 0, executable, _file_sha256(executable))]
        for interpreter in _interpreters(executable, search_path):
            covered.append(CoveredFile("interpreter", 0, interpreter, _file_sha256(interpreter)))
        for index, arg in enumerate(argv[1:], start=1):
            if not arg or PLACEHOLDER.search(arg):
                continue
            path = Path(pwd, arg)
            if path.is_file():
                covered.append(CoveredFile("argument", index, str(path), _file_sha256(str(path))))
    except OSError as exc:
        raise MeasurementError(f"cannot read a file to measure: {exc}") from None
    return Measurement(executable, tuple(covered))


def measure_veil() -> str:
    """The measurement of this veil installation (what a sim CAS reports about itself).

    SHA-256 over the Python interpreter and every module of the ``veil`` package, by
    relative path and content. On hardware the launch measurement covers the CAS instead.
    """
    package = Path(__file__).resolve().parents[1]
    items = [{"path": "python", "sha256": _file_sha256(os.path.realpath(sys.executable))}]
    for path in sorted(package.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".yaml", ".pem"):
            items.append({"path": str(path.relative_to(package)), "sha256": _file_sha256(str(path))})
    return "sha256:" + sha256(b"veil-installation-v1\n" + canonical_json(items)).hex()
