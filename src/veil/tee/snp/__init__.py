"""AMD SEV-SNP: attestation report parsing and verification against AMD's roots.

Spec: AMD SEV-SNP ABI specification (56860), VCEK/KDS specification (57230).
"""

from veil.tee.snp.report import GuestPolicy, PlatformInfo, SnpProduct, SnpReport, TcbVersion
from veil.tee.snp.verify import SnpVerified, verify_snp_report

__all__ = [
    "GuestPolicy",
    "PlatformInfo",
    "SnpProduct",
    "SnpReport",
    "SnpVerified",
    "TcbVersion",
    "verify_snp_report",
]
