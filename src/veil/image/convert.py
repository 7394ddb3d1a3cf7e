"""`veil image convert`: a container image in, a confidential image and its session out.

Steps (docs/image.md): read the source layers into the merged tree; copy the files under
the protected paths out of it into fresh volumes; write the layers without that plaintext
(untouched layers keep their blobs), one layer per volume and the runtime layer; measure
the result from the output layers themselves; write config, manifest and tag.
"""

import copy
import io
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veil.image.errors import ImageError
from veil.image.layers import (
    MergedTree,
    WrittenLayer,
    extract_files,
    filter_layer,
    fixed_info,
    layer_paths,
    new_layer,
)
from veil.image.oci import CONFIG, LAYER_GZIP, MANIFEST, Descriptor, Layout, Reference, skopeo_copy
from veil.image.runtime_layer import ENTRYPOINT, runtime_layer
from veil.image.template import TemplateVolume, session_yaml, volume_name
from veil.policy.model import SERVICE_NAME, SESSION_NAME
from veil.tee.image_measure import ALWAYS_EXCLUDED, under
from veil.volume import Volume

#: (label, total steps) -> None; called before each step of the conversion.
Progress = Callable[[str, int], None]


@dataclass(frozen=True)
class ConvertOptions:
    source: str
    destination: str
    session: str
    service: str
    encrypt: list[str] = field(default_factory=list)
    authenticate: list[str] = field(default_factory=list)
    #: registered sim platforms the session accepts (security.sim_platforms)
    sim_platforms: list[str] = field(default_factory=list)
    #: scratch directories (the service's ``tmpfs``), besides DEFAULT_TMPFS unless not wanted
    tmpfs: list[str] = field(default_factory=list)
    default_tmpfs: bool = True
    #: persistent data directories: writable volumes created on first use in storage the
    #: host provides (not in the image)
    data: list[str] = field(default_factory=list)


#: where programs write logs, caches and temporary files: a tmpfs each at run time, so the
#: measured root never changes and the same root file system starts again (/run is left
#: to the engine, which mounts things there; --tmpfs /run where it does not)
DEFAULT_TMPFS = ("/tmp", "/var/cache", "/var/log", "/var/tmp")


@dataclass(frozen=True)
class LayerSummary:
    digest: str
    size: int
    origin: str  # "source", "rewritten", "volume /path", "runtime"


@dataclass(frozen=True)
class ConvertResult:
    destination: str
    manifest_digest: str
    measurement: str
    command: list[str]
    environment: dict[str, str]
    pwd: str
    volumes: list[TemplateVolume]
    layers: list[LayerSummary]
    warnings: list[str]
    session_text: str = field(repr=False)
    tmpfs: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "manifest_digest": self.manifest_digest,
            "measurement": self.measurement,
            "command": self.command,
            "pwd": self.pwd,
            "volumes": [
                {"name": v.name, "path": v.path, "mode": v.mode, "tag": v.tag or None, "kind": v.kind}
                for v in self.volumes
            ],
            "tmpfs": self.tmpfs,
            "layers": [{"digest": la.digest, "size": la.size, "origin": la.origin} for la in self.layers],
            "warnings": self.warnings,
        }


def _image_directory(raw: str, what: str) -> str:
    """``raw`` normalised (no ".", no repeated or trailing "/"); ImageError unless it is an
    absolute directory other than / without '..'."""
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if not raw.startswith("/") or ".." in parts or not parts:
        raise ImageError(f"'{raw}': {what} is an absolute directory other than /, without '..'")
    return "/" + "/".join(parts)


def _protected(options: ConvertOptions) -> list[tuple[str, str]]:
    """(path, mode) of every volume path: code (encrypted or authenticated), then data."""
    wanted = (
        [(p, "encrypted") for p in options.encrypt]
        + [(p, "authenticated") for p in options.authenticate]
        + [(p, "data") for p in options.data]
    )
    result: list[tuple[str, str]] = []
    for raw, mode in wanted:
        path = _image_directory(raw, "a protected path")
        for other, _ in result:
            if under(path, other) or under(other, path):
                raise ImageError(f"protected paths {other} and {path} overlap")
        for reserved in (*ALWAYS_EXCLUDED, "/opt/veil"):
            if under(path, reserved) or under(reserved, path):
                raise ImageError(f"{path} cannot be protected: {reserved} is managed by the engine or veil")
        result.append((path, mode))
    return result


def _scratch(options: ConvertOptions, protected: list[tuple[str, str]]) -> list[str]:
    """The service's scratch directories: those asked for (refused where they overlap a
    protected path) and the defaults that do not overlap one."""
    chosen: list[str] = []
    for raw in options.tmpfs:
        path = _image_directory(raw, "a tmpfs path")
        for volume, _ in protected:
            if under(path, volume) or under(volume, path):
                raise ImageError(f"tmpfs path {path} overlaps the protected path {volume}")
        chosen.append(path)
    if options.default_tmpfs:
        for path in DEFAULT_TMPFS:
            if not any(under(path, v) or under(v, path) for v, _ in protected):
                chosen.append(path)
    return sorted(set(chosen))


def _check_names(options: ConvertOptions) -> None:
    if not SESSION_NAME.fullmatch(options.session):
        raise ImageError(f"'{options.session}' is not a session name (lower-case segments separated by '/')")
    if not SERVICE_NAME.fullmatch(options.service):
        raise ImageError(f"'{options.service}' is not a service name (a-z, 0-9, '.', '_', '-')")


def _workload(config: dict[str, Any], warnings: list[str]) -> tuple[list[str], dict[str, str], str]:
    settings = config.get("config") or {}
    command = [str(a) for a in (settings.get("Entrypoint") or []) + (settings.get("Cmd") or [])]
    if not command:
        raise ImageError("the image has neither Entrypoint nor Cmd: nothing to run")
    environment: dict[str, str] = {}
    for item in settings.get("Env") or []:
        key, _, value = str(item).partition("=")
        environment[key] = value
    user = str(settings.get("User") or "")
    if user not in ("", "0", "root", "0:0", "root:root"):
        warnings.append(
            f"the image runs as user '{user}'; under veil the program runs as root (no 'user' yet)"
        )
    return command, environment, str(settings.get("WorkingDir") or "/")


_NODES = {"fifo": "fifo", "socket": "socket"}


def _make_volume(
    layout: Layout, image_layers: list[Descriptor], tree: MergedTree, path: str, mode: str, work: Path
) -> tuple[bytes, str, Path]:
    """A fresh volume holding the merged content under ``path``: (key, tag, storage).

    Every entry type is carried with its mode and owner; names that share one layer member
    (hard links in the image) become hard links in the volume."""
    node = tree.nodes.get(path)
    if node is None:
        raise ImageError(f"{path} is not in the image")
    if node.entry.type != "dir":
        raise ImageError(f"{path} is a {node.entry.type}; a protected path is a directory (a volume)")
    staging = work / f"plain{len(list(work.iterdir()))}"
    staging.mkdir()
    inside = [(p[len(path) :], n) for p, n in sorted(tree.nodes.items()) if p != path and under(p, path)]
    wanted: dict[int, dict[str, list[Path]]] = {}
    first_name: dict[tuple[int, str], str] = {}  # a layer member -> the first name holding it
    for relative, found in inside:
        if found.entry.type == "file" and (found.layer, found.member) not in first_name:
            first_name[(found.layer, found.member)] = relative
            wanted.setdefault(found.layer, {})[found.member] = [staging / relative.lstrip("/")]
    for index, members in sorted(wanted.items()):
        extract_files(layout, image_layers[index], members)
    key = os.urandom(32)
    storage = work / f"volume{len(list(work.iterdir()))}"
    with Volume.create(storage, key, mode) as volume:
        for relative, found in inside:  # sorted: a directory before what it holds
            entry = found.entry
            bits, owner = entry.mode & 0o7777, (entry.uid, entry.gid)
            if entry.type == "dir":
                volume.mkdir(relative, bits, *owner)
            elif entry.type == "symlink":
                volume.symlink(entry.target or "", relative, *owner)
            elif entry.type in _NODES:
                volume.mknod(relative, _NODES[entry.type], bits, 0, *owner)
            elif entry.type != "file":
                raise ImageError(f"{path}{relative} is a {entry.type} device; a volume holds no device nodes")
            elif (origin := first_name[(found.layer, found.member)]) != relative:
                volume.link(origin, relative)
            else:
                source = staging / relative.lstrip("/")
                with source.open("rb") as plain, volume.open_file(relative, "x", bits, *owner) as target:
                    while block := plain.read(1 << 20):
                        target.write(block)
        tag = volume.flush()
    return key, tag, storage


def _volume_layer(out: Layout, path: str, storage: Path, mode_bits: int) -> WrittenLayer:
    prefix = path.lstrip("/")
    with new_layer(out) as writer:
        writer.add(fixed_info(prefix, tarfile.DIRTYPE, mode_bits))
        for item in layer_paths(storage):
            if item.name == ".lock":
                continue
            name = f"{prefix}/{item.relative_to(storage)}"
            if item.is_dir():
                writer.add(fixed_info(name, tarfile.DIRTYPE, 0o700))
            else:
                with item.open("rb") as handle:
                    writer.add(fixed_info(name, tarfile.REGTYPE, 0o600, item.stat().st_size), handle)
        return writer.finish()


def _owner_warnings(
    layout: Layout,
    image_layers: list[Descriptor],
    tree: MergedTree,
    paths: list[str],
    work: Path,
    warnings: list[str],
) -> None:
    """Warn about files under a volume path whose owner no user of the image is (not in its
    /etc/passwd): no process of the image runs as that user, so a daemon that drops its
    privileges cannot read what only the owner may."""
    node = tree.nodes.get("/etc/passwd")
    if not paths or node is None or node.entry.type != "file" or node.layer < 0:
        return
    copy = work / "passwd"
    extract_files(layout, image_layers[node.layer], {node.member: [copy]})
    users = {0}
    for line in copy.read_text(errors="replace").splitlines():
        fields = line.split(":")
        if len(fields) > 2 and fields[2].isdigit():
            users.add(int(fields[2]))
    for path in paths:
        strangers = sorted(
            {n.entry.uid for p, n in tree.nodes.items() if under(p, path) and n.entry.uid not in users}
        )
        if strangers:
            named = ", ".join(str(u) for u in strangers[:5])
            warnings.append(
                f"{path}: files belong to uid {named}, which /etc/passwd of the image does not name; "
                "no process of the image runs as it (a daemon that drops to its own user will not "
                "read what only that owner may)"
            )


def _data_directory(tree: MergedTree, path: str, warnings: list[str]) -> tuple[str, int, int, int]:
    """The empty directory a data volume is mounted on, as the image had it (owner and
    mode: a daemon that drops to its own user writes there); what the image held under it
    is not carried (a data volume starts empty), with a warning."""
    node = tree.nodes.get(path)
    if node is not None and node.entry.type != "dir":
        raise ImageError(f"{path} is a {node.entry.type}; a data path is a directory (a volume)")
    held = sum(1 for p in tree.nodes if p != path and under(p, path))
    if held:
        warnings.append(
            f"{path} holds {held} entries in the image; a data volume starts empty, so they are "
            "not carried (use --encrypt for files the program only reads)"
        )
    if node is None:
        return path, 0o755, 0, 0
    return path, node.entry.mode & 0o7777, node.entry.uid, node.entry.gid


def _data_layer(out: Layout, directories: list[tuple[str, int, int, int]]) -> WrittenLayer:
    with new_layer(out) as writer:
        for path, bits, uid, gid in directories:
            info = fixed_info(path.lstrip("/"), tarfile.DIRTYPE, bits)
            info.uid, info.gid = uid, gid
            writer.add(info)
        return writer.finish()


#: files a container engine writes into an image that lacks them (podman, CRI-O: the user
#: database and the mount table link); the converter adds them so the measured tree is
#: the same in every engine. /etc/hosts, /etc/hostname, /etc/resolv.conf are not measured.
ENGINE_FILES: dict[str, bytes] = {
    "/etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n",
    "/etc/group": b"root:x:0:\n",
}
_MTAB = "/etc/mtab"


def _engine_layer(out: Layout, tree: MergedTree) -> WrittenLayer | None:
    """The engine files the image lacks (ENGINE_FILES, and /etc/mtab -> /proc/mounts), or
    None when it has them all."""
    missing = [path for path in (*ENGINE_FILES, _MTAB) if path not in tree.nodes]
    if not missing:
        return None
    with new_layer(out) as writer:
        if "/etc" not in tree.nodes:
            writer.add(fixed_info("etc", tarfile.DIRTYPE, 0o755))
        for path in missing:
            if path == _MTAB:
                link = fixed_info(path.lstrip("/"), tarfile.SYMTYPE, 0o777)
                link.linkname = "/proc/mounts"
                writer.add(link)
            else:
                content = ENGINE_FILES[path]
                writer.add(
                    fixed_info(path.lstrip("/"), tarfile.REGTYPE, 0o644, len(content)), io.BytesIO(content)
                )
        return writer.finish()


def _runtime_layer(out: Layout) -> WrittenLayer:
    cached = runtime_layer()
    descriptor = Descriptor(LAYER_GZIP, cached.digest, cached.size)
    out.copy_file(cached.path, descriptor)
    return WrittenLayer(descriptor, cached.diff_id)


def convert(options: ConvertOptions, report: Progress = lambda _label, _total: None) -> ConvertResult:
    """Convert; on failure, a destination directory this call created is removed again."""
    target = Reference.parse(options.destination).oci_dir
    created = target is not None and not target.exists()
    try:
        return _convert(options, report)
    except BaseException:
        if created and target is not None:
            shutil.rmtree(target, ignore_errors=True)
        raise


def _convert(options: ConvertOptions, report: Progress) -> ConvertResult:
    _check_names(options)
    protected = _protected(options)
    tmpfs = _scratch(options, protected)
    source_ref, destination_ref = Reference.parse(options.source), Reference.parse(options.destination)
    warnings: list[str] = []
    with tempfile.TemporaryDirectory(prefix="veil-image-") as scratch:
        work = Path(scratch)
        if source_ref.oci_dir is not None:
            source, source_tag = Layout(source_ref.oci_dir), source_ref.tag
        else:
            report(f"fetching {options.source} with skopeo", 0)
            skopeo_copy(options.source, f"oci:{work / 'source'}:source")
            source, source_tag = Layout(work / "source"), "source"
        if destination_ref.oci_dir is not None:
            out, out_tag = Layout(destination_ref.oci_dir), destination_ref.tag or "latest"
        else:
            out, out_tag = Layout(work / "output"), "veil"
        image = source.image(source_tag)
        command, environment, pwd = _workload(image.config, warnings)
        total = 3 * len(image.layers) + 3 * len(protected) + 3 + (destination_ref.oci_dir is None)

        def progress(label: str) -> None:
            report(label, total)

        out.init()

        tree = MergedTree()
        for index, layer in enumerate(image.layers):
            progress(f"reading layer {index + 1}/{len(image.layers)}")
            with source.open_blob(layer) as blob:
                tree.apply(index, blob)

        _owner_warnings(source, image.layers, tree, [p for p, _ in protected], work, warnings)
        volumes: list[TemplateVolume] = []
        storages: list[tuple[str, Path, int]] = []
        taken: set[str] = set()
        plain = work / "volumes"
        plain.mkdir()
        data_dirs: list[tuple[str, int, int, int]] = []  # path, mode bits, uid, gid
        for path, mode in protected:
            if mode == "data":
                progress(f"leaving {path} to a data volume")
                data_dirs.append(_data_directory(tree, path, warnings))
                volumes.append(TemplateVolume(volume_name(path, taken), path, "encrypted", b"", "", "data"))
                continue
            progress(f"protecting {path} ({mode})")
            key, tag, storage = _make_volume(source, image.layers, tree, path, mode, plain)
            volumes.append(TemplateVolume(volume_name(path, taken), path, mode, key, tag))
            storages.append((path, storage, tree.nodes[path].entry.mode))

        layers: list[tuple[WrittenLayer, str, str]] = []  # layer, origin, history comment
        diff_ids = image.config["rootfs"]["diff_ids"]
        for index, layer in enumerate(image.layers):
            progress(f"writing layer {index + 1}/{len(image.layers)}")
            rewritten = filter_layer(source, layer, [p for p, _ in protected], out) if protected else None
            if rewritten is None:
                out.copy_blob_from(source, layer)
                layers.append((WrittenLayer(layer, diff_ids[index]), "source", ""))
            else:
                layers.append((rewritten, "rewritten", ""))
        code = [v for v in volumes if v.kind == "code"]
        for (path, storage, bits), volume in zip(storages, code, strict=True):
            progress(f"writing the volume layer of {path}")
            layers.append(
                (_volume_layer(out, path, storage, bits), f"volume {path}", f"veil volume {volume.name}")
            )
        if data_dirs:
            progress("writing the data directories")
            layers.append((_data_layer(out, data_dirs), "data directories", "veil data directories"))
        engine = _engine_layer(out, tree)
        if engine is not None:
            layers.append((engine, "engine files", "veil: /etc files container engines write when absent"))
        progress("writing the runtime layer")
        layers.append((_runtime_layer(out), "runtime", "veil runtime"))

        measured = MergedTree()
        for index, (written, _, _) in enumerate(layers):
            progress(f"measuring layer {index + 1}/{len(layers)}")
            with out.open_blob(written.descriptor) as blob:
                measured.apply(index, blob)
        measurement = "sha256:" + measured.measurement([v.path for v in volumes]).hex()

        progress("writing config and manifest")
        config = _config(image.config, options, layers)
        config_descriptor = out.put_json(config, CONFIG)
        manifest: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": config_descriptor.as_json(),
            "layers": [written.descriptor.as_json() for written, _, _ in layers],
        }
        if image.manifest.get("annotations"):
            manifest["annotations"] = image.manifest["annotations"]
        manifest_descriptor = out.put_json(manifest, MANIFEST)
        out.tag(manifest_descriptor, out_tag)
        if destination_ref.oci_dir is None:
            progress(f"writing {options.destination} with skopeo")
            skopeo_copy(f"oci:{out.root}:{out_tag}", options.destination)

    text = session_yaml(
        options.session,
        options.service,
        measurement,
        command,
        environment,
        pwd,
        volumes,
        options.destination,
        options.sim_platforms,
        tmpfs,
    )
    return ConvertResult(
        options.destination,
        manifest_descriptor.digest,
        measurement,
        command,
        environment,
        pwd,
        volumes,
        [LayerSummary(w.descriptor.digest, w.descriptor.size, origin) for w, origin, _ in layers],
        warnings,
        text,
        tmpfs,
    )


def _config(
    source: dict[str, Any], options: ConvertOptions, layers: list[tuple[WrittenLayer, str, str]]
) -> dict[str, Any]:
    config = copy.deepcopy(source)
    settings = dict(config.get("config") or {})
    settings.update(
        {
            "Entrypoint": ENTRYPOINT,
            "Cmd": [],
            "Env": [f"VEIL_CONFIG_ID={options.session}/{options.service}"],
            "WorkingDir": "/",
            "User": "0",
        }
    )
    config["config"] = settings
    config["rootfs"] = {"type": "layers", "diff_ids": [written.diff_id for written, _, _ in layers]}
    history = list(config.get("history") or [])
    for _, origin, comment in layers:
        if origin.startswith("volume") or origin == "runtime":
            history.append({"created_by": f"veil image convert ({comment})", "comment": comment})
    config["history"] = history
    return config
