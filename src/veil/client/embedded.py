"""The embedded CAS client: the protocol of docs/protocol.md, in-process.

Requests and answers are the same dataclasses the network transport will serialise, so the
runtime's code path does not depend on where the CAS runs.
"""

from dataclasses import dataclass

from veil.cas import Cas
from veil.protocol import AttestationGrant, AttestationRequest, VolumeTagUpdate


@dataclass
class EmbeddedCasClient:
    cas: Cas

    @property
    def sim(self) -> bool:
        return self.cas.sim_mode

    def nonce(self) -> bytes:
        return self.cas.new_nonce()

    def attest(self, request: AttestationRequest) -> AttestationGrant:
        return self.cas.attest(request)

    def push_volume_tag(self, update: VolumeTagUpdate) -> None:
        self.cas.push_volume_tag(update)
