"""What a runtime needs from a CAS, whatever the transport."""

from typing import Protocol

from veil.protocol import AttestationGrant, AttestationRequest, VolumeTagUpdate


class CasClient(Protocol):
    @property
    def sim(self) -> bool:
        """True when the CAS only accepts development (sim) evidence."""
        ...

    def nonce(self) -> bytes: ...

    def attest(self, request: AttestationRequest) -> AttestationGrant: ...

    def push_volume_tag(self, update: VolumeTagUpdate) -> None: ...
