"""The operator's files in deploy/: systemd units, Prometheus rules, the Grafana dashboard,
checked with the tools that will read them (systemd-analyze, promtool) and against the
metrics a real CAS exports."""

import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.cas_server import CasServer
from tests.net import free_port

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = ("veil-cas.service", "veil-las.service")


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is missing: `make test` installs it as root (scripts/os-packages.txt)")
    return found


def installed_units(tmp_path: Path) -> list[Path]:
    """The units as `make install` would find veil: ExecStart names this checkout's veil."""
    veil = Path(sys.executable).with_name("veil")
    paths = []
    for name in UNITS:
        text = (DEPLOY / "systemd" / name).read_text()
        assert "ExecStart=/usr/local/bin/veil " in text
        path = tmp_path / name
        path.write_text(text.replace("/usr/local/bin/veil", str(veil)))
        paths.append(path)
    return paths


def test_systemd_units_verify_cleanly_and_are_hardened(tmp_path: Path) -> None:
    analyze = tool("systemd-analyze")
    units = installed_units(tmp_path)
    result = subprocess.run(
        [analyze, "verify", *map(str, units)], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr  # unknown keys only warn
    for unit in units:
        text = unit.read_text()
        for option in ("ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "User=veil"):
            assert option in text, f"{unit.name}: {option}"
        assert "StateDirectory=veil-" in text
        exposure = subprocess.run(
            [analyze, "security", "--offline=true", "--threshold=20", "--no-pager", str(unit)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert exposure.returncode == 0, f"{unit.name} is exposed:\n{exposure.stdout[-600:]}"
    sysusers = (DEPLOY / "systemd" / "veil.sysusers").read_text()
    assert re.search(r"^u veil ", sysusers, re.M)
    config = DEPLOY / "systemd" / "cas.toml"
    check = subprocess.run(
        [sys.executable, "-m", "veil", "cas", "config", "check", str(config)],
        capture_output=True,
        text=True,
        env={"VEIL_CAS_DATA": str(tmp_path / "state"), "PATH": "/usr/bin:/bin"},
    )
    assert "is not a setting" not in check.stderr and "recovery-key" in check.stderr  # recovery.pub: yours


def test_prometheus_rules_check_and_their_unit_tests_pass() -> None:
    promtool = tool("promtool")
    rules = DEPLOY / "prometheus"
    for argv in (["check", "rules", "veil.rules.yml"], ["test", "rules", "veil.rules.test.yml"]):
        result = subprocess.run([promtool, *argv], capture_output=True, text=True, cwd=rules)
        assert result.returncode == 0, result.stdout + result.stderr
    alerts = set(re.findall(r"alert: (\w+)", (rules / "veil.rules.yml").read_text()))
    tested = set(re.findall(r"alertname: (\w+)", (rules / "veil.rules.test.yml").read_text()))
    assert alerts - {"VeilCasSimMode", "VeilCasErrors"} <= tested, "every alert that matters is unit-tested"


@pytest.fixture
def cas(tmp_path: Path) -> CasServer:
    server = CasServer(tmp_path / "cas", free_port(), tmp_path / "cas.log")
    return server


def exported_names(cas: CasServer) -> set[str]:
    """Every series name the CAS's /metrics can show (histograms with their suffixes)."""
    context = ssl._create_unverified_context()
    with urllib.request.urlopen(f"{cas.url}/metrics", context=context, timeout=10) as response:
        text = response.read().decode()
    names: set[str] = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)", text, re.M):
        names.add(name)
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_count", f"{name}_sum"}
        if kind == "counter" and not name.endswith("_total"):
            names.add(f"{name}_total")
    return names


def test_rules_and_dashboard_use_only_metrics_the_cas_exports(tmp_path: Path, cas: CasServer) -> None:
    sock_path = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(30)
    cas.env = {"NOTIFY_SOCKET": str(sock_path)}
    cas.start()
    try:
        assert listener.recv(64) == b"READY=1", "Type=notify: systemd learns when the CAS listens"
        names = exported_names(cas)
    finally:
        cas.stop()
        listener.close()
    rules = (DEPLOY / "prometheus" / "veil.rules.yml").read_text()
    dashboard = json.loads((DEPLOY / "grafana" / "veil-cas.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used = set(re.findall(r"\b(veil_[a-z_]+)", rules + "\n".join(exprs)))
    assert used and used <= names, f"not exported by the CAS: {sorted(used - names)}"
    for expected in (
        "veil_store_up",
        "veil_certificate_expiry_timestamp_seconds",
        "veil_replica_joins_total",
    ):
        assert expected in used
