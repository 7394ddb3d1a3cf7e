"""`veil run` of a service whose attestation requires a GPU: the runtime collects the GPU's
evidence through NVML for the CAS's nonce and sends it beside the CPU evidence.

NVML is a stand-in for the driver's library answering with the real H100 evidence of the
vectors (tests/nvml.py). That evidence carries the nonce it was made with, so a real run is
refused at the binding, after the collection; the one positive run tells the CAS it issued
that nonce (its MAC check, as tests/unit/cas/test_attest_gpu.py does) and runs in-process.
"""

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import PYTHON, SHOW, measurement_of, requires_root, session_dict, veil
from tests.nvml import NONCE, environment
from tests.vectors import requires_vectors
from veil.cas.nonces import NonceRegistry
from veil.client.embedded import EmbeddedCasClient
from veil.runtime.run import EmbeddedHome, run_with_policy
from veil.tee import nvml

pytestmark = [requires_root, requires_vectors]

FWID = "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d"


def _policy(tmp_path: Path, gpus: list[dict[str, object]] | None) -> Path:
    command = [PYTHON, str(SHOW)]
    document = session_dict(
        command=command, measurement=measurement_of(command), environment={"PYTHONCOERCECLOCALE": "0"}
    )
    if gpus is not None:
        document["services"][0]["attestation"][0]["gpus"] = gpus
    policy = tmp_path / "session.yaml"
    policy.write_text(yaml.safe_dump(document))
    return policy


def _run(tmp_path: Path, policy: Path, env: dict[str, str]) -> tuple[int, str, str]:
    result = veil(
        "run", "--policy", str(policy), "--service", "app", env={"VEIL_HOME": str(tmp_path / "home"), **env}
    )
    return result.returncode, result.stdout, result.stderr


def test_the_runtime_sends_the_gpus_evidence_for_the_cas_nonce(tmp_path: Path, fake_nvml: Path) -> None:
    nonces = tmp_path / "nonces"
    code, out, err = _run(
        tmp_path,
        _policy(tmp_path, [{"platform": "nvidia-gpu", "fwid": FWID}]),
        environment(fake_nvml, nonces),
    )
    assert code == 1 and out == ""
    assert "device 0 (nvidia-gpu): the GPU report is not bound to this attestation's nonce" in err
    asked = nonces.read_text().split()
    assert len(asked) == 1 and len(bytes.fromhex(asked[0])) == 32 and asked[0] != NONCE.hex()
    audit = veil("audit", "show", env={"VEIL_HOME": str(tmp_path / "home")}).stdout
    assert "attest.refuse" in audit


def test_a_gpu_service_without_nvml_says_what_is_missing(tmp_path: Path) -> None:
    code, _out, err = _run(
        tmp_path, _policy(tmp_path, [{"platform": "nvidia-gpu"}]), {"LD_LIBRARY_PATH": str(tmp_path)}
    )
    assert code == 1
    assert "the service's attestation requires GPUs beside the CPU TEE: NVML (libnvidia-ml.so.1)" in err
    assert "is not available" in err and "install the NVIDIA driver" in err


def test_a_service_without_gpus_never_asks_nvml(tmp_path: Path, fake_nvml: Path) -> None:
    nonces = tmp_path / "nonces"
    code, out, err = _run(tmp_path, _policy(tmp_path, None), environment(fake_nvml, nonces))
    assert code == 0, err
    assert json.loads(out)["argv"] == [] and not nonces.exists()


def test_cpu_and_gpu_evidence_of_one_nonce_start_the_program(
    tmp_path: Path,
    fake_nvml: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The whole path in-process: NVML called with the CAS's nonce (the vector's, by the
    seam), the CAS verifying both, the program started; the grant audited with its GPU."""
    for name, value in environment(fake_nvml).items():
        if name != "LD_LIBRARY_PATH":
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(nvml, "LIBRARY", str(fake_nvml))  # where the driver's library is
    issued = NonceRegistry.check
    monkeypatch.setattr(
        NonceRegistry, "check", lambda self, nonce: None if nonce == NONCE else issued(self, nonce)
    )
    monkeypatch.setattr(EmbeddedCasClient, "nonce", lambda self: NONCE)
    home = EmbeddedHome(tmp_path / "home")
    policy = _policy(tmp_path, [{"platform": "nvidia-gpu", "fwid": FWID, "driver_version": "550.90.07"}])
    assert run_with_policy(policy, "app", [], home, lambda _line: None) == 0
    assert json.loads(capfd.readouterr().out)["argv"] == []
    cas, _key = home.open()
    try:
        last = cas.audit.entries()[-1].event
    finally:
        cas.close()
    assert last["event"] == "attest.grant"
    assert last["gpus"] == [{"fwid": FWID, "driver_version": "550.90.07", "vbios_version": "96.00.9f.00.01"}]
