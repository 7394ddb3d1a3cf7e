"""The canonical session hash: SHA-256 over a domain tag and the canonical JSON of the model.

The model (with defaults filled in) is what is hashed, not the YAML text, so key order,
comments, quoting and layout never change the hash; any change of meaning does.
"""

from veil.crypto import canonical_json, sha256_hex
from veil.policy.model import Session

_DOMAIN = b"veil-session-v1\n"


def canonical_session_bytes(session: Session) -> bytes:
    return canonical_json(session.model_dump(mode="json"))


def session_hash(session: Session) -> str:
    """The session's identity in hex; updates name it as their predecessor."""
    return sha256_hex(_DOMAIN + canonical_session_bytes(session))
