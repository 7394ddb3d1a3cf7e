"""The container images of veil's own services (`make images`, docs/kubernetes.md):
``veil-cas`` and ``veil-las``, built without a container engine and deterministically.

Each image is two layers: the self-contained runtime layer with the CAS server's packages
(docs/image.md, "The runtime layer": CPython, its libraries down to glibc, veil) and a
small layer with the service user (uid 10001, ``veil``), its state directory and the
socket directory. No shell, no package manager, no key: the state directories are empty,
every key is made at first start (or comes from a mounted Secret). The same sources give
the same manifest digest; the labels name the version and the source revision.
"""

import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil import __version__
from veil.image.layers import WrittenLayer, fixed_info, new_layer
from veil.image.oci import CONFIG, LAYER_GZIP, MANIFEST, Descriptor, Layout, skopeo_copy
from veil.image.runtime_layer import PREFIX, PYTHON, runtime_layer

UID = 10001
SOURCE = "https://github.com/veil-project/veil"
_PYTHON = [f"/{PREFIX}/bin/{PYTHON}", "-I", "-B", "-m", "veil"]


@dataclass(frozen=True)
class Service:
    name: str
    title: str
    #: the default arguments (a Kubernetes manifest's ``args`` replace them)
    command: list[str]
    state: str
    ports: tuple[int, ...] = ()


SERVICES = (
    Service(
        "veil-cas",
        "veil CAS: sessions, secrets, attestation decisions, audit",
        ["cas", "serve", "--config", "/etc/veil/config/cas.toml"],
        "/var/lib/veil-cas",
        (8443,),
    ),
    Service(
        "veil-las",
        "veil LAS: the node agent (platform key, evidence for runtimes)",
        ["las", "serve", "--home", "/var/lib/veil-las", "--socket", "/run/veil/las.sock"],
        "/var/lib/veil-las",
    ),
)


@dataclass(frozen=True)
class BuiltImage:
    name: str
    tag: str
    layout: Path
    manifest_digest: str
    archive: Path | None


def _file(writer: Any, name: str, content: bytes, mode: int = 0o644) -> None:
    writer.add(fixed_info(name, tarfile.REGTYPE, mode, len(content)), io.BytesIO(content))


def _directory(writer: Any, name: str, mode: int, owner: int = 0) -> None:
    info = fixed_info(name, tarfile.DIRTYPE, mode)
    info.uid = info.gid = owner
    writer.add(info)


def _system_layer(out: Layout, service: Service) -> WrittenLayer:
    """/etc/passwd and /etc/group with root and ``veil`` (10001), the state directory
    owned by it, /run/veil for the LAS socket; parents first, in a fixed order."""
    passwd = f"root:x:0:0:root:/root:/nonexistent\nveil:x:{UID}:{UID}:veil:{service.state}:/nonexistent\n"
    group = f"root:x:0:\nveil:x:{UID}:\n"
    with new_layer(out) as writer:
        _directory(writer, "etc", 0o755)
        _file(writer, "etc/group", group.encode())
        _file(writer, "etc/passwd", passwd.encode())
        _directory(writer, "etc/veil", 0o755)
        _directory(writer, "run", 0o755)
        _directory(writer, "run/veil", 0o755, UID)
        _directory(writer, "var", 0o755)
        _directory(writer, "var/lib", 0o755)
        _directory(writer, service.state.lstrip("/"), 0o700, UID)
        return writer.finish()


def _config(service: Service, layers: list[WrittenLayer], revision: str) -> dict[str, Any]:
    labels = {
        "org.opencontainers.image.title": service.name,
        "org.opencontainers.image.description": service.title,
        "org.opencontainers.image.version": __version__,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.source": SOURCE,
        "org.opencontainers.image.licenses": "Apache-2.0",
    }
    settings: dict[str, Any] = {
        "User": f"{UID}:{UID}",
        "Entrypoint": _PYTHON,
        "Cmd": service.command,
        "Env": [f"HOME={service.state}", "LANG=C.UTF-8", "PYTHONUNBUFFERED=1"],
        "WorkingDir": service.state,
        "Labels": labels,
    }
    if service.ports:
        settings["ExposedPorts"] = {f"{port}/tcp": {} for port in service.ports}
    return {
        "created": "1970-01-01T00:00:00Z",  # reproducible: the revision label dates the build
        "architecture": "amd64",
        "os": "linux",
        "config": settings,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {
                "created": "1970-01-01T00:00:00Z",
                "created_by": "veil runtime layer (CPython, libraries, veil)",
            },
            {"created": "1970-01-01T00:00:00Z", "created_by": f"veil {service.name}: user, state directory"},
        ],
    }


def build_service_image(
    service: Service, directory: Path, revision: str, archive: Path | None = None
) -> BuiltImage:
    """The image of ``service`` as an OCI layout in ``directory`` (tag: the version), and
    with ``archive`` also as a docker-archive tar (``NAME:VERSION``, through skopeo)."""
    out = Layout(directory)
    out.init()
    cached = runtime_layer(server=True)
    base = Descriptor(LAYER_GZIP, cached.digest, cached.size)
    out.copy_file(cached.path, base)
    layers = [WrittenLayer(base, cached.diff_id), _system_layer(out, service)]
    config = out.put_json(_config(service, layers, revision), CONFIG)
    manifest = out.put_json(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config.as_json(),
            "layers": [layer.descriptor.as_json() for layer in layers],
        },
        MANIFEST,
    )
    out.tag(manifest, __version__)
    if archive is not None:
        archive.unlink(missing_ok=True)
        skopeo_copy(
            f"oci:{directory}:{__version__}", f"docker-archive:{archive}:{service.name}:{__version__}"
        )
    return BuiltImage(service.name, __version__, directory, manifest.digest, archive)


def build_all(out: Path, revision: str, archives: bool = True) -> list[BuiltImage]:
    out.mkdir(parents=True, exist_ok=True)
    built = []
    for service in SERVICES:
        archive = out / f"{service.name}.tar" if archives else None
        built.append(build_service_image(service, out / service.name, revision, archive))
    (out / "images.json").write_text(
        json.dumps({b.name: {"tag": b.tag, "manifest": b.manifest_digest} for b in built}, indent=2) + "\n"
    )
    return built
