"""The merged tree of layers (as an unpacker builds it) and the image measurement."""

import io
import os
import tarfile
from pathlib import Path

import pytest

from tests.conftest import veil
from veil.image import ImageError
from veil.image.layers import MergedTree
from veil.tee.image_measure import measure_root, tree_digest


def layer(*entries: tuple[str, str, bytes | str | None, int]) -> io.BytesIO:
    """A tar stream of (name, kind, content-or-target, mode) entries."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, kind, content, mode in entries:
            info = tarfile.TarInfo(name)
            info.mode = mode
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, str(content)
                tar.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.LNKTYPE, str(content)
                tar.addfile(info)
            else:
                data = content if isinstance(content, bytes) else b""
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    out.seek(0)
    return out


def tree(*layers: io.BytesIO) -> MergedTree:
    merged = MergedTree()
    for index, stream in enumerate(layers):
        merged.apply(index, stream)
    return merged


def test_whiteouts_opaque_directories_and_implicit_parents() -> None:
    merged = tree(
        layer(
            ("etc/a", "file", b"a", 0o644), ("etc/b", "file", b"b", 0o644), ("var/x/y", "file", b"y", 0o600)
        ),
        layer(
            ("etc/.wh.a", "file", b"", 0o644),
            ("var/x/.wh..wh..opq", "file", b"", 0o644),
            ("var/x/z", "file", b"z", 0o644),
        ),
    )
    assert sorted(merged.nodes) == ["/etc", "/etc/b", "/var", "/var/x", "/var/x/z"]
    assert merged.nodes["/var"].entry.mode == 0o755  # implicit parent
    assert merged.nodes["/var/x/z"].layer == 1


def test_a_hard_link_has_its_targets_content_and_source() -> None:
    merged = tree(layer(("bin/busybox", "file", b"elf", 0o755), ("bin/sh", "link", "bin/busybox", 0o755)))
    assert merged.nodes["/bin/sh"].entry.sha256 == merged.nodes["/bin/busybox"].entry.sha256
    assert merged.nodes["/bin/sh"].member == "bin/busybox"


def test_entries_that_escape_the_root_are_refused() -> None:
    with pytest.raises(ImageError, match="escapes the root"):
        tree(layer(("../etc/passwd", "file", b"x", 0o644)))


def _write(root: Path) -> None:
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(b"tool")
    (root / "bin" / "tool").chmod(0o4755)
    (root / "bin" / "alias").symlink_to("tool")
    (root / "data").mkdir()
    (root / "data" / "db").write_bytes(b"rows")
    (root / "tmp").mkdir()
    (root / "tmp" / "scratch").write_bytes(b"anything")
    (root / "etc").mkdir()
    (root / "etc" / "resolv.conf").write_text("nameserver 10.0.0.1\n")


def _as_layer(root: Path) -> io.BytesIO:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path in sorted(root.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(root)), recursive=False)
    out.seek(0)
    return out


def test_the_unpacked_tree_and_its_layers_measure_the_same(tmp_path: Path) -> None:
    """What the converter computes from layers is what the runtime computes on disk."""
    _write(tmp_path)
    from_layers = tree(_as_layer(tmp_path)).measurement(["/data"])
    assert measure_root(tmp_path, ["/data"]).digest == from_layers


def test_what_the_measurement_covers(tmp_path: Path) -> None:
    _write(tmp_path)
    base = measure_root(tmp_path, ["/data"]).value

    # not covered: engine-provided paths, scratch space, the volume paths
    (tmp_path / "etc" / "resolv.conf").write_text("nameserver 192.0.2.1\n")
    (tmp_path / "tmp" / "more").write_bytes(b"x")
    (tmp_path / "data" / "db").write_bytes(b"other rows")
    assert measure_root(tmp_path, ["/data"]).value == base

    # covered: content, mode bits (setuid), links, new files, and the volume path when not excluded
    assert measure_root(tmp_path).value != base
    (tmp_path / "bin" / "tool").chmod(0o755)
    assert measure_root(tmp_path, ["/data"]).value != base
    (tmp_path / "bin" / "tool").chmod(0o4755)
    assert measure_root(tmp_path, ["/data"]).value == base
    (tmp_path / "bin" / "alias").unlink()
    (tmp_path / "bin" / "alias").symlink_to("/bin/other")
    assert measure_root(tmp_path, ["/data"]).value != base
    (tmp_path / "bin" / "alias").unlink()
    (tmp_path / "bin" / "alias").symlink_to("tool")
    (tmp_path / "bin" / "extra").write_bytes(b"")
    assert measure_root(tmp_path, ["/data"]).value != base
    os.unlink(tmp_path / "bin" / "extra")
    (tmp_path / "bin" / "tool").write_bytes(b"t00l")
    assert measure_root(tmp_path, ["/data"]).value != base


def test_order_of_entries_does_not_matter() -> None:
    merged = tree(layer(("b", "file", b"1", 0o644), ("a", "file", b"2", 0o644)))
    entries = [n.entry for n in merged.nodes.values()]
    assert tree_digest(entries) == tree_digest(reversed(entries))


def test_veil_measure_image_prints_what_the_runtime_computes(tmp_path: Path) -> None:
    _write(tmp_path)
    result = veil("measure", "--image", str(tmp_path), "--exclude", "/data")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == measure_root(tmp_path, ["/data"]).value
    assert veil("measure", "--image", str(tmp_path), "--", "/bin/true").returncode == 2
    assert veil("measure", "--exclude", "/data", "--", "/bin/true").returncode == 2
