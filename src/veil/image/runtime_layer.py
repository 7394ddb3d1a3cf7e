"""The self-contained runtime layer under /opt/veil (docs/image.md).

The build machine's CPython, its shared libraries down to the dynamic loader and glibc
(patchelf points the interpreter at /opt/veil/lib), the standard library without tests
and GUI modules, and veil with the packages `veil run` needs. It runs in any x86-64 Linux
image, with or without a libc of its own. Built deterministically, cached per content.
"""

import gzip
import hashlib
import importlib.metadata
import json
import os
import py_compile
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import veil
from veil.image.errors import ImageError
from veil.image.layers import fixed_info

PREFIX = "opt/veil"
LIBDIR = "/opt/veil/lib"
PYTHON = f"python{sys.version_info.major}.{sys.version_info.minor}"
ENTRYPOINT = [f"/{PREFIX}/bin/{PYTHON}", "-I", "-B", "-m", "veil", "run"]
#: Distributions only the CAS server uses; `veil run` never imports them.
SERVER_ONLY = {
    "aiohttp",
    "uvloop",
    "prometheus-client",
    "psycopg",
    "psycopg-binary",
    # XML signatures of NVIDIA's RIMs: only a verifier given RIMs reads them
    "signxml",
    "lxml",
    "certifi",
}
_STDLIB_SKIPPED = {"test", "idlelib", "tkinter", "turtledemo", "lib2to3", "ensurepip", "site-packages"}
#: the standard library's own test suites (unittest/test, ctypes/test, distutils/tests, ...)
_TEST_DIRS = {"test", "tests", "idle_test"}
_DYNLOAD_SKIPPED = re.compile(r"^(_tkinter|_curses|_curses_panel|readline|nis|_test\w*|xx\w*)\.")
_FUSE_CANDIDATES = [Path(f"{d}/x86_64-linux-gnu/libfuse3.so.3") for d in ("/lib", "/usr/lib")]
_SCRATCH_DIRS = (("dev", 0o755), ("proc", 0o755), ("sys", 0o755), ("tmp", 0o1777))


@dataclass(frozen=True)
class _File:
    name: str  # inside the image, without leading /
    source: Path
    mode: int
    elf_role: str | None = None  # python, lib (rpath /opt/veil/lib), wheel (rpath added), pyc


def _ldd(path: Path) -> list[Path]:
    result = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
    found = []
    for line in result.stdout.splitlines():
        match = re.search(r"=> (/\S+)", line) or re.match(r"\s*(/\S*ld-linux\S*)", line)
        if match:
            found.append(Path(match.group(1)))
    return found


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distributions(server: bool = False) -> list[importlib.metadata.Distribution]:
    """veil's run-time requirements, transitively, without the server-only ones (with them
    for the images of veil's own services)."""
    wanted = ["veil", *(sorted(SERVER_ONLY) if server else [])]
    seen: dict[str, importlib.metadata.Distribution] = {}
    while wanted:
        name = _normal(wanted.pop())
        if name in seen or (name in SERVER_ONLY and not server):
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # a requirement for another platform or Python
        seen[name] = dist
        for requirement in dist.requires or []:
            if "extra ==" in requirement:
                continue
            match = re.match(r"[A-Za-z0-9._-]+", requirement)
            if match:
                wanted.append(match.group(0))
    del seen["veil"]  # copied from its source tree (it may be an editable install)
    return sorted(seen.values(), key=lambda d: _normal(d.metadata["Name"]))


def _walk(root: Path) -> Iterator[Path]:
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if not name.endswith((".pyc", ".pyo")):
                yield Path(current, name)


def _files(server: bool = False) -> list[_File]:
    base = Path(sys.base_prefix)
    executable = Path(os.path.realpath(sys.executable))
    stdlib = Path(sysconfig.get_paths(vars={"installed_base": str(base), "base": str(base)})["stdlib"])
    files = [_File(f"{PREFIX}/bin/{PYTHON}", executable, 0o755, "python")]
    elves = [executable]
    for path in _walk(stdlib):
        relative = path.relative_to(stdlib)
        top = relative.parts[0]
        if top in _STDLIB_SKIPPED or top.startswith("config-") or _TEST_DIRS & set(relative.parts[:-1]):
            continue
        if top == "lib-dynload" and _DYNLOAD_SKIPPED.match(path.name):
            continue
        is_elf = path.suffix == ".so"
        files.append(
            _File(
                f"{PREFIX}/lib/{PYTHON}/{relative}",
                path,
                0o755 if is_elf else 0o644,
                "lib" if is_elf else None,
            )
        )
        if is_elf:
            elves.append(path)
    site = f"{PREFIX}/lib/{PYTHON}/site-packages"
    package = Path(veil.__file__).parent
    for path in _walk(package):
        files.append(_File(f"{site}/veil/{path.relative_to(package)}", path, 0o644))
    for dist in _distributions(server):
        for record in dist.files or []:
            if record.parts[0] == ".." or "__pycache__" in record.parts or record.suffix == ".pyc":
                continue
            if _TEST_DIRS & set(record.parts[:-1]):  # a package's own tests (certifi ships some)
                continue
            source = Path(str(dist.locate_file(record)))
            if not source.is_file():
                continue
            shared = source.suffix == ".so" or ".so." in source.name
            files.append(
                _File(f"{site}/{record}", source, 0o755 if shared else 0o644, "wheel" if shared else None)
            )
            if shared:
                elves.append(source)
    libraries: dict[str, Path] = {}
    for elf in elves:
        for library in _ldd(elf):
            if "site-packages" not in str(library):
                libraries.setdefault(library.name, library)
    # libfuse3 itself: mfusepy loads it with ctypes, so ldd does not see it
    fuse = next((p for p in _FUSE_CANDIDATES if p.exists()), None)
    if fuse is None:
        raise ImageError("libfuse3.so.3 is not installed on this machine (Debian package libfuse3-3)")
    libraries.setdefault(fuse.name, fuse)
    for dependency in _ldd(fuse):
        libraries.setdefault(dependency.name, dependency)
    for name, library in sorted(libraries.items()):
        role = None if name.startswith("ld-linux") else "lib"
        files.append(_File(f"{PREFIX}/lib/{name}", library, 0o755, role))
    files += [_bytecode(f) for f in files if f.name.endswith(".py")]
    return sorted(files, key=lambda f: f.name)


def _bytecode(source: _File) -> _File:
    """The compiled module beside a .py file: without it every start compiles again (and
    may not write the result, which would change the measured tree)."""
    directory, _, name = source.name.rpartition("/")
    tag = sys.implementation.cache_tag
    return _File(f"{directory}/__pycache__/{name[:-3]}.{tag}.pyc", source.source, 0o644, "pyc")


def _patched(file: _File, work: Path) -> Path:
    """A copy of an ELF file with its loader and library path pointing into /opt/veil."""
    patchelf = shutil.which("patchelf")
    if patchelf is None:
        raise ImageError("patchelf is needed to build the runtime layer (Debian package patchelf)")
    copy = work / hashlib.sha256(file.name.encode()).hexdigest()
    shutil.copyfile(file.source, copy)
    _strip(copy)
    if file.elf_role == "python":
        command = [
            patchelf,
            "--set-interpreter",
            f"{LIBDIR}/ld-linux-x86-64.so.2",
            "--force-rpath",
            "--set-rpath",
            LIBDIR,
        ]
    elif file.elf_role == "lib":
        command = [patchelf, "--force-rpath", "--set-rpath", LIBDIR]
    else:
        current = subprocess.run(
            [patchelf, "--print-rpath", str(copy)], capture_output=True, text=True, check=False
        )
        rpath = current.stdout.strip()
        if not rpath:
            return copy  # no RUNPATH: the executable's RPATH applies
        command = [patchelf, "--set-rpath", f"{rpath}:{LIBDIR}"]
    result = subprocess.run([*command, str(copy)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImageError(f"patchelf failed on {file.source}: {result.stderr.strip()}")
    return copy


def _strip(path: Path) -> None:
    """Drop the symbols nothing links against and the debug info (a pyenv or source-built
    Python carries ~40 MB of it): a smaller layer, and less for the runtime to hash at every
    start. Skipped without binutils' strip (the fingerprint says which)."""
    strip = shutil.which("strip")
    if strip is None:
        return
    command = [strip, "--strip-unneeded", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ImageError(f"strip failed on {path.name}: {result.stderr.strip()}")


def _compiled(file: _File, work: Path) -> Path | None:
    """Bytecode checked by hash, not by time (reproducible; Python never rewrites it)."""
    target = work / (hashlib.sha256(file.name.encode()).hexdigest() + ".pyc")
    module = file.name.replace("/__pycache__/", "/").rsplit(".", 2)[0] + ".py"
    try:
        py_compile.compile(
            str(file.source),
            cfile=str(target),
            dfile="/" + module,
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
        )
    except py_compile.PyCompileError:
        return None  # not Python 3.11 source (test data, templates): shipped as it is
    return target


def _fingerprint(files: list[_File]) -> str:
    digest = hashlib.sha256(b"veil-runtime-layer-v2\n")  # the file list says which packages
    digest.update(b"stripped\n" if shutil.which("strip") else b"not stripped\n")
    for file in files:
        info = file.source.stat()
        digest.update(
            f"{file.name}\0{file.source}\0{info.st_size}\0{info.st_mtime_ns}\0{file.mode}\n".encode()
        )
    return digest.hexdigest()


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "veil" / "runtime-layer"


@dataclass(frozen=True)
class CachedLayer:
    """The runtime layer, gzip-compressed, with the digests an image needs."""

    path: Path
    digest: str
    size: int
    diff_id: str


def runtime_layer(server: bool = False) -> CachedLayer:
    """The runtime layer, built once per content (sources, veil, Python) and cached under
    $XDG_CACHE_HOME/veil/runtime-layer. ``server``: with the packages of the CAS server too
    (the images of veil's own services, docs/kubernetes.md)."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        raise ImageError("the runtime layer is built on x86-64 Linux only")
    files = _files(server)
    cache = _cache_dir()
    name = _fingerprint(files)
    index = cache / f"{name}.json"
    if index.exists():
        known = json.loads(index.read_text())
        return CachedLayer(cache / f"{name}.tar.gz", known["digest"], known["size"], known["diff_id"])
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".building-") as work:
        plain = Path(work) / "layer.tar"
        _write_tar(files, plain, Path(work))
        packed = Path(work) / "layer.tar.gz"
        diff_id = hashlib.sha256()
        with (
            plain.open("rb") as source,
            packed.open("wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as target,
        ):
            while block := source.read(1 << 20):
                diff_id.update(block)
                target.write(block)
        digest = hashlib.sha256()
        with packed.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        os.replace(packed, cache / f"{name}.tar.gz")
        known = {
            "digest": "sha256:" + digest.hexdigest(),
            "size": (cache / f"{name}.tar.gz").stat().st_size,
            "diff_id": "sha256:" + diff_id.hexdigest(),
        }
        (Path(work) / "index.json").write_text(json.dumps(known))
        os.replace(Path(work) / "index.json", index)
    _prune(cache, keep=4)  # the runtime and the server layer, and one older build of each
    return CachedLayer(cache / f"{name}.tar.gz", known["digest"], known["size"], known["diff_id"])


def _prune(cache: Path, keep: int) -> None:
    """Keep the ``keep`` most recent layers (each build of veil or Python makes a new one)."""
    indexes = sorted(cache.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in indexes[keep:]:
        old.with_suffix(".tar.gz").unlink(missing_ok=True)
        old.unlink(missing_ok=True)


def _write_tar(files: list[_File], target: Path, work: Path) -> None:
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        directories = {str(Path(f.name).parent) for f in files} | {d for d, _ in _SCRATCH_DIRS}
        every_parent = sorted(
            {str(p) for d in directories for p in [Path(d), *Path(d).parents] if str(p) != "."}
        )
        scratch = dict(_SCRATCH_DIRS)
        entries: list[tuple[str, _File | None]] = [(d, None) for d in every_parent if d != "opt"]
        entries += [(f.name, f) for f in files]
        for name, file in sorted(entries, key=lambda e: e[0]):
            if file is None:
                tar.addfile(fixed_info(name, tarfile.DIRTYPE, scratch.get(name, 0o755)))
                continue
            if file.elf_role == "pyc":
                compiled = _compiled(file, work)
                if compiled is None:
                    continue
                source = compiled
            else:
                source = _patched(file, work) if file.elf_role else file.source
            info = fixed_info(name, tarfile.REGTYPE, file.mode, source.stat().st_size)
            with source.open("rb") as handle:
                tar.addfile(info, handle)
