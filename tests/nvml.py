"""A stand-in for the NVIDIA driver's NVML library (tests/programs/fake_nvml.c), built with
gcc, answering with the real H100 evidence of the vectors (../shared/vectors, section 9.3)."""

import subprocess
from pathlib import Path

import pytest

from tests.vectors import ROOT

SOURCE = Path(__file__).parent / "programs" / "fake_nvml.c"
GPU_VECTORS = ROOT / "trustee" / "nvidia"
REPORT = GPU_VECTORS / "hopperAttestationReport.txt"
CHAIN = GPU_VECTORS / "hopper_cert_chain_case1.txt"
#: the nonce the vector report was made with (its SPDM request)
NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")


def build(directory: Path) -> Path:
    """The library, as ``directory/libnvidia-ml.so.1``."""
    library = directory / "libnvidia-ml.so.1"
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(library), str(SOURCE)],
        check=True,
        capture_output=True,
    )
    return library


@pytest.fixture(scope="session")
def fake_nvml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("fake-nvml"))


def environment(library: Path, nonces: Path | None = None, **extra: str) -> dict[str, str]:
    """Variables that make a process load ``library`` as NVML and answer with the vectors."""
    return {
        "LD_LIBRARY_PATH": str(library.parent),
        "FAKE_NVML_REPORT": str(REPORT),
        "FAKE_NVML_CHAIN": str(CHAIN),
        **({"FAKE_NVML_NONCES": str(nonces)} if nonces else {}),
        **extra,
    }
