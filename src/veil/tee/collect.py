"""Collecting evidence inside a TEE, for a given report_data.

Sources, in the order ``VEIL_MODE=auto`` tries them:
- Linux configfs-tsm (``/sys/kernel/config/tsm/report``): SEV-SNP and TDX, kernel >= 6.7.
  mkdir an entry, write ``inblob``, read ``outblob`` (+ ``auxblob``, the SNP certificate
  table), check ``generation`` did not move under us, rmdir.
- ``/dev/sev-guest``: the SNP_GET_REPORT ioctl (linux/sev-guest.h), for older kernels.
- Gramine's ``/dev/attestation``: write ``user_report_data``, read ``quote`` (SGX DCAP).
"""

import contextlib
import ctypes
import fcntl
import os
import secrets
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from veil.tee.claims import EvidenceError
from veil.tee.hardware_evidence import HardwareEvidence

TSM_REPORT = Path("/sys/kernel/config/tsm/report")
SEV_GUEST = Path("/dev/sev-guest")
GRAMINE_ATTESTATION = Path("/dev/attestation")

_TSM_PROVIDERS = {"sev_guest": "sev-snp", "tdx_guest": "tdx"}
VCEK_GUID = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")


class CollectionError(EvidenceError):
    """Evidence could not be obtained from this machine's TEE."""


class HardwareSource(Protocol):
    def available(self) -> bool: ...

    def collect(self, report_data: bytes) -> HardwareEvidence: ...


def endorsement_key_from_cert_table(table: bytes) -> bytes | None:
    """The VCEK (or VLEK) DER from an SNP extended-report certificate table, if present.

    Entries are (GUID 16, offset u32, length u32) until an all-zero entry; offsets are from
    the start of the table. GUIDs are accepted in RFC 4122 and in little-endian order.
    """
    wanted = {VCEK_GUID.bytes, VCEK_GUID.bytes_le, VLEK_GUID.bytes, VLEK_GUID.bytes_le}
    for at in range(0, len(table) - 23, 24):
        guid, offset, length = table[at : at + 16], *struct.unpack_from("<II", table, at + 16)
        if guid == bytes(16):
            break
        if guid in wanted:
            if offset + length > len(table):
                raise CollectionError("the SNP certificate table points past its end")
            return table[offset : offset + length]
    return None


@dataclass(frozen=True)
class TsmReportSource:
    root: Path = TSM_REPORT

    def available(self) -> bool:
        return self.root.is_dir()

    def collect(self, report_data: bytes) -> HardwareEvidence:
        entry = self.root / f"veil-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            entry.mkdir()
        except OSError as exc:
            raise CollectionError(f"configfs-tsm: cannot create a report entry: {exc.strerror}") from None
        try:
            before = int((entry / "generation").read_text().strip() or 0)
            (entry / "inblob").write_bytes(report_data)
            out = (entry / "outblob").read_bytes()
            provider = (entry / "provider").read_text().strip()
            aux_path = entry / "auxblob"
            aux = aux_path.read_bytes() if aux_path.exists() else b""
            after = int((entry / "generation").read_text().strip())
        except (OSError, ValueError) as exc:
            raise CollectionError(f"configfs-tsm: {exc}") from None
        finally:
            with contextlib.suppress(OSError):
                entry.rmdir()
        if after != before + 1:
            raise CollectionError("configfs-tsm: the report entry was written concurrently; retry")
        platform = _TSM_PROVIDERS.get(provider)
        if platform is None:
            raise CollectionError(f"configfs-tsm: unknown provider '{provider}'")
        vek = endorsement_key_from_cert_table(aux) if platform == "sev-snp" and aux else None
        return HardwareEvidence(platform, out, vek)


# linux/sev-guest.h
_SNP_GET_REPORT = 0xC0205300  # _IOWR('S', 0x0, struct snp_guest_request_ioctl), 32 bytes
_REPORT_RESP_SIZE = 4000


class _GuestRequest(ctypes.Structure):
    _fields_ = (
        ("msg_version", ctypes.c_uint8),
        ("req_data", ctypes.c_uint64),
        ("resp_data", ctypes.c_uint64),
        ("exitinfo2", ctypes.c_uint64),
    )


@dataclass(frozen=True)
class SevGuestDeviceSource:
    """SNP_GET_REPORT on /dev/sev-guest. Not exercised by the tests (no such device here)."""

    device: Path = SEV_GUEST
    vmpl: int = 0

    def available(self) -> bool:
        return self.device.exists()

    def collect(self, report_data: bytes) -> HardwareEvidence:
        request = ctypes.create_string_buffer(report_data + struct.pack("<I", self.vmpl) + bytes(28), 96)
        response = ctypes.create_string_buffer(_REPORT_RESP_SIZE)
        arg = _GuestRequest(1, ctypes.addressof(request), ctypes.addressof(response), 0)
        try:
            fd = os.open(self.device, os.O_RDWR)
        except OSError as exc:
            raise CollectionError(f"{self.device}: {exc.strerror}") from None
        try:
            fcntl.ioctl(fd, _SNP_GET_REPORT, arg)
        except OSError as exc:
            raise CollectionError(
                f"{self.device}: SNP_GET_REPORT failed: {exc.strerror} (exitinfo2 {arg.exitinfo2:#x})"
            ) from None
        finally:
            os.close(fd)
        status, size = struct.unpack_from("<II", response.raw, 0)
        if status != 0 or size < 1184:
            raise CollectionError(f"{self.device}: the firmware answered status {status:#x}")
        return HardwareEvidence("sev-snp", response.raw[32 : 32 + 1184])


@dataclass(frozen=True)
class GramineAttestationSource:
    root: Path = GRAMINE_ATTESTATION

    def available(self) -> bool:
        return (self.root / "quote").exists()

    def collect(self, report_data: bytes) -> HardwareEvidence:
        try:
            kind = (self.root / "attestation_type").read_text().strip()
            if kind != "dcap":
                raise CollectionError(f"Gramine attestation type is '{kind}', not 'dcap'")
            (self.root / "user_report_data").write_bytes(report_data)
            quote = (self.root / "quote").read_bytes()
        except OSError as exc:
            raise CollectionError(f"{self.root}: {exc}") from None
        return HardwareEvidence("sgx", quote)


def hardware_source(
    tsm: Path = TSM_REPORT, sev_guest: Path = SEV_GUEST, gramine: Path = GRAMINE_ATTESTATION
) -> HardwareSource | None:
    """The first hardware source this machine offers, or None."""
    for source in (TsmReportSource(tsm), SevGuestDeviceSource(sev_guest), GramineAttestationSource(gramine)):
        if source.available():
            return source
    return None
