"""Platforms: evidence collection inside a TEE and its verification in the CAS.

Every verifier returns typed ``Claims`` or raises a precise ``EvidenceError``.
"""

from veil.tee.claims import Claims, EvidenceError
from veil.tee.measure import Measurement, measure_command
from veil.tee.sim import SimEvidenceSource, verify_sim_evidence

__all__ = [
    "Claims",
    "EvidenceError",
    "Measurement",
    "SimEvidenceSource",
    "measure_command",
    "verify_sim_evidence",
]
