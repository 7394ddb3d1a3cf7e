"""Intel DCAP collateral: TCB info, QE identity, CRLs and their issuer chains.

Three input forms, one model: a directory in veil's cache layout (the layout of
shared/vectors' ``derived/*_collateral/``), a dcap-qvl JSON bundle, and Intel PCS API
responses. The TCB info and QE identity signatures cover the exact bytes of the inner JSON
object, which is therefore kept as bytes, never re-serialised.
"""

import datetime as dt
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from veil.crypto.certs import MalformedCertificate, load_pem_chain
from veil.tee.claims import EvidenceError


class CollateralError(EvidenceError):
    """Collateral is missing, malformed, or of the wrong kind."""


#: file names of a collateral set in veil's cache layout
FILES = {
    "tcb_info": "tcb_info.json",
    "tcb_info_signature": "tcb_info.sig",
    "tcb_info_issuer_chain": "tcb_info_issuer_chain.pem",
    "qe_identity": "qe_identity.json",
    "qe_identity_signature": "qe_identity.sig",
    "qe_identity_issuer_chain": "qe_identity_issuer_chain.pem",
    "pck_crl": "pck_crl.der",
    "pck_crl_issuer_chain": "pck_crl_issuer_chain.pem",
    "root_ca_crl": "root_ca_crl.der",
}


@dataclass(frozen=True)
class SignedCollateral:
    """A TCB info or QE identity: the exact signed JSON bytes, their signature and chain."""

    body: bytes
    signature: bytes  # 64 bytes r||s, big-endian
    issuer_chain: tuple[x509.Certificate, ...]

    def parsed(self) -> dict[str, Any]:
        try:
            value = json.loads(self.body)
        except ValueError as exc:
            raise CollateralError(f"collateral JSON does not parse: {exc}") from None
        if not isinstance(value, dict):
            raise CollateralError("collateral JSON is not an object")
        return value


@dataclass(frozen=True)
class Collateral:
    tcb_info: SignedCollateral
    qe_identity: SignedCollateral
    pck_crl: x509.CertificateRevocationList
    pck_crl_issuer_chain: tuple[x509.Certificate, ...]
    root_ca_crl: x509.CertificateRevocationList

    # -- loading --------------------------------------------------------------------

    @classmethod
    def from_parts(cls, parts: dict[str, bytes]) -> "Collateral":
        """From raw parts keyed as in ``FILES``; accepts the encodings each part comes in."""
        missing = [k for k in FILES if k not in parts]
        if missing:
            raise CollateralError(f"collateral lacks {', '.join(missing)}")
        return cls(
            tcb_info=_signed(
                parts["tcb_info"], parts["tcb_info_signature"], parts["tcb_info_issuer_chain"], "tcbInfo"
            ),
            qe_identity=_signed(
                parts["qe_identity"],
                parts["qe_identity_signature"],
                parts["qe_identity_issuer_chain"],
                "enclaveIdentity",
            ),
            pck_crl=_crl(parts["pck_crl"], "PCK CRL"),
            pck_crl_issuer_chain=_chain(parts["pck_crl_issuer_chain"], "PCK CRL issuer chain"),
            root_ca_crl=_crl(parts["root_ca_crl"], "root CA CRL"),
        )

    @classmethod
    def from_directory(cls, directory: Path) -> "Collateral":
        parts: dict[str, bytes] = {}
        for key, name in FILES.items():
            path = directory / name
            if path.exists():
                parts[key] = path.read_bytes()
        # A PCS-format tcb_info.json carries its own signature.
        for key, inner in (("tcb_info", "tcbInfo"), ("qe_identity", "enclaveIdentity")):
            if key in parts and f"{key}_signature" not in parts:
                parts[f"{key}_signature"] = _pcs_signature(parts[key], inner)
        if not parts:
            raise CollateralError(f"{directory} holds no collateral ({', '.join(FILES.values())})")
        return cls.from_parts(parts)

    @classmethod
    def from_dcap_qvl_json(cls, data: bytes) -> "Collateral":
        try:
            bundle = json.loads(data)
            parts = {
                "tcb_info": bundle["tcb_info"].encode(),
                "tcb_info_signature": bytes.fromhex(bundle["tcb_info_signature"]),
                "tcb_info_issuer_chain": bundle["tcb_info_issuer_chain"].encode(),
                "qe_identity": bundle["qe_identity"].encode(),
                "qe_identity_signature": bytes.fromhex(bundle["qe_identity_signature"]),
                "qe_identity_issuer_chain": bundle["qe_identity_issuer_chain"].encode(),
                "pck_crl": bytes.fromhex(bundle["pck_crl"]),
                "pck_crl_issuer_chain": bundle["pck_crl_issuer_chain"].encode(),
                "root_ca_crl": bytes.fromhex(bundle["root_ca_crl"]),
            }
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CollateralError(f"not a dcap-qvl collateral bundle: {exc}") from None
        return cls.from_parts(parts)

    @classmethod
    def load(cls, path: Path) -> "Collateral":
        """A directory (cache layout) or a dcap-qvl JSON bundle file."""
        if path.is_dir():
            return cls.from_directory(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CollateralError(f"cannot read collateral {path}: {exc.strerror}") from None
        return cls.from_dcap_qvl_json(data)

    def validity_window(self) -> tuple[dt.datetime, dt.datetime]:
        """From the latest issue/thisUpdate to the earliest nextUpdate of all items."""
        tcb, identity = self.tcb_info.parsed(), self.qe_identity.parsed()
        starts, ends = [self.pck_crl.last_update_utc, self.root_ca_crl.last_update_utc], []
        for item in (tcb, identity):
            try:
                starts.append(dt.datetime.fromisoformat(str(item["issueDate"]).replace("Z", "+00:00")))
                ends.append(dt.datetime.fromisoformat(str(item["nextUpdate"]).replace("Z", "+00:00")))
            except (KeyError, ValueError):
                raise CollateralError("collateral lacks a valid issueDate or nextUpdate") from None
        for crl in (self.pck_crl, self.root_ca_crl):
            if crl.next_update_utc is None:
                raise CollateralError("a CRL has no nextUpdate")
            ends.append(crl.next_update_utc)
        return max(starts), min(ends)

    def parts(self) -> dict[str, bytes]:
        """The raw parts in cache-layout encodings (what ``save`` writes)."""

        def pem(chain: tuple[x509.Certificate, ...]) -> bytes:
            return b"".join(c.public_bytes(Encoding.PEM) for c in chain)

        return {
            "tcb_info": self.tcb_info.body,
            "tcb_info_signature": self.tcb_info.signature,
            "tcb_info_issuer_chain": pem(self.tcb_info.issuer_chain),
            "qe_identity": self.qe_identity.body,
            "qe_identity_signature": self.qe_identity.signature,
            "qe_identity_issuer_chain": pem(self.qe_identity.issuer_chain),
            "pck_crl": self.pck_crl.public_bytes(Encoding.DER),
            "pck_crl_issuer_chain": pem(self.pck_crl_issuer_chain),
            "root_ca_crl": self.root_ca_crl.public_bytes(Encoding.DER),
        }

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for key, data in self.parts().items():
            (directory / FILES[key]).write_bytes(data)


def _inner_object(text: bytes, key: str) -> bytes:
    """The exact text of ``"key": {...}`` in a PCS response, from its ``{`` to the matching ``}``."""
    match = re.search(rb'"' + key.encode() + rb'"\s*:\s*\{', text)
    if match is None:
        return text
    start = match.end() - 1
    depth, in_string, escaped = 0, False, False
    for index in range(start, len(text)):
        char = text[index : index + 1]
        if in_string:
            if escaped:
                escaped = False
            elif char == b"\\":
                escaped = True
            elif char == b'"':
                in_string = False
        elif char == b'"':
            in_string = True
        elif char == b"{":
            depth += 1
        elif char == b"}":
            depth -= 1
            if depth == 0:
                return text[start : index + 1]
    raise CollateralError(f"unbalanced braces in the '{key}' object")


def _pcs_signature(text: bytes, key: str) -> bytes:
    try:
        wrapper = json.loads(text)
    except ValueError:
        return b""
    if isinstance(wrapper, dict) and key in wrapper and "signature" in wrapper:
        return str(wrapper["signature"]).encode()
    return b""


def _signed(body: bytes, signature: bytes, chain: bytes, pcs_key: str) -> SignedCollateral:
    stripped = body.strip()
    inner = _inner_object(stripped, pcs_key)
    if inner is not stripped and not signature:
        signature = _pcs_signature(stripped, pcs_key)
    text = signature.strip()
    if len(text) == 128 and re.fullmatch(rb"[0-9a-fA-F]+", text):
        raw = bytes.fromhex(text.decode())
    elif len(signature) == 64:
        raw = signature
    else:
        raise CollateralError(f"the {pcs_key} signature is neither 64 raw bytes nor 128 hex digits")
    return SignedCollateral(inner, raw, _chain(chain, f"{pcs_key} issuer chain"))


def _chain(pem: bytes, what: str) -> tuple[x509.Certificate, ...]:
    try:
        return load_pem_chain(pem, what)
    except MalformedCertificate as exc:
        raise CollateralError(str(exc)) from None


def _crl(data: bytes, what: str) -> x509.CertificateRevocationList:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        if re.fullmatch(rb"\s*[0-9a-fA-F]+\s*", data):
            return x509.load_der_x509_crl(bytes.fromhex(data.decode().strip()))
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise CollateralError(f"{what} is not a CRL: {exc}") from None
