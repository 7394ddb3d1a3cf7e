"""The SEV-SNP ATTESTATION_REPORT structure, versions 2, 3 and 5 (ABI spec 56860, table 23).

All integers little-endian. The signature (ECDSA P-384/SHA-384, r and s as 72-byte
little-endian integers) covers bytes 0x000..0x29F.
"""

import enum
import struct
from dataclasses import dataclass

from veil.crypto.certs import raw_ecdsa_to_der
from veil.tee.claims import EvidenceError

REPORT_SIZE = 0x4A0
SIGNED_SIZE = 0x2A0
SUPPORTED_VERSIONS = (2, 3, 5)
ECDSA_P384_SHA384 = 1


class SnpReportError(EvidenceError):
    """An SEV-SNP report is malformed."""


class SnpProduct(enum.Enum):
    MILAN = "Milan"
    GENOA = "Genoa"
    TURIN = "Turin"

    @classmethod
    def from_cpuid(cls, family: int, model: int) -> "SnpProduct | None":
        if family == 0x19 and model <= 0x0F:
            return cls.MILAN
        if family == 0x19 and (0x10 <= model <= 0x1F or 0xA0 <= model <= 0xAF):
            return cls.GENOA
        if family == 0x1A and model <= 0x11:
            return cls.TURIN
        return None

    @classmethod
    def from_product_name(cls, name: str) -> "SnpProduct | None":
        """From a VCEK productName such as ``Milan-B0``."""
        base = name.split("-", 1)[0]
        return next((p for p in cls if p.value == base), None)


@dataclass(frozen=True)
class TcbVersion:
    """A TCB_VERSION, by byte.

    Milan/Genoa: ``bl tee 0 0 0 0 snp ucode``; Turin: ``fmc bl tee snp 0 0 0 ucode``.
    """

    raw: int
    bootloader: int
    tee: int
    snp: int
    microcode: int
    fmc: int | None

    @classmethod
    def from_raw(cls, raw: int, product: SnpProduct) -> "TcbVersion":
        b = raw.to_bytes(8, "little")
        if product is SnpProduct.TURIN:
            return cls(raw, bootloader=b[1], tee=b[2], snp=b[3], microcode=b[7], fmc=b[0])
        return cls(raw, bootloader=b[0], tee=b[1], snp=b[6], microcode=b[7], fmc=None)

    def components(self) -> dict[str, int]:
        parts = {"bootloader": self.bootloader, "tee": self.tee, "snp": self.snp, "microcode": self.microcode}
        if self.fmc is not None:
            parts["fmc"] = self.fmc
        return parts

    def at_least(self, minimum: "TcbVersion") -> bool:
        mine, theirs = self.components(), minimum.components()
        return all(mine.get(k, 0) >= v for k, v in theirs.items())


@dataclass(frozen=True)
class GuestPolicy:
    """The guest policy chosen at launch (bits per go-sev-guest / ABI spec)."""

    raw: int

    @property
    def abi_minor(self) -> int:
        return self.raw & 0xFF

    @property
    def abi_major(self) -> int:
        return (self.raw >> 8) & 0xFF

    @property
    def smt_allowed(self) -> bool:
        return bool(self.raw >> 16 & 1)

    @property
    def migrate_ma(self) -> bool:
        return bool(self.raw >> 18 & 1)

    @property
    def debug(self) -> bool:
        """Bit 19: the hypervisor may read and write the guest's memory."""
        return bool(self.raw >> 19 & 1)

    @property
    def single_socket(self) -> bool:
        return bool(self.raw >> 20 & 1)


@dataclass(frozen=True)
class PlatformInfo:
    raw: int

    @property
    def smt_enabled(self) -> bool:
        return bool(self.raw & 1)

    @property
    def tsme_enabled(self) -> bool:
        return bool(self.raw >> 1 & 1)


@dataclass(frozen=True)
class SnpReport:
    """A parsed report; ``raw`` keeps the exact bytes, which the signature covers."""

    raw: bytes
    version: int
    guest_svn: int
    policy: GuestPolicy
    family_id: bytes
    image_id: bytes
    vmpl: int
    signature_algo: int
    current_tcb_raw: int
    platform_info: PlatformInfo
    author_key_en: bool
    mask_chip_key: bool
    signing_key: int  # 0 VCEK, 1 VLEK, 7 none
    report_data: bytes
    measurement: bytes
    host_data: bytes
    id_key_digest: bytes
    author_key_digest: bytes
    report_id: bytes
    report_id_ma: bytes
    reported_tcb_raw: int
    cpuid_family: int | None
    cpuid_model: int | None
    cpuid_stepping: int | None
    chip_id: bytes
    committed_tcb_raw: int
    current_version: tuple[int, int, int]
    committed_version: tuple[int, int, int]
    launch_tcb_raw: int
    launch_mit_vector: int | None
    current_mit_vector: int | None
    signature_r: bytes
    signature_s: bytes

    @classmethod
    def from_bytes(cls, data: bytes) -> "SnpReport":
        if len(data) != REPORT_SIZE:
            raise SnpReportError(f"an SEV-SNP report has {REPORT_SIZE} bytes, this one {len(data)}")
        version, guest_svn, policy = struct.unpack_from("<IIQ", data, 0)
        if version not in SUPPORTED_VERSIONS:
            raise SnpReportError(f"report version {version} is not supported (supported: 2, 3, 5)")
        if not policy >> 17 & 1:
            raise SnpReportError("guest policy bit 17 (reserved, must be one) is zero")
        vmpl, signature_algo, current_tcb, platform_info, flags = struct.unpack_from("<IIQQI", data, 0x30)
        if signature_algo != ECDSA_P384_SHA384:
            raise SnpReportError(f"unknown signature algorithm {signature_algo} (1 = ECDSA P-384)")
        if any(data[0x330:REPORT_SIZE]):
            raise SnpReportError("the reserved bytes after the signature are not zero")
        has_cpuid = version >= 3
        has_mit = version >= 5
        return cls(
            raw=bytes(data),
            version=version,
            guest_svn=guest_svn,
            policy=GuestPolicy(policy),
            family_id=data[0x10:0x20],
            image_id=data[0x20:0x30],
            vmpl=vmpl,
            signature_algo=signature_algo,
            current_tcb_raw=current_tcb,
            platform_info=PlatformInfo(platform_info),
            author_key_en=bool(flags & 1),
            mask_chip_key=bool(flags >> 1 & 1),
            signing_key=(flags >> 2) & 0x7,
            report_data=data[0x50:0x90],
            measurement=data[0x90:0xC0],
            host_data=data[0xC0:0xE0],
            id_key_digest=data[0xE0:0x110],
            author_key_digest=data[0x110:0x140],
            report_id=data[0x140:0x160],
            report_id_ma=data[0x160:0x180],
            reported_tcb_raw=struct.unpack_from("<Q", data, 0x180)[0],
            cpuid_family=data[0x188] if has_cpuid else None,
            cpuid_model=data[0x189] if has_cpuid else None,
            cpuid_stepping=data[0x18A] if has_cpuid else None,
            chip_id=data[0x1A0:0x1E0],
            committed_tcb_raw=struct.unpack_from("<Q", data, 0x1E0)[0],
            current_version=(data[0x1EA], data[0x1E9], data[0x1E8]),
            committed_version=(data[0x1EE], data[0x1ED], data[0x1EC]),
            launch_tcb_raw=struct.unpack_from("<Q", data, 0x1F0)[0],
            launch_mit_vector=struct.unpack_from("<Q", data, 0x1F8)[0] if has_mit else None,
            current_mit_vector=struct.unpack_from("<Q", data, 0x200)[0] if has_mit else None,
            signature_r=data[0x2A0:0x2E8],
            signature_s=data[0x2E8:0x330],
        )

    @property
    def signed_bytes(self) -> bytes:
        return self.raw[:SIGNED_SIZE]

    @property
    def signature_der(self) -> bytes:
        return raw_ecdsa_to_der(self.signature_r, self.signature_s, "little")

    @property
    def product_from_cpuid(self) -> SnpProduct | None:
        if self.cpuid_family is None or self.cpuid_model is None:
            return None
        return SnpProduct.from_cpuid(self.cpuid_family, self.cpuid_model)

    def tcb(self, which: str, product: SnpProduct) -> TcbVersion:
        raw = {
            "current": self.current_tcb_raw,
            "reported": self.reported_tcb_raw,
            "committed": self.committed_tcb_raw,
            "launch": self.launch_tcb_raw,
        }[which]
        return TcbVersion.from_raw(raw, product)
