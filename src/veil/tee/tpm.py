"""TPM 2.0 quotes (docs/attestation.md, "TPM 2.0 quotes"): TPMS_ATTEST and TPMT_SIGNATURE
parsed exactly, the signature checked with the attestation key, the PCR digest recomputed.

A quote proves only what its attestation key (AK) is trusted for; without an EK or AK
certificate nothing ties the AK to a manufacturer, and the verdict says so.
"""

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from veil.tee.claims import EvidenceError, json_object
from veil.tee.reader import ByteReader

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_SHA256 = 0x000B
TPM_ALG_SHA384 = 0x000C
TPM_ALG_RSASSA = 0x0014
TPM_ALG_RSAPSS = 0x0016
TPM_ALG_ECDSA = 0x0018
_HASHES: dict[int, type[hashes.HashAlgorithm]] = {
    TPM_ALG_SHA256: hashes.SHA256,
    TPM_ALG_SHA384: hashes.SHA384,
}
_PCR_COUNT = 24


@dataclass(frozen=True)
class QuoteInfo:
    """A parsed TPMS_ATTEST of type quote."""

    raw: bytes
    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    #: (hash algorithm, selected PCR indices ascending) per bank
    selection: tuple[tuple[int, tuple[int, ...]], ...]
    pcr_digest: bytes

    @classmethod
    def parse(cls, data: bytes) -> "QuoteInfo":
        r = ByteReader(data, "TPMS_ATTEST", "big")
        magic = r.u32("magic")
        if magic != TPM_GENERATED_VALUE:
            raise EvidenceError(f"TPMS_ATTEST: magic 0x{magic:08x}, not TPM_GENERATED_VALUE (0xff544347)")
        kind = r.u16("type")
        if kind != TPM_ST_ATTEST_QUOTE:
            raise EvidenceError(f"TPMS_ATTEST: type 0x{kind:04x}, not a quote (0x8018)")
        signer = r.sized("qualifiedSigner")
        extra = r.sized("extraData")
        clock, resets, restarts, safe = (
            r.u64("clock"),
            r.u32("resetCount"),
            r.u32("restartCount"),
            r.u8("safe"),
        )
        if safe > 1:
            raise EvidenceError(f"TPMS_ATTEST: clockInfo.safe is {safe}, not a boolean")
        firmware = r.u64("firmwareVersion")
        selection = []
        for index in range(r.u32("pcrSelect count")):
            algorithm = r.u16(f"pcrSelections[{index}].hash")
            bitmap = r.take(r.u8(f"pcrSelections[{index}].sizeofSelect"), f"pcrSelections[{index}].pcrSelect")
            pcrs = tuple(
                8 * byte + bit for byte, bits in enumerate(bitmap) for bit in range(8) if bits >> bit & 1
            )
            selection.append((algorithm, pcrs))
        digest = r.sized("pcrDigest")
        r.end()
        return cls(
            data, signer, extra, clock, resets, restarts, bool(safe), firmware, tuple(selection), digest
        )


@dataclass(frozen=True)
class TpmSignature:
    algorithm: int
    hash_algorithm: int
    #: RSA: the signature; ECDSA: DER of (r, s)
    signature: bytes

    @classmethod
    def parse(cls, data: bytes) -> "TpmSignature":
        r = ByteReader(data, "TPMT_SIGNATURE", "big")
        algorithm, hash_algorithm = r.u16("sigAlg"), r.u16("hash")
        if hash_algorithm not in _HASHES:
            raise EvidenceError(
                f"TPMT_SIGNATURE: hash algorithm 0x{hash_algorithm:04x} is not SHA-256 or SHA-384"
            )
        if algorithm in (TPM_ALG_RSASSA, TPM_ALG_RSAPSS):
            signature = r.sized("signature")
        elif algorithm == TPM_ALG_ECDSA:
            sig_r, sig_s = r.sized("signatureR"), r.sized("signatureS")
            signature = encode_dss_signature(int.from_bytes(sig_r, "big"), int.from_bytes(sig_s, "big"))
        else:
            raise EvidenceError(f"TPMT_SIGNATURE: algorithm 0x{algorithm:04x} is not RSASSA, RSAPSS or ECDSA")
        r.end()
        return cls(algorithm, hash_algorithm, signature)


@dataclass(frozen=True)
class TpmVerified:
    quote: QuoteInfo
    signature: TpmSignature
    ak_fingerprint: str
    #: the selected PCRs of the SHA-256 bank, by index
    pcrs: dict[int, bytes]


def verify_tpm_quote(evidence: bytes) -> TpmVerified:
    """Verify the TPM evidence document (JSON): signature by its AK and PCR digest."""
    document = json_object(evidence, "TPM evidence (a JSON document with ak_public and tpm_quote)")
    try:
        ak = serialization.load_der_public_key(_b64(document.get("ak_public"), "ak_public"))
    except ValueError:
        raise EvidenceError("ak_public is not a DER SubjectPublicKeyInfo") from None
    if not isinstance(ak, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise EvidenceError("ak_public is neither an RSA nor an EC key")
    quote_document = document.get("tpm_quote")
    if not isinstance(quote_document, dict):
        raise EvidenceError("the evidence has no tpm_quote object")
    message = _b64(quote_document.get("message"), "tpm_quote.message")
    quote = QuoteInfo.parse(message)
    signature = TpmSignature.parse(_b64(quote_document.get("signature"), "tpm_quote.signature"))
    _check_signature(ak, signature, message)
    pcrs = _pcr_values(quote_document.get("pcrs"))
    return TpmVerified(quote, signature, key_fingerprint(ak), selected_pcrs(quote, pcrs))


def selected_pcrs(quote: QuoteInfo, given: list[bytes]) -> dict[int, bytes]:
    """The PCR values the quote selects (SHA-256 bank only), checked against its digest."""
    banks = [algorithm for algorithm, _ in quote.selection]
    if banks != [TPM_ALG_SHA256]:
        raise EvidenceError(
            f"the quote selects banks {[f'0x{a:04x}' for a in banks]}: only the SHA-256 bank is supported"
        )
    selected = quote.selection[0][1]
    missing = [i for i in selected if i >= len(given)]
    if missing:
        raise EvidenceError(
            f"the quote selects PCR {missing[0]}, but the evidence gives only {len(given)} PCRs"
        )
    if any(len(given[i]) != hashlib.sha256().digest_size for i in selected):
        raise EvidenceError("a quoted PCR's value is not 32 bytes")
    if hashlib.sha256(b"".join(given[i] for i in selected)).digest() != quote.pcr_digest:
        raise EvidenceError("the PCR values do not match the quoted PCR digest")
    return {i: given[i] for i in selected}


def key_fingerprint(key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> str:
    """SHA-256 of the key's SubjectPublicKeyInfo (hex)."""
    spki = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def pcr_claims(pcrs: dict[int, bytes]) -> dict[str, object]:
    return {f"pcr{index:02d}": value.hex() for index, value in pcrs.items()}


def nonce_matches(extra_data: bytes, nonce: bytes) -> bool:
    """extraData is the nonce, or the nonce followed by zero bytes only."""
    return extra_data[: len(nonce)] == nonce and not any(extra_data[len(nonce) :]) and len(nonce) > 0


def claims(verified: TpmVerified) -> dict[str, object]:
    q = verified.quote
    return {
        "qualified_signer": q.qualified_signer.hex(),
        "clock": q.clock,
        "reset_count": q.reset_count,
        "restart_count": q.restart_count,
        "safe": q.safe,
        "firmware_version": f"0x{q.firmware_version:016x}",
        "pcr_selection": {"sha256": list(q.selection[0][1])},
        "pcr_digest": q.pcr_digest.hex(),
        **pcr_claims(verified.pcrs),
        "signature_algorithm": {TPM_ALG_RSASSA: "RSASSA", TPM_ALG_RSAPSS: "RSAPSS", TPM_ALG_ECDSA: "ECDSA"}[
            verified.signature.algorithm
        ],
        "ak_fingerprint": verified.ak_fingerprint,
        "ak_certified": False,
    }


def _b64(value: object, field: str) -> bytes:
    if not isinstance(value, str):
        raise EvidenceError(f"{field} is missing or not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise EvidenceError(f"{field} is not base64") from None


def _pcr_values(value: object) -> list[bytes]:
    if not isinstance(value, list) or len(value) > _PCR_COUNT:
        raise EvidenceError(f"tpm_quote.pcrs must be a list of at most {_PCR_COUNT} hex values")
    values = []
    for index, item in enumerate(value):
        try:
            pcr = bytes.fromhex(item) if isinstance(item, str) else b""
        except ValueError:
            pcr = b""
        if len(pcr) != hashlib.sha256().digest_size:
            raise EvidenceError(f"tpm_quote.pcrs[{index}] is not a 32-byte hex value")
        values.append(pcr)
    return values


def _check_signature(ak: object, signature: TpmSignature, message: bytes) -> None:
    algorithm = _HASHES[signature.hash_algorithm]()
    try:
        if isinstance(ak, rsa.RSAPublicKey) and signature.algorithm == TPM_ALG_RSASSA:
            ak.verify(signature.signature, message, padding.PKCS1v15(), algorithm)
        elif isinstance(ak, rsa.RSAPublicKey) and signature.algorithm == TPM_ALG_RSAPSS:
            ak.verify(
                signature.signature,
                message,
                padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.AUTO),
                algorithm,
            )
        elif isinstance(ak, ec.EllipticCurvePublicKey) and signature.algorithm == TPM_ALG_ECDSA:
            ak.verify(signature.signature, message, ec.ECDSA(algorithm))
        else:
            raise EvidenceError("the signature's algorithm does not fit the attestation key's type")
    except InvalidSignature:
        raise EvidenceError("the quote's signature does not verify with ak_public") from None
