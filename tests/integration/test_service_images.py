"""`make images`: the veil-cas and veil-las images are reproducible (two builds, one
manifest digest), hold no key material and no test data, run as a non-root user without
a shell, carry their version and revision, and load into skopeo's docker-archive."""

import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from veil import __version__
from veil.image.oci import Layout
from veil.image.services import UID

TOP = Path(__file__).resolve().parents[2]
#: key material: a PEM private key with its base64 body (cryptography's code names the
#: markers without a key between them), and the names of veil's key files
KEY_TEXT = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=\r\n]{64,}-----END")
KEY_NAMES = ("master.key", "master.sealed", "platform.key", "identity.key", "bootstrap-token", "owner.key")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("skopeo") is None or shutil.which("patchelf") is None:
        raise AssertionError("skopeo and patchelf are needed (make test installs them as root)")
    first, second = tmp_path_factory.mktemp("images-1"), tmp_path_factory.mktemp("images-2")
    for out in (first, second):
        result = subprocess.run(
            [sys.executable, str(TOP / "scripts" / "build_images.py"), "--out", str(out), "--revision", "r1"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    return first, second


def test_two_builds_give_the_same_manifest_digests(built: tuple[Path, Path]) -> None:
    first, second = (json.loads((out / "images.json").read_text()) for out in built)
    assert set(first) == {"veil-cas", "veil-las"}
    assert first == second
    assert all(image["tag"] == __version__ for image in first.values())


def _members(layout: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    image = Layout(layout).image(__version__)
    members = []
    for descriptor in image.layers:
        with Layout(layout).open_blob(descriptor) as blob, tarfile.open(fileobj=blob, mode="r|gz") as tar:
            for member in tar:
                handle = tar.extractfile(member) if member.isreg() else None
                members.append((member, handle.read() if handle else b""))
    return members


@pytest.mark.parametrize("name", ["veil-cas", "veil-las"])
def test_an_image_holds_no_key_no_test_data_and_no_shell(built: tuple[Path, Path], name: str) -> None:
    members = _members(built[0] / name)
    names = {m.name for m, _ in members}
    assert not {n for n in names if n.rsplit("/", 1)[-1] in KEY_NAMES}
    assert not [m.name for m, data in members if KEY_TEXT.search(data)]
    assert not {
        n for n in names if {"test", "tests"} & set(n.split("/")[:-1]) or n.startswith((".veil", "root/"))
    }
    assert not {"bin/sh", "usr/bin/sh", "bin/bash", "usr/bin/bash", "bin/busybox"} & names
    state = f"var/lib/{name}"
    directory = next(m for m, _ in members if m.name == state)
    assert (directory.uid, directory.mode) == (UID, 0o700)
    assert not [n for n in names if n.startswith(state + "/")], "the state directory is empty"
    passwd = next(data for m, data in members if m.name == "etc/passwd").decode()
    assert f"veil:x:{UID}:{UID}:" in passwd


@pytest.mark.parametrize("name", ["veil-cas", "veil-las"])
def test_the_config_runs_veil_as_the_service_user_with_labels(built: tuple[Path, Path], name: str) -> None:
    config = Layout(built[0] / name).image(__version__).config
    settings = config["config"]
    assert settings["User"] == f"{UID}:{UID}"
    assert settings["Entrypoint"][-2:] == ["-m", "veil"]
    assert settings["Cmd"][:2] == (["cas", "serve"] if name == "veil-cas" else ["las", "serve"])
    labels = settings["Labels"]
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.revision"] == "r1"
    assert labels["org.opencontainers.image.title"] == name


def test_the_docker_archives_are_readable_by_skopeo(built: tuple[Path, Path]) -> None:
    for name in ("veil-cas", "veil-las"):
        result = subprocess.run(
            ["skopeo", "inspect", "--config", f"docker-archive:{built[0] / name}.tar"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["config"]["User"] == f"{UID}:{UID}"


def test_the_server_packages_are_in_the_image(built: tuple[Path, Path]) -> None:
    names = {m.name for m, _ in _members(built[0] / "veil-cas")}
    for package in ("aiohttp", "psycopg", "uvloop", "prometheus_client", "veil/cas/server"):
        assert any(f"site-packages/{package}/" in n for n in names), package
