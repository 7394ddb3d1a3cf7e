"""The CAS client library used by the CLI and the runtime.

``CasClient`` is the protocol; ``EmbeddedCasClient`` talks to an in-process CAS through the
same messages the network client will send.
"""

from veil.client.embedded import EmbeddedCasClient
from veil.client.interface import CasClient

__all__ = ["CasClient", "EmbeddedCasClient"]
