"""The dev manifests played with real containers (`podman kube play`, tests/podman.py): the
images of `make images`, two CAS replicas on one PostgreSQL (the second joins by
attestation), the LAS's pod, and a workload converted with `veil image convert` that
attests through the LAS, receives its secret and keeps data on its volume claim. One CAS
container is killed: the workload, started again, attests through the other replica. Its
pod is removed and played again from its image: it finds the data it wrote.

All pods run on the host network of this one machine. PostgreSQL is the tests' server on
the host (tests/postgres.py), not a pod."""

import base64
import contextlib
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cas_server import Owner
from tests.conftest import requires_root
from tests.images import BUSYBOX, umoci
from tests.net import free_port
from tests.podman import Podman, for_podman
from tests.postgres import new_database
from veil.crypto import PlatformSigningKey
from veil.image.services import UID, build_all

pytestmark = requires_root

TOP = Path(__file__).resolve().parents[2]
DEV = TOP / "deploy" / "kubernetes" / "overlays" / "dev"
APP = """#!/bin/sh
echo "secret: $DB_PASS"
echo run >> /data/runs.txt
echo "runs: $(wc -l < /data/runs.txt)"
"""


@dataclass
class Cluster:
    podman: Podman
    rendered: list[dict[str, Any]]
    root: Path
    admin: Owner
    ports: list[int]
    db: str

    def url(self, replica: int = 0) -> str:
        return f"https://127.0.0.1:{self.ports[replica]}"

    def of_kind(self, kind: str, name: str) -> dict[str, Any]:
        return next(d for d in self.rendered if d["kind"] == kind and d["metadata"]["name"] == name)


def _render() -> list[dict[str, Any]]:
    result = subprocess.run(["kubectl", "kustomize", str(DEV)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return list(yaml.safe_load_all(result.stdout))


def _cas_toml(port: int, db: str, admin: str, join: int | None) -> str:
    lines = [
        f'listen = "127.0.0.1:{port}"',
        'data = "/var/lib/veil-cas"',
        f'db = "{db}"',
        f'admin = ["{admin}"]',
        'recovery-key = "/etc/veil/recovery/recovery.pub"',
        'mode = "sim"',
        'log-format = "json"',
    ]
    if join is not None:
        lines.append(f'join = "https://127.0.0.1:{join}"')
    return "\n".join(lines) + "\n"


def _replica(cluster: Cluster, index: int) -> list[dict[str, Any]]:
    """The CAS Deployment and its ConfigMap for replica ``index`` (podman plays one replica
    per Deployment), on its own port and data volume."""
    config = cluster.of_kind("ConfigMap", next(
        d["metadata"]["name"] for d in cluster.rendered
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("veil-cas-config")
    ))  # fmt: skip
    config = {**config, "metadata": {"name": f"veil-cas-config-{index}"}}
    config["data"] = {
        "cas.toml": _cas_toml(
            cluster.ports[index], cluster.db, cluster.admin.id, None if index == 0 else cluster.ports[0]
        )
    }
    deployment = yaml.safe_load(yaml.safe_dump(cluster.of_kind("Deployment", "veil-cas")))
    deployment["metadata"]["name"] = f"veil-cas-{index}"
    spec = deployment["spec"]["template"]["spec"]
    for volume in spec["volumes"]:
        if volume["name"] == "config":
            volume["configMap"]["name"] = config["metadata"]["name"]
        if volume["name"] == "data":
            volume["persistentVolumeClaim"]["claimName"] = f"veil-cas-data-{index}"
    for container in spec["containers"]:
        for probe in ("readinessProbe", "livenessProbe"):
            if probe in container:
                container[probe]["httpGet"]["port"] = cluster.ports[index]
    return for_podman([config, deployment])


def _wait_ready(cluster: Cluster, index: int) -> None:
    deadline = time.time() + 60
    while True:
        result = subprocess.run(
            ["curl", "-sk", "--max-time", "2", f"{cluster.url(index)}/readyz"], capture_output=True, text=True
        )
        if result.returncode == 0 and '"ready"' in result.stdout.replace(" ", ""):
            return
        if time.time() > deadline:
            logs = cluster.podman.logs(f"veil-cas-{index}-pod-0-cas")
            raise AssertionError(f"CAS replica {index} is not ready: {result.stdout}\n{logs[-3000:]}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres_server: str) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("kube")
    images = build_all(root / "images", "smoke")
    podman = Podman(root / "podman")
    try:
        for image in images:
            assert image.archive is not None
            podman.load(image.archive)
        admin = Owner(root / "admin")
        ports = [free_port(), free_port()]
        cluster = Cluster(podman, _render(), root, admin, ports, new_database(postgres_server))
        _start_replicas(cluster)
        yield cluster
    finally:
        podman.close()


def _start_replicas(cluster: Cluster) -> None:
    """Replica 0 on an empty database makes the master key; the administrator registers
    replica 1's platform key; replica 1 joins."""
    recovery = cluster.root / "recovery.key"
    keygen = cluster.admin.veil("cas", "recovery", "keygen", "-o", str(recovery))
    assert keygen.returncode == 0, keygen.stderr
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "veil-cas-recovery"},
        "data": {"recovery.pub": base64.b64encode(Path(f"{recovery}.pub").read_bytes()).decode()},
    }
    claims = [
        d
        for d in cluster.rendered
        if d["kind"] == "PersistentVolumeClaim" and d["metadata"]["name"] == "veil-cas-data"
    ]
    for index in (0, 1):
        claim = {**claims[0], "metadata": {"name": f"veil-cas-data-{index}"}}
        cluster.podman.volume(f"veil-cas-data-{index}")
        if index == 1:  # the new replica's platform key, registered by the administrator first
            data = cluster.podman.volume("veil-cas-data-1")
            key = PlatformSigningKey.load_or_create(data / "platform.key")
            for path in (data, data / "platform.key"):
                shutil.chown(path, UID, UID)
            pinned = cluster.admin.veil("cas", "attest", cluster.url(0), "--tolerate", "sim")
            assert pinned.returncode == 0, pinned.stderr
            added = cluster.admin.veil(
                "cas",
                "platform",
                "add",
                cluster.url(0),
                "--key-file",
                str(data / "platform.key"),
                "--name",
                "cas-1",
            )
            assert added.returncode == 0, added.stderr
            assert added.stdout.strip() == key.key_id
        else:
            shutil.chown(cluster.podman.volume("veil-cas-data-0"), UID, UID)
        # the claim's volume exists already (made above): podman refuses to make it again
        assert claim["metadata"]["name"] == f"veil-cas-data-{index}"
        cluster.podman.play([*for_podman([secret]), *_replica(cluster, index)], f"cas-{index}")
        _wait_ready(cluster, index)


def test_two_cas_replicas_on_one_database_the_second_joins(cluster: Cluster) -> None:
    joined = cluster.podman.logs("veil-cas-1-pod-0-cas")
    assert f"master key received from {cluster.url(0)}" in joined, joined[-2000:]
    first = cluster.podman.logs("veil-cas-0-pod-0-cas")
    assert "master key received" not in first
    for index in (0, 1):
        assert cluster.podman.state(f"veil-cas-{index}-pod-0-cas").get("Running")


def _las(cluster: Cluster) -> Path:
    """The LAS DaemonSet's pod, its host directories under the test's root; the socket."""
    host = {"/run/veil": cluster.root / "run-veil", "/var/lib/veil-las": cluster.root / "las-state"}
    pod = for_podman([cluster.of_kind("DaemonSet", "veil-las")])[0]
    for volume in pod["spec"]["volumes"]:
        if "hostPath" in volume:
            directory = host[volume["hostPath"]["path"]]
            directory.mkdir(exist_ok=True)
            shutil.chown(directory, UID, UID)
            volume["hostPath"]["path"] = str(directory)
    cluster.podman.play([pod], "las")
    socket_path = host["/run/veil"] / "las.sock"
    deadline = time.time() + 30
    while not socket_path.exists():
        assert time.time() < deadline, cluster.podman.logs("veil-las-las")[-2000:]
        time.sleep(0.2)
    return socket_path


def _app_image(root: Path) -> str:
    """busybox and /app/run.sh, which prints the secret it was given and counts its runs in
    /data (a data volume: on the pod's claim)."""
    layout, bundle = root / "app-src", root / "app-bundle"
    umoci("init", "--layout", str(layout))
    umoci("new", "--image", f"{layout}:app")
    umoci("unpack", "--image", f"{layout}:app", str(bundle))
    rootfs = bundle / "rootfs"
    (rootfs / "bin").mkdir()
    shutil.copy(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in ("sh", "echo", "wc", "cat"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "app").mkdir()
    (rootfs / "data").mkdir()
    private = rootfs / "app" / "private"  # a daemon's own: measured all the same (DAC_READ_SEARCH)
    private.mkdir(mode=0o700)
    (private / "state").write_text("the daemon's\n")
    for path in (private, private / "state"):
        os.chown(path, 4242, 4242)
    (private / "state").chmod(0o600)
    (rootfs / "app" / "run.sh").write_text(APP)
    (rootfs / "app" / "run.sh").chmod(0o755)
    umoci("repack", "--image", f"{layout}:app", str(bundle))
    umoci(
        "config", "--image", f"{layout}:app", "--config.entrypoint", "/bin/sh", "--config.cmd", "/app/run.sh"
    )
    return f"oci:{layout}:app"


def _workload(cluster: Cluster, service_port: int) -> list[dict[str, Any]]:
    deployment = yaml.safe_load(yaml.safe_dump(cluster.of_kind("Deployment", "demo")))
    spec = deployment["spec"]["template"]["spec"]
    spec["restartPolicy"] = "Never"  # a program that ends; a Deployment's would be Always
    for container in spec["containers"]:
        for variable in container["env"]:
            if variable["name"] == "VEIL_CAS_ADDR":  # the Service: the test's failover proxy
                variable["value"] = f"https://127.0.0.1:{service_port}"
    for volume in spec["volumes"]:
        if volume["name"] == "las":
            volume["hostPath"]["path"] = str(cluster.root / "run-veil")
    ca = next(
        d
        for d in cluster.rendered
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("veil-cas-ca")
    )
    pinned = cluster.admin.pin(cluster.url(0))["ca_certificate"]
    ca = {**ca, "data": {"cas-ca.pem": pinned}}
    return for_podman([ca, deployment])


def test_a_converted_workload_attests_survives_a_lost_replica_and_keeps_its_data(cluster: Cluster) -> None:
    socket_path = _las(cluster)
    added = cluster.admin.veil(
        "cas", "platform", "add", cluster.url(0), "--las", f"unix:{socket_path}", "--name", "node"
    )
    assert added.returncode == 0, added.stderr
    template = cluster.root / "demo.yaml"
    archive = cluster.root / "demo.tar"
    converted = cluster.admin.veil(
        "image", "convert", _app_image(cluster.root), f"docker-archive:{archive}:demo-confidential:1.0",
        "--session", "demo", "--service", "app", "--data", "/data", "--template", str(template),
        "--sim-platform", added.stdout.strip(),
    )  # fmt: skip
    assert converted.returncode == 0, converted.stderr
    session = yaml.safe_load(template.read_text())
    session["secrets"] = [*session.get("secrets", []), {"name": "db_pass", "kind": "ascii", "size": 24}]
    session["services"][0].setdefault("environment", {})["DB_PASS"] = "$$VEIL::db_pass$$"
    template.write_text(yaml.safe_dump(session, sort_keys=False))
    created = cluster.admin.veil("session", "create", str(template), "--cas", cluster.url(0))
    assert created.returncode == 0, created.stderr
    cluster.podman.load(archive)
    with Failover([cluster.ports[0], cluster.ports[1]]) as service:
        first = _run_workload(cluster, service.port)
        assert "runs: 1" in first, first
        secret = first.split("secret: ", 1)[1].split()[0]
        assert len(secret) == 24
        cluster.podman("kill", "--signal", "KILL", "veil-cas-0-pod-0-cas")  # one CAS replica is lost
        cluster.podman("pod", "stop", "-t", "0", "veil-cas-0-pod-0")  # and stays lost (no restart)
        assert not cluster.podman.state("veil-cas-0-pod-0-cas").get("Running")
        second = _run_workload(cluster, service.port)
        assert f"secret: {secret}" in second and "runs: 2" in second, second
    assert cluster.podman.state("veil-cas-1-pod-0-cas").get("Running"), "the other replica serves"
    assert not cluster.podman.state("veil-cas-0-pod-0-cas").get("Running")
    served = cluster.podman.logs("veil-cas-1-pod-0-cas")
    assert '"route":"/v1/attest"' in served.replace(" ", "") or "/v1/attest" in served, served[-2000:]


def _run_workload(cluster: Cluster, port: int) -> str:
    """Play the workload's pod from its image (removing an earlier one) and wait for the
    program to finish; its output."""
    cluster.podman("pod", "rm", "-f", "demo-pod-0", check=False)
    cluster.podman.play(_workload(cluster, port), "demo")
    deadline = time.time() + 90
    while cluster.podman.state("demo-pod-0-demo").get("Running", True):
        assert time.time() < deadline, cluster.podman.logs("demo-pod-0-demo")[-3000:]
        time.sleep(0.5)
    logs = cluster.podman.logs("demo-pod-0-demo")
    assert cluster.podman.state("demo-pod-0-demo").get("ExitCode") == 0, logs[-3000:]
    return logs


class Failover:
    """The Service in front of the CAS replicas on one host: a loopback TCP proxy that
    connects each client to the first replica that accepts."""

    def __init__(self, backends: list[int]) -> None:
        self.backends = backends
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.done = threading.Event()

    def __enter__(self) -> "Failover":
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.server.close()

    def _accept(self) -> None:
        while not self.done.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        for port in self.backends:
            try:
                backend = socket.create_connection(("127.0.0.1", port), timeout=2)
                break
            except OSError:
                continue
        else:
            client.close()
            return
        backend.settimeout(None)
        for source, sink in ((client, backend), (backend, client)):
            threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
