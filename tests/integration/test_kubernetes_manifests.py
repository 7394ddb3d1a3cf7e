"""deploy/kubernetes renders with kubectl's built-in Kustomize and every resource validates,
strictly, against the Kubernetes 1.30 schemas (issue #32); what each overlay promises is
in the rendered manifests (replicas, no sim in production, non-root, no privilege)."""

import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
OVERLAYS = ["dev", "production"]


def render(overlay: str) -> list[dict]:  # type: ignore[type-arg]
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with Kustomize built in) is on this machine kind; install it to run this test"
    built = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    return [d for d in yaml.safe_load_all(built.stdout) if d]


def by_kind(resources: list[dict], kind: str, name: str) -> dict:  # type: ignore[type-arg]
    return next(r for r in resources if r["kind"] == kind and r["metadata"]["name"] == name)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_resource_validates_strictly_against_kubernetes_1_30(overlay: str) -> None:
    resources = render(overlay)
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "DaemonSet"} <= {
        r["kind"] for r in resources
    }
    for resource in resources:
        kubernetes_validate.validate(resource, "1.30", strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_veils_own_pods_run_unprivileged(overlay: str) -> None:
    resources = render(overlay)
    for kind, name in (("Deployment", "veil-cas"), ("DaemonSet", "veil-las")):
        pod = by_kind(resources, kind, name)["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert "limits" in container["resources"]


def test_production_has_three_replicas_on_postgresql_and_no_sim() -> None:
    resources = render("production")
    cas = by_kind(resources, "Deployment", "veil-cas")
    assert cas["spec"]["replicas"] == 3
    assert by_kind(resources, "PodDisruptionBudget", "veil-cas")["spec"]["minAvailable"] == 2
    env = {e["name"]: e for e in cas["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["VEIL_MODE"]["value"] == "hw"
    assert env["VEIL_CAS_DB"]["valueFrom"]["secretKeyRef"] == {"name": "veil-cas-db", "key": "url"}
    config = by_kind(resources, "ConfigMap", "veil-cas-config")["data"]["cas.toml"]
    assert 'mode = "hw"' in config and "postgresql://" not in config
    assert "sim" not in yaml.safe_dump(resources).replace("simple", "")


def test_dev_keeps_sqlite_on_a_claim_and_the_workload_reaches_the_las_and_fuse() -> None:
    resources = render("dev")
    cas = by_kind(resources, "Deployment", "veil-cas")
    assert cas["spec"]["replicas"] == 1 and cas["spec"]["strategy"] == {"type": "Recreate"}
    volumes = {v["name"]: v for v in cas["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "persistentVolumeClaim": {"claimName": "veil-cas-data"}}
    workload = by_kind(resources, "Deployment", "demo")["spec"]["template"]
    assert workload["metadata"]["labels"]["veil.dev/role"] == "runtime"  # admitted by the NetworkPolicy
    mounts = {m["name"] for m in workload["spec"]["containers"][0]["volumeMounts"]}
    assert {"las", "fuse", "data", "cas-ca"} <= mounts


def test_the_validation_would_refuse_a_misspelt_field() -> None:
    service = by_kind(render("dev"), "Service", "veil-cas")
    service["spec"]["prots"] = service["spec"].pop("ports")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, "1.30", strict=True)


CHECKOV = DEPLOY.parents[1] / ".venv-tools" / "bin" / "checkov"
CONFIG = DEPLOY / "checkov.yaml"


def test_checkov_passes_on_every_overlay_and_every_skip_is_justified(tmp_path: Path) -> None:
    assert CHECKOV.exists(), "make test installs checkov into .venv-tools (make .venv-tools/...)"
    lines = CONFIG.read_text().splitlines()
    skips = [i for i, line in enumerate(lines) if line.strip().startswith("- CKV")]
    assert skips
    for index in skips:  # a comment right above it, or above the run of skips it belongs to
        above = index - 1
        while lines[above].strip().startswith("- CKV"):
            above -= 1
        assert lines[above].strip().startswith("#"), f"{lines[index].strip()} has no justification"
    for overlay in OVERLAYS:
        built = subprocess.run(
            [shutil.which("kubectl") or "kubectl", "kustomize", str(DEPLOY / "overlays" / overlay)],
            capture_output=True,
            text=True,
            check=True,
        )
        (tmp_path / f"{overlay}.yaml").write_text(built.stdout)
    result = subprocess.run(
        [
            str(CHECKOV),
            "-d",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "--config-file",
            str(CONFIG),
            "--compact",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Failed checks: 0" in result.stdout
