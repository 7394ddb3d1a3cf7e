"""Devices beside the CPU TEE (docs/attestation.md, "A GPU beside the CPU"): verify each
device's evidence, require it to carry the attestation's nonce, and match the GPUs an
attestation entry requires.

The CPU evidence binds the nonce, the runtime's keys and the program; a GPU's SPDM report
binds the same nonce (the CAS's, single use, 60 s). So the CAS releases secrets only to a
runtime that showed, within one attestation, both a verified CPU TEE and verified GPUs.
Imported only when an attestation carries devices or an entry requires them.
"""

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from veil.crypto import constant_time_equal
from veil.errors import VeilError
from veil.policy.model import GpuAttestation
from veil.protocol import Evidence
from veil.tee.hardware_evidence import HardwareEvidence
from veil.tee.nvidia import GpuVerified, verify_gpu_report


@dataclass(frozen=True)
class DeviceCheck:
    """Refused with ``reason``, or accepted; ``facts`` (one per GPU) for the audit log and
    the attestation result either way."""

    reason: str | None
    facts: list[dict[str, object]] = field(default_factory=list)


def verify_devices(
    devices: Sequence[Evidence], nonce: bytes, at: dt.datetime
) -> tuple[list[GpuVerified], str | None]:
    """Every device's evidence verified and bound to ``nonce``, or the first reason not."""
    verified: list[GpuVerified] = []
    for index, device in enumerate(devices):
        where = f"device {index} ({device.platform})"
        if device.platform != "nvidia-gpu":
            return verified, f"{where}: unknown device platform (known: nvidia-gpu)"
        try:
            parts = HardwareEvidence.from_evidence(device)
            if parts.endorsement_key is None:
                return verified, f"{where}: the evidence has no device certificate chain"
            gpu = verify_gpu_report(parts.primary, parts.endorsement_key, at)
        except VeilError as exc:
            return verified, f"{where}: the evidence does not verify: {exc}"
        if not constant_time_equal(gpu.report.request_nonce, nonce):
            return verified, (
                f"{where}: the GPU report is not bound to this attestation's nonce "
                "(made for another attestation, or replayed)"
            )
        verified.append(gpu)
    return verified, None


def gpu_mismatch(entry: GpuAttestation, gpu: GpuVerified) -> str | None:
    """Why ``gpu`` is not the GPU ``entry`` describes, or None."""
    opaque = gpu.report.opaque
    for name, expected in (("driver_version", entry.driver_version), ("vbios_version", entry.vbios_version)):
        actual = str(opaque.get(name, ""))
        if expected is not None and expected.lower() != actual.lower():
            return f"GPU {name} {actual} is not the expected {expected}"
    if entry.fwid is not None and not constant_time_equal(entry.fwid, gpu.fwid.hex()):
        return f"GPU FWID {gpu.fwid.hex()[:16]}… is not the expected {entry.fwid[:16]}…"
    for index, expected in sorted(entry.measurements.items()):
        value = gpu.report.measurements.get(index)
        if value is None:
            return f"GPU measurement {index} is missing from the report"
        if not constant_time_equal(expected, value.hex()):
            return f"GPU measurement {index} {value.hex()[:16]}… is not the expected {expected[:16]}…"
    return None


def unmet(required: Sequence[GpuAttestation], gpus: Sequence[GpuVerified]) -> str | None:
    """Why the verified ``gpus`` do not cover ``required`` (each entry by a GPU of its own),
    or None."""
    if len(gpus) < len(required):
        have = f"{len(gpus)} GPU report{'s' if len(gpus) != 1 else ''}"
        return f"the entry requires {len(required)} NVIDIA GPU(s) beside the CPU TEE; the evidence has {have}"
    free = list(gpus)
    for entry in required:
        reasons = [gpu_mismatch(entry, gpu) for gpu in free]
        if None not in reasons:
            return reasons[0] if len(free) == 1 else "; ".join(r for r in reasons if r)
        free.pop(reasons.index(None))
    return None


def check_devices(
    devices: Sequence[Evidence], nonce: bytes, required: Sequence[Sequence[GpuAttestation]], at: dt.datetime
) -> DeviceCheck:
    """``required``: for each attestation entry that matched the CPU evidence, the GPUs it
    requires; any one satisfied entry accepts. Every device sent must verify either way."""
    gpus, reason = verify_devices(devices, nonce, at)
    facts: list[dict[str, object]] = [
        {
            "fwid": g.fwid.hex(),
            "driver_version": g.report.opaque.get("driver_version"),
            "vbios_version": g.report.opaque.get("vbios_version"),
        }
        for g in gpus
    ]
    if reason is not None:
        return DeviceCheck(reason, facts)
    problems = [unmet(gpu_entries, gpus) for gpu_entries in required]
    if not required or None in problems:
        return DeviceCheck(None, facts)
    return DeviceCheck(problems[0] if len(problems) == 1 else "; ".join(p for p in problems if p), facts)
