"""The session language: YAML -> validated model, canonical hash, secret placeholders.

Spec: docs/policy.md. Parsing reports every problem with file:line:column.
"""

from veil.policy.canonical import canonical_session_bytes, session_hash
from veil.policy.errors import PolicyError, PolicyProblem, SecretFormatError
from veil.policy.loader import load_session_file, parse_session, with_predecessor
from veil.policy.model import (
    AttestationEntry,
    InjectedFile,
    SecretDefinition,
    Service,
    ServiceVolume,
    Session,
    SgxAttestation,
    SimAttestation,
    SnpAttestation,
    TdxAttestation,
    VolumeDefinition,
)
from veil.policy.placeholders import (
    SecretRenderer,
    find_placeholders,
    substitute,
    substitute_text,
    value_renderer,
)

__all__ = [
    "AttestationEntry",
    "InjectedFile",
    "PolicyError",
    "PolicyProblem",
    "SecretDefinition",
    "SecretFormatError",
    "SecretRenderer",
    "Service",
    "ServiceVolume",
    "Session",
    "SgxAttestation",
    "SimAttestation",
    "SnpAttestation",
    "TdxAttestation",
    "VolumeDefinition",
    "canonical_session_bytes",
    "find_placeholders",
    "load_session_file",
    "parse_session",
    "session_hash",
    "substitute",
    "substitute_text",
    "value_renderer",
    "with_predecessor",
]
