"""The CAS client library used by the CLI and the runtime.

``CasClient`` is the protocol; ``EmbeddedCasClient`` talks to an in-process CAS through the
same messages the network client will send.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from veil.client.embedded import EmbeddedCasClient
    from veil.client.interface import CasClient

__all__ = ["CasClient", "EmbeddedCasClient"]

# Loaded on first use: the embedded client imports the whole CAS, which a runtime talking
# to a network CAS never needs.
_HOMES = {"CasClient": "veil.client.interface", "EmbeddedCasClient": "veil.client.embedded"}


def __getattr__(name: str) -> Any:
    module = _HOMES.get(name)
    if module is None:
        raise AttributeError(f"module 'veil.client' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
