"""`veil image convert` end to end: an OCI image built with umoci, converted, checked with
skopeo, unpacked with umoci and run chrooted against a network CAS and a LAS."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.cas_server import CasServer, pinned_owner
from tests.conftest import requires_root, veil
from tests.deploy import runtime_env
from tests.images import (
    MARKERS,
    available,
    blobs_text,
    build_app_image,
    replace_in_layer,
    run_in_chroot,
    unpack,
    with_entrypoint,
)

pytestmark = [
    requires_root,
    pytest.mark.skipif(not available(), reason="needs umoci, skopeo, patchelf, busybox-static"),
]


@pytest.fixture(scope="module")
def source_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_app_image(tmp_path_factory.mktemp("image"))


def _convert(source: str, out: Path, *extra: str) -> dict[str, object]:
    result = veil(
        "image",
        "convert",
        source,
        f"oci:{out}:v1",
        "--session",
        "shop/img",
        "--service",
        "app",
        "--json",
        *extra,
    )
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


def test_convert_run_and_refuse_a_modified_layer(
    tmp_path: Path, source_image: str, cas: CasServer, las: str
) -> None:
    out = tmp_path / "out"
    template = tmp_path / "session.yaml"
    summary = _convert(
        source_image, out, "--encrypt", "/app/data", "--data", "/app/state", "--template", str(template)
    )

    # a valid image: skopeo reads it; the runtime is the entrypoint, the command is not
    inspected = subprocess.run(
        ["skopeo", "inspect", "--config", f"oci:{out}:v1"], capture_output=True, text=True
    )
    assert inspected.returncode == 0, inspected.stderr
    config = json.loads(inspected.stdout)["config"]
    assert config["Entrypoint"][-2:] == ["veil", "run"] and not config.get("Cmd")
    assert config["Env"] == ["VEIL_CONFIG_ID=shop/img/app"]
    assert "GREETING" not in inspected.stdout and "/app/run.sh" not in inspected.stdout

    # no plaintext of the protected path in any blob, old layers included; the layer that
    # held no protected file is shipped as it was
    for blob in blobs_text(out):
        for marker in MARKERS.values():
            assert marker not in blob
    assert [w for w in summary["warnings"] if "uid" in w] == [  # type: ignore[attr-defined]
        "/app/data: files belong to uid 4242, which /etc/passwd of the image does not name; no process"
        " of the image runs as it (a daemon that drops to its own user will not read what only that"
        " owner may)"
    ]
    origins = [layer["origin"] for layer in summary["layers"]]  # type: ignore[attr-defined]
    # the image has /etc/passwd and /etc/group but no /etc/mtab: the converter adds it (podman would)
    assert origins == [
        "rewritten", "rewritten", "source", "volume /app/data", "data directories", "engine files", "runtime",
    ]  # fmt: skip
    assert template.stat().st_mode & 0o777 == 0o600

    # the administrator registers the LAS; the owner adds a secret to the template, names
    # the node's platform and creates the session
    added = cas.admin.veil("cas", "platform", "add", cas.url, "--las", las)
    assert added.returncode == 0, added.stderr
    alice = pinned_owner(tmp_path, cas)
    document = yaml.safe_load(template.read_text())
    assert document["services"][0]["attestation"][0]["measurement"] == summary["measurement"]
    assert document["services"][0]["tmpfs"] == ["/tmp", "/var/cache", "/var/log", "/var/tmp"]
    code, data = document["volumes"]
    assert (
        code["readonly"] is True
        and code["initial_tag"]
        and data
        == {
            "name": "app-state",
            "mode": "encrypted",
            "accept_fresh": True,
        }
    )
    document["secrets"].append({"name": "token", "kind": "ascii", "size": 20})
    document["services"][0]["environment"]["API_TOKEN"] = "$$VEIL::token$$"
    document["security"]["sim_platforms"] = [added.stdout.strip()]
    template.write_text(yaml.safe_dump(document))
    assert alice.veil("session", "create", str(template)).returncode == 0

    env, files = runtime_env(cas, alice, las)
    first = run_in_chroot(_bundle(out, tmp_path / "run1"), env, files)
    assert first.returncode == 0, first.stderr
    assert f"secret: {MARKERS['v2'].decode()}" in first.stdout
    assert "greeting: hello from the image" in first.stdout and "pwd: /app" in first.stdout
    token = next(line for line in first.stdout.splitlines() if line.startswith("token: "))[7:]
    assert len(token) == 20 and "$$" not in token
    assert "runs: 1" in first.stdout and "code: read-only" in first.stdout
    assert f"through the symlink: {MARKERS['v2'].decode()}" in first.stdout
    assert "library: LIBX links=2" in first.stdout
    # a daemon that drops to its own user reads its files (owners and modes kept, the
    # mount shared with allow_other), and not root's (permissions enforced)
    assert f"as www-data: {MARKERS['www'].decode()}" in first.stdout
    refused = next(line for line in first.stdout.splitlines() if line.startswith("www-data and the secret"))
    assert "Permission denied" in refused and MARKERS["v2"].decode() not in refused
    assert "log lines: 1" in first.stdout
    assert not (tmp_path / "run1" / "rootfs" / "var" / "log" / "app.log").exists()
    state = tmp_path / "run1" / "rootfs" / "app" / "state"
    for storage in (tmp_path / "run1" / "rootfs" / "app" / "data", state):
        on_disk = b"".join(p.read_bytes() for p in storage.rglob("*") if p.is_file())
        assert MARKERS["v2"] not in on_disk and b"run\n" not in on_disk
    after_one = tmp_path / "state-after-one-run"
    shutil.copytree(state, after_one, symlinks=True)

    # the same root file system starts again: the log went to a tmpfs, not into the
    # measured root, and the code volume's tag never moved
    second = run_in_chroot(tmp_path / "run1", env, files)
    assert second.returncode == 0, second.stderr
    assert "runs: 2" in second.stdout and "log lines: 1" in second.stdout

    # a fresh container from the image, given the data (a host directory, a Kubernetes
    # volume): starts and carries on
    fresh = _bundle(out, tmp_path / "run2")
    shutil.rmtree(fresh / "rootfs" / "app" / "state")
    shutil.copytree(state, fresh / "rootfs" / "app" / "state", symlinks=True)
    third = run_in_chroot(fresh, env, files)
    assert third.returncode == 0, third.stderr
    assert "runs: 3" in third.stdout

    # an older copy of the data, or none at all, is refused
    for given in (after_one, None):
        bundle = _bundle(out, tmp_path / f"stale-{given is None}")
        if given is not None:
            shutil.rmtree(bundle / "rootfs" / "app" / "state")
            shutil.copytree(given, bundle / "rootfs" / "app" / "state", symlinks=True)
        stale = run_in_chroot(bundle, env, files)
        assert stale.returncode == 1
        assert "volume 'app-state'" in stale.stderr, stale.stderr

    # one file of one layer changed (and the image re-sealed): the measurement differs
    replace_in_layer(out, "v1", "app/run.sh", b"#!/bin/sh\ncat /app/data/secret.txt\n")
    modified = run_in_chroot(_bundle(out, tmp_path / "run3"), env, files)
    assert modified.returncode == 1
    assert "measurement" in modified.stderr
    assert MARKERS["v2"].decode() not in modified.stdout
    assert token not in cas.log.read_text()


def test_the_program_may_live_inside_a_protected_path(
    tmp_path: Path, source_image: str, cas: CasServer, las: str
) -> None:
    """An entrypoint under ``--encrypt`` is not in the measured tree and not on disk in
    plaintext: the runtime attests, mounts, and only then resolves and runs it. A program
    that resolves outside both the measured tree and the volumes is refused."""
    source = with_entrypoint(source_image, tmp_path, ["/app/run.sh"])
    out = tmp_path / "out"
    template = tmp_path / "session.yaml"
    _convert(source, out, "--encrypt", "/app", "--template", str(template))
    added = cas.admin.veil("cas", "platform", "add", cas.url, "--las", las)
    assert added.returncode == 0, added.stderr
    alice = pinned_owner(tmp_path, cas)
    document = yaml.safe_load(template.read_text())
    assert document["services"][0]["command"] == ["/app/run.sh"]
    document["security"]["sim_platforms"] = [added.stdout.strip()]
    template.write_text(yaml.safe_dump(document))
    assert alice.veil("session", "create", str(template)).returncode == 0

    env, files = runtime_env(cas, alice, las)
    bundle = _bundle(out, tmp_path / "run1")
    assert not (bundle / "rootfs" / "app" / "run.sh").exists()  # ciphertext objects only
    ran = run_in_chroot(bundle, env, files)
    assert ran.returncode == 0, ran.stderr
    assert f"secret: {MARKERS['v2'].decode()}" in ran.stdout


def _bundle(layout: Path, bundle: Path) -> Path:
    unpack(layout, "v1", bundle)
    return bundle


def test_same_input_same_output(tmp_path: Path, source_image: str) -> None:
    """Without volumes the output is byte-for-byte reproducible; with them the measurement
    still is (volume layers hold fresh keys and nonces)."""
    first = _convert(source_image, tmp_path / "a", "--template", str(tmp_path / "a.yaml"))
    second = _convert(source_image, tmp_path / "b", "--template", str(tmp_path / "b.yaml"))
    assert first["manifest_digest"] == second["manifest_digest"]
    assert first["measurement"] == second["measurement"]
    encrypted = _convert(
        source_image, tmp_path / "c", "--template", str(tmp_path / "c.yaml"), "--encrypt", "/app/data"
    )
    again = _convert(
        source_image, tmp_path / "d", "--template", str(tmp_path / "d.yaml"), "--encrypt", "/app/data"
    )
    assert encrypted["manifest_digest"] != again["manifest_digest"]
    assert encrypted["measurement"] == again["measurement"]
    assert encrypted["measurement"] != first["measurement"]  # the data left the measured tree


def test_docker_archive_in_and_out(tmp_path: Path, source_image: str) -> None:
    archive = tmp_path / "app.tar"
    copied = subprocess.run(
        ["skopeo", "copy", "--quiet", source_image, f"docker-archive:{archive}:shop/app:1"],
        capture_output=True,
    )
    assert copied.returncode == 0, copied.stderr
    result = veil(
        "image", "convert", f"docker-archive:{archive}",
        f"docker-archive:{tmp_path / 'out.tar'}:shop/app:veil",
        "--session", "shop/img", "--service", "app", "--authenticate", "/app/data",
        "--template", str(tmp_path / "s.yaml"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    inspected = subprocess.run(
        ["skopeo", "inspect", "--config", f"docker-archive:{tmp_path / 'out.tar'}"],
        capture_output=True,
        text=True,
    )
    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["config"]["Env"] == ["VEIL_CONFIG_ID=shop/img/app"]
    session = yaml.safe_load((tmp_path / "s.yaml").read_text())
    assert session["volumes"][0]["mode"] == "authenticated"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--encrypt", "/app/missing"], 1, "/app/missing is not in the image"),
        (["--encrypt", "/app/run.sh"], 1, "a protected path is a directory"),
        (["--encrypt", "/app", "--authenticate", "/app/data"], 1, "overlap"),
        (["--encrypt", "/tmp/x"], 1, "managed by the engine or veil"),
        (["--encrypt", "relative"], 1, "absolute directory"),
        (["--session", "Bad Name"], 1, "not a session name"),
    ],
)
def test_bad_requests_are_refused_and_write_nothing(
    tmp_path: Path, source_image: str, args: list[str], code: int, message: str
) -> None:
    out = tmp_path / "out"
    base = [
        "image",
        "convert",
        source_image,
        f"oci:{out}",
        "--service",
        "app",
        "--template",
        str(tmp_path / "t"),
    ]
    if "--session" not in args:
        base += ["--session", "shop/img"]
    result = veil(*base, *args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "t").exists()
    assert not out.exists()


def test_the_image_needs_a_session_destination(tmp_path: Path, source_image: str) -> None:
    result = veil(
        "image", "convert", source_image, f"oci:{tmp_path / 'o'}", "--session", "a/b", "--service", "s",
        env={"VEIL_CAS_ADDR": ""},
    )  # fmt: skip
    assert result.returncode == 2
    assert "--template" in result.stderr


def test_a_source_that_is_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = veil(
        "image", "convert", f"oci:{tmp_path / 'empty'}", f"oci:{tmp_path / 'o'}",
        "--session", "a/b", "--service", "s", "--template", str(tmp_path / "t"),
    )  # fmt: skip
    assert result.returncode == 1
    assert "not an OCI image layout" in result.stderr
    assert shutil.which("umoci")


def test_convert_straight_to_the_cas(tmp_path: Path, source_image: str, cas: CasServer) -> None:
    """With --cas and no --template the session goes to the CAS and no key touches the disk;
    converting again updates it (naming the current hash)."""
    alice = pinned_owner(tmp_path, cas)
    argv = ["image", "convert", source_image, f"oci:{tmp_path / 'out'}:v1", "--session", "shop/img"]
    argv += ["--service", "app", "--encrypt", "/app/data", "--cas", cas.url]
    first = alice.veil(*argv)
    assert first.returncode == 0, first.stderr
    assert "created session shop/img" in first.stdout
    second = alice.veil(*argv)
    assert second.returncode == 0, second.stderr
    assert "updated session shop/img to revision 2" in second.stdout
    shown = json.loads(alice.veil("session", "show", "shop/img", "--json").stdout)
    measurement = next(
        line.split()[1] for line in second.stdout.splitlines() if line.startswith("measurement ")
    )
    assert measurement in shown["text"]
    assert not list(tmp_path.glob("*.yaml"))
    bob = pinned_owner(tmp_path, cas, "bob")  # another owner may not replace alice's session
    refused = bob.veil(*argv)
    assert refused.returncode == 1 and "already exists" in refused.stderr
    assert "revision 2" in alice.veil("session", "show", "shop/img").stdout
