"""TDX event log (ACPI CCEL table + TCG2 crypto-agile log) and its replay into RTMRs.

Spec: TCG PC Client Platform Firmware Profile (event structures), Intel TDX guest-host
communication spec (CCEL). MR index 1..4 maps to RTMR0..RTMR3 (0 is MRTD); each extend is
``RTMR = SHA-384(RTMR || digest)`` from 48 zero bytes; EV_NO_ACTION events do not extend.
"""

import hashlib
import struct
from dataclasses import dataclass

from veil.tee.claims import EvidenceError

EV_NO_ACTION = 0x00000003
SHA384_ALG = 0x000C
_ALG_SIZES = {0x0004: 20, 0x000B: 32, 0x000C: 48, 0x000D: 64, 0x0012: 32}


class EventLogError(EvidenceError):
    """The event log is malformed or does not reproduce the quote's RTMRs."""


@dataclass(frozen=True)
class CcelTable:
    """The ACPI CCEL table: where the firmware put the event log."""

    cc_type: int
    cc_subtype: int
    log_area_minimum_length: int
    log_area_start_address: int

    @classmethod
    def from_bytes(cls, data: bytes) -> "CcelTable":
        if len(data) < 56 or data[:4] != b"CCEL":
            raise EventLogError("not an ACPI CCEL table")
        length = struct.unpack_from("<I", data, 4)[0]
        if length != len(data):
            raise EventLogError(f"CCEL table length {length} does not match its {len(data)} bytes")
        if sum(data) % 256:
            raise EventLogError("CCEL table checksum is wrong")
        cc_type, cc_subtype = data[36], data[37]
        laml, lasa = struct.unpack_from("<QQ", data, 40)
        return cls(cc_type, cc_subtype, laml, lasa)


@dataclass(frozen=True)
class Event:
    mr_index: int
    event_type: int
    digests: dict[int, bytes]
    data: bytes


def parse_event_log(data: bytes) -> list[Event]:
    """The events of a crypto-agile log (first event in SHA-1 format with Spec ID Event03)."""
    if len(data) < 32:
        raise EventLogError("the event log is too short")
    pcr, event_type = struct.unpack_from("<II", data, 0)
    size = struct.unpack_from("<I", data, 28)[0]
    spec = data[32 : 32 + size]
    if event_type != EV_NO_ACTION or not spec.startswith(b"Spec ID Event03\0"):
        raise EventLogError("the event log does not start with a TCG2 Spec ID Event03")
    algorithms = _spec_algorithms(spec)
    events = [Event(pcr, event_type, {0x0004: data[8:28]}, spec)]
    at = 32 + size
    while at + 8 <= len(data):
        pcr, event_type = struct.unpack_from("<II", data, at)
        if (pcr, event_type) in ((0xFFFFFFFF, 0xFFFFFFFF), (0, 0)):
            break  # the rest of the area is padding
        at += 8
        count = _u32(data, at, "digest count")
        at += 4
        digests: dict[int, bytes] = {}
        for _ in range(count):
            alg = struct.unpack_from("<H", data, at)[0] if at + 2 <= len(data) else -1
            size_for = algorithms.get(alg)
            if size_for is None:
                raise EventLogError(f"event at offset {at} uses undeclared digest algorithm {alg:#x}")
            digests[alg] = data[at + 2 : at + 2 + size_for]
            at += 2 + size_for
        length = _u32(data, at, "event size")
        at += 4
        if at + length > len(data):
            raise EventLogError(f"event at offset {at} runs past the end of the log")
        events.append(Event(pcr, event_type, digests, data[at : at + length]))
        at += length
    return events


def _u32(data: bytes, at: int, what: str) -> int:
    if at + 4 > len(data):
        raise EventLogError(f"event log truncated in a {what}")
    return int(struct.unpack_from("<I", data, at)[0])


def _spec_algorithms(spec: bytes) -> dict[int, int]:
    count = struct.unpack_from("<I", spec, 24)[0]
    algorithms = {}
    for index in range(count):
        alg, size = struct.unpack_from("<HH", spec, 28 + 4 * index)
        if _ALG_SIZES.get(alg, size) != size:
            raise EventLogError(f"Spec ID declares algorithm {alg:#x} with size {size}")
        algorithms[alg] = size
    return algorithms


def replay_rtmrs(events: list[Event]) -> tuple[bytes, bytes, bytes, bytes]:
    rtmrs = [bytes(48)] * 4
    for event in events:
        if event.event_type == EV_NO_ACTION or not 1 <= event.mr_index <= 4:
            continue
        digest = event.digests.get(SHA384_ALG)
        if digest is None:
            raise EventLogError("an event extending an RTMR has no SHA-384 digest")
        index = event.mr_index - 1
        rtmrs[index] = hashlib.sha384(rtmrs[index] + digest).digest()
    return rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]


def check_rtmrs(event_log: bytes, quoted: tuple[bytes, bytes, bytes, bytes]) -> list[Event]:
    """Replay ``event_log``; raise unless it reproduces every quoted RTMR exactly."""
    events = parse_event_log(event_log)
    replayed = replay_rtmrs(events)
    for index, (mine, theirs) in enumerate(zip(replayed, quoted, strict=True)):
        if mine != theirs:
            raise EventLogError(
                f"the event log does not reproduce RTMR{index} ({mine.hex()[:16]}… != {theirs.hex()[:16]}…)"
            )
    return events
