"""Collecting NVIDIA GPU evidence through NVML, the driver's library (``libnvidia-ml.so.1``).

For each GPU: ``nvmlDeviceGetConfComputeGpuAttestationReport`` with the attestation's
32-byte nonce (the GPU signs an SPDM GET_MEASUREMENTS response to a request carrying it),
and ``nvmlDeviceGetConfComputeGpuCertificate`` for the attestation certificate chain (PEM,
leaf first, up to NVIDIA's Device Identity CA). Each becomes ``nvidia-gpu`` evidence
(``{"report", "certificates"}``, docs/attestation.md, "A GPU beside the CPU"), which the
CAS verifies; nothing is trusted here. The structures are those of nvml.h (CUDA 12.2+).

The library is loaded as the dynamic linker finds it (``LD_LIBRARY_PATH`` included); the
tests load a library of their own that answers with the real H100 evidence of the vectors.
"""

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager

from veil.errors import VeilError
from veil.protocol import Evidence
from veil.tee.hardware_evidence import HardwareEvidence

LIBRARY = "libnvidia-ml.so.1"
NONCE_SIZE = 0x20
REPORT_SIZE = 0x2000
CEC_REPORT_SIZE = 0x1000
CERT_CHAIN_SIZE = 0x1000
ATTESTATION_CERT_CHAIN_SIZE = 0x1400


class NvmlError(VeilError):
    """No GPU evidence: NVML is missing, or one of its calls failed."""


class _AttestationReport(ctypes.Structure):
    _fields_ = [
        ("isCecAttestationReportPresent", ctypes.c_uint),
        ("attestationReportSize", ctypes.c_uint),
        ("cecAttestationReportSize", ctypes.c_uint),
        ("nonce", ctypes.c_ubyte * NONCE_SIZE),
        ("attestationReport", ctypes.c_ubyte * REPORT_SIZE),
        ("cecAttestationReport", ctypes.c_ubyte * CEC_REPORT_SIZE),
    ]


class _Certificate(ctypes.Structure):
    _fields_ = [
        ("certChainSize", ctypes.c_uint),
        ("attestationCertChainSize", ctypes.c_uint),
        ("certChain", ctypes.c_ubyte * CERT_CHAIN_SIZE),
        ("attestationCertChain", ctypes.c_ubyte * ATTESTATION_CERT_CHAIN_SIZE),
    ]


class _Nvml:
    def __init__(self, library: ctypes.CDLL) -> None:
        self.library = library
        library.nvmlErrorString.restype = ctypes.c_char_p

    def call(self, name: str, *args: object) -> None:
        try:
            function = getattr(self.library, name)
        except AttributeError:
            raise NvmlError(f"NVML has no {name} (a driver older than 535?)") from None
        code = function(*args)
        if code != 0:
            said = self.library.nvmlErrorString(code)
            text = said.decode("utf-8", "replace") if said else f"error {code}"
            raise NvmlError(f"NVML {name}: {text}")


@contextmanager
def _opened(library: str) -> Iterator[_Nvml]:
    try:
        loaded = ctypes.CDLL(library)
    except OSError as exc:
        raise NvmlError(
            f"NVML ({library}) is not available: {exc}; install the NVIDIA driver, or run where the GPU is"
        ) from None
    nvml = _Nvml(loaded)
    nvml.call("nvmlInit_v2")
    try:
        yield nvml
    finally:
        loaded.nvmlShutdown()


def _bytes(array: ctypes.Array[ctypes.c_ubyte], size: int, what: str) -> bytes:
    if not 0 < size <= len(array):
        raise NvmlError(f"NVML returned a {what} of {size} bytes (at most {len(array)})")
    return bytes(array[:size])


def collect_gpu_evidence(nonce: bytes, library: str | None = None) -> list[Evidence]:
    """The evidence of every GPU NVML (``library``, default LIBRARY) sees, each bound to
    ``nonce``; NvmlError if there is none or a call fails."""
    if len(nonce) != NONCE_SIZE:
        raise NvmlError(f"a GPU report binds a {NONCE_SIZE}-byte nonce, not {len(nonce)} bytes")
    evidence = []
    with _opened(library or LIBRARY) as nvml:
        count = ctypes.c_uint(0)
        nvml.call("nvmlDeviceGetCount_v2", ctypes.byref(count))
        if count.value == 0:
            raise NvmlError("NVML sees no GPU")
        for index in range(count.value):
            device = ctypes.c_void_p()
            nvml.call("nvmlDeviceGetHandleByIndex_v2", ctypes.c_uint(index), ctypes.byref(device))
            report = _AttestationReport()
            ctypes.memmove(report.nonce, nonce, NONCE_SIZE)
            nvml.call("nvmlDeviceGetConfComputeGpuAttestationReport", device, ctypes.byref(report))
            certificate = _Certificate()
            nvml.call("nvmlDeviceGetConfComputeGpuCertificate", device, ctypes.byref(certificate))
            evidence.append(
                HardwareEvidence(
                    "nvidia-gpu",
                    _bytes(report.attestationReport, report.attestationReportSize, "GPU report"),
                    _bytes(
                        certificate.attestationCertChain,
                        certificate.attestationCertChainSize,
                        "certificate chain",
                    ),
                ).to_evidence()
            )
    return evidence
