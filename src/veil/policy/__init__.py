"""The session language: YAML -> validated model, canonical hash, secret placeholders.

Spec: docs/policy.md. Parsing reports every problem with file:line:column.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Loaded on first use: `veil run` of a converted image needs only the errors, and the
# session model (pydantic) costs ~0.1 s to import.
_HOMES = {
    "AttestationEntry": "veil.policy.model",
    "InjectedFile": "veil.policy.model",
    "PolicyError": "veil.policy.errors",
    "PolicyProblem": "veil.policy.errors",
    "SecretDefinition": "veil.policy.model",
    "SecretFormatError": "veil.policy.errors",
    "SecretRenderer": "veil.policy.placeholders",
    "Service": "veil.policy.model",
    "ServiceVolume": "veil.policy.model",
    "Session": "veil.policy.model",
    "SgxAttestation": "veil.policy.model",
    "SimAttestation": "veil.policy.model",
    "SnpAttestation": "veil.policy.model",
    "TdxAttestation": "veil.policy.model",
    "VolumeDefinition": "veil.policy.model",
    "canonical_session_bytes": "veil.policy.canonical",
    "find_placeholders": "veil.policy.placeholders",
    "load_session_file": "veil.policy.loader",
    "parse_session": "veil.policy.loader",
    "session_hash": "veil.policy.canonical",
    "substitute": "veil.policy.placeholders",
    "substitute_text": "veil.policy.placeholders",
    "value_renderer": "veil.policy.placeholders",
    "with_predecessor": "veil.policy.loader",
}


def __getattr__(name: str) -> Any:
    module = _HOMES.get(name)
    if module is None:
        raise AttributeError(f"module 'veil.policy' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
