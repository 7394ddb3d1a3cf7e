"""The Configuration and Attestation Service: sessions, secrets, attestation decisions, audit.

Storage is behind one interface (``RecordStore``); every record is sealed with the master key.
"""

from veil.cas.audit import AuditChainBroken, AuditLog
from veil.cas.errors import (
    AccessDenied,
    CasError,
    Conflict,
    PredecessorMismatch,
    SessionNotFound,
    StorageCorrupted,
    VolumeTagRefused,
)
from veil.cas.service import Cas
from veil.cas.sharing import SessionRecord

__all__ = [
    "AccessDenied",
    "AuditChainBroken",
    "AuditLog",
    "Cas",
    "CasError",
    "Conflict",
    "PredecessorMismatch",
    "SessionNotFound",
    "SessionRecord",
    "StorageCorrupted",
    "VolumeTagRefused",
]
