"""Collecting GPU evidence through NVML (veil.tee.nvml), from a stand-in for the driver's
library that answers with the real H100 evidence of the vectors (tests/nvml.py)."""

import re
from pathlib import Path

import pytest

from tests.nvml import CHAIN, REPORT, environment
from tests.vectors import requires_vectors
from veil.tee.hardware_evidence import HardwareEvidence
from veil.tee.nvml import NvmlError, collect_gpu_evidence

pytestmark = requires_vectors

NONCE = bytes(range(32))


@pytest.fixture
def nvml(fake_nvml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The library's path, its variables set in this process; the nonces it was asked for
    are recorded in tmp_path/nonces."""
    for name, value in environment(fake_nvml, tmp_path / "nonces").items():
        monkeypatch.setenv(name, value)
    return fake_nvml


def test_each_gpu_gives_its_report_and_chain_for_the_nonce_asked(
    nvml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_NVML_COUNT", "2")
    evidence = collect_gpu_evidence(NONCE, str(nvml))
    assert len(evidence) == 2
    parts = HardwareEvidence.from_evidence(evidence[0])
    assert parts.platform == "nvidia-gpu"
    assert parts.primary == bytes.fromhex(REPORT.read_text().strip())
    assert parts.endorsement_key == CHAIN.read_bytes()
    assert (tmp_path / "nonces").read_text().split() == [NONCE.hex()] * 2


@pytest.mark.parametrize(
    ("variables", "reason"),
    [
        ({"FAKE_NVML_COUNT": "0"}, "NVML sees no GPU"),
        ({"FAKE_NVML_FAIL": "nvmlInit_v2"}, "NVML nvmlInit_v2: Not Supported"),
        (
            {"FAKE_NVML_FAIL": "nvmlDeviceGetConfComputeGpuAttestationReport"},
            "NVML nvmlDeviceGetConfComputeGpuAttestationReport: Not Supported",
        ),
        ({"FAKE_NVML_FAIL": "nvmlDeviceGetConfComputeGpuCertificate"}, "GpuCertificate: Not Supported"),
        ({"FAKE_NVML_REPORT_SIZE": "9000"}, "a GPU report of 9000 bytes (at most 8192)"),
        ({"FAKE_NVML_REPORT_SIZE": "0"}, "a GPU report of 0 bytes"),
    ],
)
def test_a_failing_driver_is_named_not_ignored(
    nvml: Path, monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], reason: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(NvmlError, match=re.escape(reason)):
        collect_gpu_evidence(NONCE, str(nvml))


def test_without_the_driver_the_error_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(
        NvmlError, match=r"NVML \(.*libnvidia-ml.so.1\) is not available.*install the NVIDIA driver"
    ):
        collect_gpu_evidence(NONCE, str(tmp_path / "libnvidia-ml.so.1"))
    with pytest.raises(NvmlError, match="32-byte nonce"):
        collect_gpu_evidence(b"short", str(tmp_path / "libnvidia-ml.so.1"))
