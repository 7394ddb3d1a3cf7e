"""The measurement of a whole root file system (``measure: image``, docs/image.md).

The runtime computes it by walking the root it runs in; ``veil image convert`` computes the
same value from an image's layers, so the session can name it before the image runs. Both
build ``TreeEntry`` values and call ``tree_digest``.
"""

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from veil.crypto import canonical_json, sha256
from veil.tee.measure import MeasurementError, resolve_executable, stream_sha256

_DOMAIN = b"veil-image-measurement-v1\n"

#: Paths the container engine provides or writes (each with everything under it).
ALWAYS_EXCLUDED = (
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/tmp",
    "/var/tmp",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
    "/.dockerenv",
)


@dataclass(frozen=True)
class TreeEntry:
    path: str  # absolute, inside the image
    type: str  # file, dir, symlink, fifo, char, block, socket
    mode: int  # permission bits with setuid/setgid/sticky
    uid: int
    gid: int
    sha256: str | None = None  # files
    target: str | None = None  # symlinks

    def as_json(self) -> dict[str, object]:
        item: dict[str, object] = {
            "path": self.path,
            "type": self.type,
            "mode": 0o777 if self.type == "symlink" else self.mode,  # Linux ignores a link's mode
            "uid": self.uid,
            "gid": self.gid,
        }
        if self.type == "file":
            item["sha256"] = self.sha256
        elif self.type == "symlink":
            item["target"] = self.target
        return item


@dataclass(frozen=True)
class ImageMeasurement:
    """The measured tree; ``executable`` is the file the runtime will execute, or "" when
    the program lives in a protected volume and is found only once it is mounted
    (``resolve_after_mount``: ``program`` from ``pwd`` on ``search_path``)."""

    digest: bytes
    entries: int
    executable: str = ""
    program: str = ""
    pwd: str = "/"
    search_path: str | None = None
    volume_paths: tuple[str, ...] = ()
    #: the regular files the digest covers (paths in the image)
    files: frozenset[str] = frozenset()

    @property
    def value(self) -> str:
        return "sha256:" + self.digest.hex()


def excluded(path: str, extra: Iterable[str] = ()) -> bool:
    """Whether ``path`` (absolute, in the image) is left out of the measurement."""
    return _under_any(path, (*ALWAYS_EXCLUDED, *extra))


def under(path: str, prefix: str) -> bool:
    """Whether ``path`` is ``prefix`` or lies under it (absolute paths)."""
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _under_any(path: str, prefixes: Iterable[str]) -> bool:
    return any(under(path, p) for p in prefixes)


def tree_digest(entries: Iterable[TreeEntry]) -> bytes:
    items = sorted((e.as_json() for e in entries), key=lambda item: str(item["path"]))
    return sha256(_DOMAIN + canonical_json(items))


_TYPES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
    stat.S_IFSOCK: "socket",
}


def _scan(root: Path, extra: tuple[str, ...]) -> Iterator[tuple[TreeEntry, str]]:
    """Every covered entry with its real path; files still without their hash."""
    # the walk never enters an excluded directory, so a path is excluded exactly when it
    # is one of the excluded paths itself
    skipped = {p.rstrip("/") or "/" for p in (*ALWAYS_EXCLUDED, *extra)}
    stack = [("", str(root))]
    while stack:
        inside, real = stack.pop()
        with os.scandir(real) as listing:
            children = sorted(listing, key=lambda e: e.name)
        for child in children:
            path = f"{inside}/{child.name}"
            if path in skipped:
                continue
            info = child.stat(follow_symlinks=False)
            kind = _TYPES.get(stat.S_IFMT(info.st_mode), "other")
            target = os.readlink(child.path) if kind == "symlink" else None
            if kind == "dir":
                stack.append((path, child.path))
            yield (
                TreeEntry(path, kind, stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid, target=target),
                child.path,
            )


def _hash_files(paths: list[str]) -> list[str]:
    digests = []
    for path in paths:
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NOFOLLOW), "rb", buffering=0) as handle:
            digests.append(stream_sha256(handle))
    return digests


def _hash_in_child(paths: list[str]) -> tuple[int, int]:
    """Fork a process that hashes ``paths`` and writes the digests to a pipe; (pid, read
    end). A root holds thousands of small files, whose hashing holds the GIL: threads
    would take turns, processes run side by side."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(read_end)
            payload = "\n".join(_hash_files(paths)).encode()
        except OSError as exc:
            payload, code = f"{exc}".encode(), 1
        try:
            with os.fdopen(write_end, "wb") as out:
                out.write(payload)
        finally:
            os._exit(code)
    os.close(write_end)
    return pid, read_end


def _collect(pid: int, read_end: int, expected: int) -> list[str]:
    with os.fdopen(read_end, "rb") as source:
        payload = source.read().decode()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise OSError(payload or "the hashing process failed")
    digests = payload.split("\n") if expected else []
    if len(digests) != expected:
        raise OSError(f"the hashing process returned {len(digests)} digests for {expected} files")
    return digests


def walk_root(root: Path, extra_excluded: Iterable[str] = ()) -> list[TreeEntry]:
    """Every entry under ``root`` that the measurement covers (symlinks not followed); file
    contents are hashed on every core, a share of the files per process. It forks: call
    it before the caller starts threads (the runtime and `veil measure` do)."""
    scanned = list(_scan(root, tuple(extra_excluded)))
    files = [(i, real) for i, (entry, real) in enumerate(scanned) if entry.type == "file"]
    workers = max(1, min(os.cpu_count() or 1, 8))
    shares = [[real for _, real in files[k::workers]] for k in range(workers)]
    children = [_hash_in_child(share) for share in shares[1:]]
    hashed = [_hash_files(shares[0])]
    hashed += [_collect(pid, fd, len(share)) for (pid, fd), share in zip(children, shares[1:], strict=True)]
    entries = [entry for entry, _ in scanned]
    for k, digests in enumerate(hashed):
        for (index, _), digest in zip(files[k::workers], digests, strict=True):
            entries[index] = replace(entries[index], sha256=digest)
    return entries


def measure_root(root: Path, extra_excluded: Iterable[str] = ()) -> ImageMeasurement:
    try:
        entries = walk_root(root, extra_excluded)
    except OSError as exc:
        raise MeasurementError(f"cannot read the root file system to measure it: {exc}") from None
    files = frozenset(e.path for e in entries if e.type == "file")
    return ImageMeasurement(tree_digest(entries), len(entries), files=files)


def measure_image(
    command: list[str], pwd: str, search_path: str | None, volume_paths: Iterable[str], root: Path = Path("/")
) -> ImageMeasurement:
    """The runtime's measurement for ``measure: image``: the root it runs in, and the
    executable the command resolves to (covered as part of the tree). A program that is
    not there but would be in a volume path (an entrypoint under a protected path) is
    left to ``resolve_after_mount``."""
    if not command:
        raise MeasurementError("nothing to measure: the command is empty")
    volumes = tuple(volume_paths)
    try:
        executable = resolve_executable(command[0], pwd, search_path)
    except MeasurementError:
        if not _could_be_in(command[0], pwd, search_path, volumes):
            raise
        executable = ""
    measured = measure_root(root, volumes)
    return ImageMeasurement(
        measured.digest, measured.entries, executable, command[0], pwd, search_path, volumes, measured.files
    )


def _could_be_in(program: str, pwd: str, search_path: str | None, volumes: tuple[str, ...]) -> bool:
    if "/" in program:
        candidates = [os.path.normpath(os.path.join(pwd, program))]
    else:
        candidates = [os.path.join(d, program) for d in (search_path or os.defpath).split(":") if d]
    return any(_under_any(c, volumes) for c in candidates)


def resolve_after_mount(measurement: ImageMeasurement) -> str:
    """The program a measurement left to find once the volumes are mounted: accepted only
    where its content is vouched for, in a protected volume (key and tag) or in the
    measured tree (a link from a volume to a measured file); never an unmeasured path such
    as /tmp."""
    if measurement.executable:
        return measurement.executable
    executable = resolve_executable(measurement.program, measurement.pwd, measurement.search_path)
    if _under_any(executable, measurement.volume_paths) or executable in measurement.files:
        return executable
    raise MeasurementError(
        f"program '{measurement.program}' resolves to {executable}, which is neither in a "
        "protected volume nor in the measured image"
    )
