"""OCI image layouts on disk (image-spec v1.1): reading one image, writing blobs and tags.

Other transports (``docker-archive:``, ``docker://``) are converted to and from an OCI
layout with ``skopeo copy``, so the converter itself only knows this one format.
"""

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from veil.image.errors import ImageError

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
_REF = "org.opencontainers.image.ref.name"
_DOCKER_LAYERS = {
    "application/vnd.docker.image.rootfs.diff.tar.gzip": LAYER_GZIP,
    "application/vnd.docker.image.rootfs.diff.tar": LAYER_TAR,
}


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int

    def as_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass
class Image:
    """One image of a layout: its manifest, config and layer descriptors."""

    layout: "Layout"
    manifest: dict[str, Any]
    config: dict[str, Any]
    layers: list[Descriptor]


def canonical_bytes(value: Any) -> bytes:
    """JSON for manifests and configs: sorted keys, no spaces (the same input, the same digest)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class Layout:
    def __init__(self, root: Path) -> None:
        self.root = root

    def blob_path(self, digest: str) -> Path:
        algorithm, _, value = digest.partition(":")
        if algorithm != "sha256" or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
            raise ImageError(f"{self.root}: unsupported or malformed digest '{digest}'")
        return self.root / "blobs" / "sha256" / value

    def read_json(self, descriptor: Descriptor) -> dict[str, Any]:
        data = self.read_blob(descriptor)
        try:
            value = json.loads(data)
        except ValueError:
            raise ImageError(f"{self.root}: blob {descriptor.digest} is not JSON") from None
        if not isinstance(value, dict):
            raise ImageError(f"{self.root}: blob {descriptor.digest} is not a JSON object")
        return value

    def read_blob(self, descriptor: Descriptor) -> bytes:
        path = self.blob_path(descriptor.digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ImageError(f"{self.root}: blob {descriptor.digest} is missing") from None
        if "sha256:" + hashlib.sha256(data).hexdigest() != descriptor.digest:
            raise ImageError(f"{self.root}: blob {descriptor.digest} does not match its digest")
        return data

    @contextmanager
    def open_blob(self, descriptor: Descriptor) -> Iterator[IO[bytes]]:
        """The blob, checked against its digest while it is read to the end."""
        path = self.blob_path(descriptor.digest)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise ImageError(f"{self.root}: blob {descriptor.digest} is missing") from None
        with handle:
            digest = hashlib.sha256()
            while block := handle.read(1 << 20):
                digest.update(block)
            if "sha256:" + digest.hexdigest() != descriptor.digest:
                raise ImageError(f"{self.root}: layer {descriptor.digest} does not match its digest")
            handle.seek(0)
            yield handle

    # -- reading ------------------------------------------------------------------------

    def _index(self) -> dict[str, Any]:
        try:
            index = json.loads((self.root / "index.json").read_text())
        except FileNotFoundError:
            raise ImageError(f"{self.root} is not an OCI image layout (no index.json)") from None
        except ValueError:
            raise ImageError(f"{self.root}/index.json is not JSON") from None
        if not isinstance(index, dict) or not isinstance(index.get("manifests"), list):
            raise ImageError(f"{self.root}/index.json has no manifest list")
        return index

    def image(self, tag: str | None) -> Image:
        entries = self._index()["manifests"]
        if tag is not None:
            entries = [m for m in entries if m.get("annotations", {}).get(_REF) == tag]
            if not entries:
                raise ImageError(f"{self.root} has no image tagged '{tag}'")
        elif len(entries) != 1:
            tags = sorted(str(m.get("annotations", {}).get(_REF)) for m in entries)
            raise ImageError(
                f"{self.root} holds {len(entries)} images; name one: oci:DIR:TAG ({', '.join(tags)})"
            )
        entry = _descriptor(entries[0])
        if entry.media_type == INDEX:
            entry = self._platform_manifest(entry)
        if entry.media_type != MANIFEST:
            raise ImageError(f"{self.root}: unsupported manifest type {entry.media_type}")
        manifest = self.read_json(entry)
        config = self.read_json(_descriptor(manifest.get("config")))
        layers = [_descriptor(d) for d in manifest.get("layers", [])]
        layers = [
            Descriptor(_DOCKER_LAYERS.get(d.media_type, d.media_type), d.digest, d.size) for d in layers
        ]
        for layer in layers:
            if layer.media_type not in (LAYER_GZIP, LAYER_TAR):
                raise ImageError(
                    f"layer {layer.digest[:19]}… is {layer.media_type}; veil reads tar and tar+gzip layers "
                    "(re-compress with `skopeo copy --dest-compress-format gzip`)"
                )
        diff_ids = config.get("rootfs", {}).get("diff_ids", [])
        if len(diff_ids) != len(layers):
            raise ImageError(
                f"{self.root}: the config lists {len(diff_ids)} layers, the manifest {len(layers)}"
            )
        return Image(self, manifest, config, layers)

    def _platform_manifest(self, entry: Descriptor) -> Descriptor:
        index = self.read_json(entry)
        for candidate in index.get("manifests", []):
            platform = candidate.get("platform", {})
            if platform.get("os") == "linux" and platform.get("architecture") == "amd64":
                return _descriptor(candidate)
        raise ImageError(f"{self.root}: the image index has no linux/amd64 image")

    # -- writing ------------------------------------------------------------------------

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        layout = self.root / "oci-layout"
        if not layout.exists():
            if any(self.root.iterdir()):
                raise ImageError(f"{self.root} exists and is not an OCI image layout; choose a new directory")
            layout.write_text('{"imageLayoutVersion":"1.0.0"}')
            (self.root / "index.json").write_text(
                canonical_bytes({"schemaVersion": 2, "manifests": []}).decode()
            )
        (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)

    def temporary_blob(self) -> tuple[IO[bytes], Path]:
        fd, name = tempfile.mkstemp(dir=self.root / "blobs", prefix=".incoming-")
        return os.fdopen(fd, "wb"), Path(name)

    def commit_blob(self, temporary: Path, digest: str) -> None:
        target = self.blob_path(digest)
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)

    def put_json(self, value: dict[str, Any], media_type: str) -> Descriptor:
        data = canonical_bytes(value)
        descriptor = Descriptor(media_type, "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
        self.blob_path(descriptor.digest).write_bytes(data)
        return descriptor

    def copy_blob_from(self, source: "Layout", descriptor: Descriptor) -> None:
        self.copy_file(source.blob_path(descriptor.digest), descriptor)

    def copy_file(self, path: Path, descriptor: Descriptor) -> None:
        """Add the file at ``path`` as the blob ``descriptor`` (checked while copied)."""
        target = self.blob_path(descriptor.digest)
        if target.exists():
            return
        handle, temporary = self.temporary_blob()
        digest = hashlib.sha256()
        with handle, path.open("rb") as source:
            while block := source.read(1 << 20):
                digest.update(block)
                handle.write(block)
        if "sha256:" + digest.hexdigest() != descriptor.digest:
            temporary.unlink()
            raise ImageError(f"{path} does not match {descriptor.digest} (changed on disk?)")
        self.commit_blob(temporary, descriptor.digest)

    def tag(self, manifest: Descriptor, tag: str) -> None:
        index = self._index()
        kept = [m for m in index["manifests"] if m.get("annotations", {}).get(_REF) != tag]
        kept.append({**manifest.as_json(), "annotations": {_REF: tag}})
        index["manifests"] = kept
        temporary = self.root / "index.json.tmp"
        temporary.write_text(canonical_bytes(index).decode())
        os.replace(temporary, self.root / "index.json")


def _descriptor(raw: Any) -> Descriptor:
    if not isinstance(raw, dict) or not isinstance(raw.get("digest"), str):
        raise ImageError("a descriptor in the image has no digest")
    return Descriptor(str(raw.get("mediaType", "")), raw["digest"], int(raw.get("size", 0)))


# -- transports ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """``oci:DIR[:TAG]`` (handled here) or anything skopeo understands."""

    text: str
    oci_dir: Path | None
    tag: str | None

    @classmethod
    def parse(cls, text: str) -> "Reference":
        transport, sep, rest = text.partition(":")
        if not sep or not rest:
            raise ImageError(
                f"'{text}' is not an image reference; write oci:DIR[:TAG] or docker-archive:FILE"
            )
        if transport != "oci":
            return cls(text, None, None)
        directory, sep, tag = rest.rpartition(":")
        if not sep or "/" in tag:
            directory, tag = rest, ""
        return cls(text, Path(directory), tag or None)


def skopeo_copy(source: str, destination: str) -> None:
    tool = shutil.which("skopeo")
    if tool is None:
        raise ImageError(
            f"skopeo is needed for {source} -> {destination} (Debian package skopeo); oci:DIR needs none"
        )
    result = subprocess.run(
        [tool, "copy", "--quiet", "--insecure-policy", source, destination],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ImageError(f"skopeo copy {source} {destination} failed: {result.stderr.strip()}")
