"""Debian's podman for the Kubernetes smoke test: its own storage under a test directory,
runc with cgroupfs, and explicit ulimits (this machine kind refuses runc's defaults), and
the rendered manifests rewritten for what `podman kube play` 4.3 can play.

What podman 4.3 cannot do, and what the rewrite does instead (each a podman limit, not a
change of the manifests' meaning):
- a Secret volume makes it panic: Secrets become ConfigMaps with the same data;
- a ``subPath`` mount becomes a directory (the manifests mount ConfigMaps whole);
- container ports with host networking are refused: ports are dropped (the test runs
  every pod on the host network, as one node; the probes name their port by number);
- one replica per Deployment: replicas are played as separate Deployments;
- DaemonSets, Services, NetworkPolicies, PDBs and Namespaces are not played: a DaemonSet's
  pod template is played as a Pod, the rest has no meaning on one host.
"""

import base64
import copy
import json
import os
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

NOT_PLAYED = {"Namespace", "Service", "NetworkPolicy", "PodDisruptionBudget"}


@dataclass
class Podman:
    root: Path

    def __post_init__(self) -> None:
        if shutil.which("podman") is None or shutil.which("runc") is None:
            raise AssertionError("podman, runc and catatonit are needed (make test installs them as root)")
        self.root.mkdir(parents=True, exist_ok=True)
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        nofile = hard if hard != resource.RLIM_INFINITY else 65536
        (self.root / "containers.conf").write_text(
            "[containers]\n"
            f'default_ulimits = ["nofile={nofile}:{nofile}", "nproc=4096:4096"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
        )

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        argv = ["podman", "--root", str(self.root / "storage"), "--runroot", str(self.root / "run"), *args]
        env = {**os.environ, "CONTAINERS_CONF": str(self.root / "containers.conf")}
        result = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {result.stderr[-2000:]}")
        return result

    def wrapper(self, path: Path, before_run: str = "") -> Path:
        """An executable at ``path`` that runs this podman (its storage and configuration)
        with its arguments, for a program that takes a command: a remote job's host.
        ``before_run``: shell lines run first when the subcommand is ``run`` (a host
        operator's changes)."""
        path.write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = run ]; then\n{before_run}\n:\nfi\n'
            f"CONTAINERS_CONF={self.root / 'containers.conf'} exec podman --root {self.root / 'storage'} "
            f'--runroot {self.root / "run"} "$@"\n'
        )
        path.chmod(0o755)
        return path

    def load(self, archive: Path) -> None:
        self("load", "-q", "-i", str(archive))

    def play(self, documents: list[dict[str, Any]], name: str) -> None:
        path = self.root / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
        self("kube", "play", str(path))

    def volume(self, name: str) -> Path:
        """The host directory of a named volume (created if absent)."""
        if self("volume", "exists", name, check=False).returncode != 0:
            self("volume", "create", name)
        return Path(self("volume", "inspect", name, "--format", "{{.Mountpoint}}").stdout.strip())

    def logs(self, container: str) -> str:
        result = self("logs", container, check=False)
        return result.stdout + result.stderr

    def state(self, container: str) -> dict[str, Any]:
        result = self("inspect", container, "--format", "{{json .State}}", check=False)
        return dict(json.loads(result.stdout)) if result.returncode == 0 else {}

    def close(self) -> None:
        self("pod", "rm", "-f", "-a", check=False)
        self("system", "reset", "-f", check=False, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def for_podman(documents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rendered manifests rewritten for podman 4.3 on one host (the module docstring)."""
    played = []
    for original in documents:
        document = copy.deepcopy(original)
        kind = document["kind"]
        document["metadata"].pop("namespace", None)
        if kind in NOT_PLAYED:
            continue
        if kind == "Secret":
            document = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": document["metadata"],
                "data": {k: _decoded(v) for k, v in document.get("data", {}).items()}
                | dict(document.get("stringData", {})),
            }
        if kind in ("Deployment", "DaemonSet"):
            _pod_spec(document["spec"]["template"]["spec"])
        if kind == "DaemonSet":
            template = document["spec"]["template"]
            document = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": document["metadata"]["name"],
                    "labels": template["metadata"].get("labels", {}),
                },
                "spec": template["spec"],
            }
        played.append(document)
    return played


def _decoded(value: str) -> str:
    return base64.b64decode(value).decode()


def _pod_spec(spec: dict[str, Any]) -> None:
    spec["hostNetwork"] = True
    for volume in spec.get("volumes", []):
        if "secret" in volume:
            volume["configMap"] = {"name": volume.pop("secret")["secretName"]}
    for container in spec.get("containers", []):
        ports = {p.get("name"): p["containerPort"] for p in container.pop("ports", [])}
        for probe in ("readinessProbe", "livenessProbe"):
            get = container.get(probe, {}).get("httpGet")
            if get is not None and isinstance(get.get("port"), str):
                get["port"] = ports[get["port"]]
        for mount in container.get("volumeMounts", []):  # podman 4.3 mounts a subPath as a directory
            assert "subPath" not in mount, f"{container['name']}: subPath mounts do not play in podman 4.3"
