"""Reading binary evidence field by field: every read checks what is left, so a size that
runs past the end is a located EvidenceError, never an IndexError or a short slice."""

import struct
from typing import Literal

from veil.tee.claims import EvidenceError


class ByteReader:
    """Fields of ``data`` from ``offset`` on, in ``order`` ("big": TPM; "little": SPDM)."""

    def __init__(self, data: bytes, what: str, order: Literal["big", "little"], offset: int = 0) -> None:
        self.data, self.what, self.offset = data, what, offset
        self._prefix = ">" if order == "big" else "<"

    def take(self, size: int, field: str) -> bytes:
        if size > len(self.data) - self.offset:
            raise EvidenceError(f"{self.what}: {field} runs past the end ({len(self.data)} bytes)")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def _unpack(self, code: str, field: str) -> int:
        return int(struct.unpack(self._prefix + code, self.take(struct.calcsize(code), field))[0])

    def u8(self, field: str) -> int:
        return self.take(1, field)[0]

    def u16(self, field: str) -> int:
        return self._unpack("H", field)

    def u32(self, field: str) -> int:
        return self._unpack("I", field)

    def u64(self, field: str) -> int:
        return self._unpack("Q", field)

    def sized(self, field: str) -> bytes:
        """A 16-bit size, then that many bytes (TPM2B; SPDM's opaque data)."""
        return self.take(self.u16(f"{field} size"), field)

    @property
    def done(self) -> bool:
        return self.offset == len(self.data)

    def end(self) -> None:
        if not self.done:
            raise EvidenceError(f"{self.what}: {len(self.data) - self.offset} bytes after its end")
