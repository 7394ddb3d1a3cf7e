"""Attestation results for relying parties (docs/attestation.md, "Attestation results (EAR)").

A network CAS that grants an attestation also issues an EAR (EAT Attestation Result,
draft-fv-rats-ear): a JWT signed with the CAS identity key (ES256), which another service
verifies with the CAS's published key (``GET /v1/.well-known/jwks.json``) without
understanding the hardware. The JWS encoding is RFC 7515's compact serialisation; the
signature itself is pyca's ECDSA.
"""

import base64
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from veil import __version__

if TYPE_CHECKING:
    from veil.tee.verdict import Appraisal

EAR_PROFILE = "tag:github.com,2023:veraison/ear"
#: how long a relying party may take an EAR as current (seconds)
EAR_VALIDITY = 300
_P256_BYTES = 32


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def ear_status(platform: str, sim: bool, tcb_status: object) -> str:
    """``affirming`` for hardware evidence with nothing tolerated that weakens it,
    ``warning`` for sim (it proves nothing about the machine) or a tolerated TCB status
    other than UpToDate (or none evaluated on Intel)."""
    if sim or platform == "sim":
        return "warning"
    if platform != "sev-snp" and tcb_status != "UpToDate":
        return "warning"
    return "affirming"


@dataclass(frozen=True)
class ResultSigner:
    """Signs EARs with the CAS identity key; ``kid`` is the identity digest clients pin."""

    key: ec.EllipticCurvePrivateKey
    kid: str

    def jwks(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "EC",
                    "crv": "P-256",
                    "x": b64url(numbers.x.to_bytes(_P256_BYTES, "big")),
                    "y": b64url(numbers.y.to_bytes(_P256_BYTES, "big")),
                    "kid": self.kid,
                    "use": "sig",
                    "alg": "ES256",
                }
            ]
        }

    def issue(self, facts: dict[str, object], sim: bool, nonce: bytes, now: float | None = None) -> str:
        """The EAR of one granted attestation (``facts``: what the CAS audited about it)."""
        platform = str(facts.get("platform", ""))
        session_hash = facts.get("session_hash")
        config_id = str(facts.get("config_id", ""))
        policy = f"veil:session:{config_id.rsplit('/', 1)[0]}@{session_hash}"
        gpus = facts.get("gpus")
        cpu = {
            "ear.status": ear_status(platform, sim, facts.get("tcb_status")),
            "ear.appraisal-policy-id": policy,
            "ear.veil.claims": {**{k: v for k, v in facts.items() if k != "gpus"}, "sim": sim},
        }
        submods: dict[str, Any] = {"cpu": cpu}
        if gpus:  # verified, bound to the same nonce, and what the session's entry requires
            submods["gpu"] = {
                "ear.status": ear_status("nvidia-gpu", sim, None),
                "ear.appraisal-policy-id": policy,
                "ear.veil.claims": {"gpus": gpus},
            }
        return self._token(submods, f"veil CAS {self.kid}", nonce, now)

    def issue_appraisal(
        self, appraisal: "Appraisal", tolerated: list[str], nonce: bytes | None, now: float | None = None
    ) -> str:
        """The EAR of an offline appraisal (`veil evidence verify --ear`): the GPU's in the
        ``gpu`` submod, every other kind in ``cpu``; ``contraindicated`` when refused."""
        verdict = appraisal.verdict
        if not appraisal.accepted or verdict is None:
            status = "contraindicated"
        else:
            status = ear_status(appraisal.platform, False, verdict.status)
            if tolerated:
                status = "warning"
        submod = {
            "ear.status": status,
            "ear.appraisal-policy-id": "veil:tolerate:" + ",".join(sorted(tolerated)),
            "ear.veil.claims": appraisal.to_json(),
        }
        name = "gpu" if appraisal.platform == "nvidia-gpu" else "cpu"
        return self._token({name: submod}, f"veil evidence verify {self.kid}", nonce, now)

    def _token(self, submods: dict[str, Any], issuer: str, nonce: bytes | None, now: float | None) -> str:
        issued = int(time.time() if now is None else now)
        payload = {
            "eat_profile": EAR_PROFILE,
            "iat": issued,
            "exp": issued + EAR_VALIDITY,
            "iss": issuer,
            **({"eat_nonce": b64url(nonce)} if nonce is not None else {}),
            "ear.verifier-id": {"developer": "veil", "build": f"veil {__version__}"},
            "submods": submods,
        }
        return self._sign(payload)

    def _sign(self, payload: dict[str, Any]) -> str:
        header = {"alg": "ES256", "typ": "JWT", "kid": self.kid}
        signing_input = f"{_segment(header)}.{_segment(payload)}".encode("ascii")
        r, s = decode_dss_signature(self.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(_P256_BYTES, "big") + s.to_bytes(_P256_BYTES, "big")
        return f"{signing_input.decode('ascii')}.{b64url(signature)}"


def _segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":"), sort_keys=True).encode())
