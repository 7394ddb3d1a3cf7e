"""The audit log: every change and decision, hash-chained so that edits are detected.

Entry i stores ``body_i`` (canonical JSON, never a secret) and
``chain_i = SHA-256("veil-audit-v1" || chain_{i-1} || body_i)`` with chain_0 = 32 zero
bytes. The head (seq, chain) is also kept in a sealed record, so deleting the newest
entries is detected too. An export carries every entry and the head signed by the CAS
identity key (ECDSA P-256, SHA-256) over canonical JSON
``{"domain": "veil-audit-head-v1", "seq", "chain"}``; whoever pinned the CAS can check it
offline (``veil audit verify --cas URL`` or ``veil audit verify --file F``).
"""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from veil.cas.errors import CasError
from veil.cas.sealing import SealedRecords
from veil.crypto import canonical_json, constant_time_equal, sha256

_DOMAIN = b"veil-audit-v1\0"
GENESIS = bytes(32)
_HEAD = ("audit-head", "head")
HEAD_DOMAIN = "veil-audit-head-v1"


class AuditChainBroken(CasError):
    """The audit log was edited, reordered or truncated."""


def chain_next(previous: bytes, body: bytes) -> bytes:
    return sha256(_DOMAIN + previous + body)


def head_statement(seq: int, chain: str) -> bytes:
    """The bytes the CAS signs for an audit head."""
    return canonical_json({"domain": HEAD_DOMAIN, "seq": seq, "chain": chain})


def verify_export(document: dict[str, Any], signature_valid: Callable[[bytes, bytes], bool]) -> int:
    """Check an exported audit log: every entry chained, the head matching and signed.

    Returns the number of entries; raises AuditChainBroken naming the first problem.
    """
    try:
        entries = [(int(e["seq"]), str(e["body"]).encode(), str(e["chain"])) for e in document["entries"]]
        head = document["head"]
        head_seq, head_chain = int(head["seq"]), str(head["chain"])
        signature = bytes.fromhex(str(head["signature"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise AuditChainBroken(f"not an audit export: {exc}") from None
    previous = GENESIS
    for expected_seq, (seq, body, chain) in enumerate(entries, start=1):
        if seq != expected_seq:
            raise AuditChainBroken(f"audit entry {expected_seq} is missing or out of order")
        previous = chain_next(previous, body)
        if not constant_time_equal(previous.hex(), chain):
            raise AuditChainBroken(f"audit entry {seq} was modified or reordered")
    if head_seq != len(entries) or not constant_time_equal(head_chain, previous.hex()):
        raise AuditChainBroken(
            f"the signed head names entry {head_seq} but the export ends at entry {len(entries)}: "
            "entries were removed or added"
        )
    if not signature_valid(head_statement(head_seq, head_chain), signature):
        raise AuditChainBroken("the audit head is not signed by the pinned CAS")
    return len(entries)


def verify_filtered_export(
    document: dict[str, Any], signature_valid: Callable[[bytes, bytes], bool]
) -> tuple[int, int]:
    """Check a filtered view (``AuditLog.export_filtered``): every entry's own link, their
    order, and the head's signature. Returns (entries shown, entries in the log)."""
    try:
        entries = [
            (int(e["seq"]), str(e["body"]).encode(), str(e["chain"]), bytes.fromhex(str(e["previous"])))
            for e in document["entries"]
        ]
        head = document["head"]
        head_seq, head_chain = int(head["seq"]), str(head["chain"])
        signature = bytes.fromhex(str(head["signature"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise AuditChainBroken(f"not an audit export: {exc}") from None
    last = 0
    for seq, body, chain, previous in entries:
        if seq <= last or seq > head_seq:
            raise AuditChainBroken(f"audit entry {seq} is out of order")
        if not constant_time_equal(chain_next(previous, body).hex(), chain):
            raise AuditChainBroken(f"audit entry {seq} was modified")
        last = seq
    if entries and last == head_seq and not constant_time_equal(entries[-1][2], head_chain):
        raise AuditChainBroken(f"audit entry {last} is not the one the signed head names")
    if not signature_valid(head_statement(head_seq, head_chain), signature):
        raise AuditChainBroken("the audit head is not signed by the pinned CAS")
    return len(entries), head_seq


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    event: dict[str, Any]
    chain: bytes


class AuditLog:
    def __init__(self, records: SealedRecords) -> None:
        self._records = records

    def append(self, event: str, sim: bool, **details: Any) -> int:
        """Append one event; call inside the transaction of the change it records."""
        store = self._records.store
        with store.transaction():
            head = self._records.get(*_HEAD)
            previous = bytes.fromhex(head[1]["chain"]) if head else GENESIS
            body = canonical_json({"time": int(time.time()), "event": event, "sim": sim, **details})
            chain = chain_next(previous, body)
            seq = store.append_log(body, chain)
            self._records.put(*_HEAD, {"seq": seq, "chain": chain.hex()}, head[0] if head else None)
            return seq

    def export(self, sign: Callable[[bytes], bytes]) -> dict[str, Any]:
        """Every entry and the head, signed with ``sign`` (the CAS identity key)."""
        with self._records.store.transaction():
            self.verify()
            log = self._records.store.read_log()
        head_chain = log[-1].chain.hex() if log else GENESIS.hex()
        return {
            "entries": [{"seq": e.seq, "body": e.body.decode(), "chain": e.chain.hex()} for e in log],
            "head": {
                "seq": len(log),
                "chain": head_chain,
                "signature": sign(head_statement(len(log), head_chain)).hex(),
            },
        }

    def export_filtered(
        self, sign: Callable[[bytes], bytes], keep: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        """The entries whose event ``keep`` accepts, each with the chain value before it
        (``previous``), and the head signed with ``sign``: a filtered view. Each entry's
        link verifies on its own; that none is missing between them only a full export can
        show (``verify_filtered_export``)."""
        with self._records.store.transaction():
            self.verify()
            log = self._records.store.read_log()
        previous = GENESIS
        rows = []
        for e in log:
            if keep(json.loads(e.body)):
                rows.append(
                    {
                        "seq": e.seq,
                        "body": e.body.decode(),
                        "chain": e.chain.hex(),
                        "previous": previous.hex(),
                    }
                )
            previous = e.chain
        head_chain = previous.hex()
        return {
            "scope": "filtered",
            "entries": rows,
            "head": {
                "seq": len(log),
                "chain": head_chain,
                "signature": sign(head_statement(len(log), head_chain)).hex(),
            },
        }

    def entries(self) -> list[AuditEntry]:
        return [AuditEntry(e.seq, json.loads(e.body), e.chain) for e in self._records.store.read_log()]

    def verify(self) -> int:
        """Check the whole chain and its sealed head; return the number of entries."""
        previous = GENESIS
        expected_seq = 1
        entries = self._records.store.read_log()
        for entry in entries:
            if entry.seq != expected_seq:
                raise AuditChainBroken(f"audit entry {expected_seq} is missing")
            if not constant_time_equal(chain_next(previous, entry.body), entry.chain):
                raise AuditChainBroken(f"audit entry {entry.seq} was modified or reordered")
            previous = entry.chain
            expected_seq += 1
        head = self._records.get(*_HEAD)
        head_seq = int(head[1]["seq"]) if head else 0
        if head_seq != len(entries) or (head and not constant_time_equal(head[1]["chain"], previous.hex())):
            raise AuditChainBroken(
                f"audit log ends at entry {len(entries)} but the CAS recorded {head_seq}: "
                "entries were removed"
            )
        return len(entries)
