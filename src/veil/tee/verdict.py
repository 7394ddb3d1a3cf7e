"""One entry point for hardware evidence: verify it, then judge it under tolerances.

``appraise`` is what a relying party calls: it verifies the evidence and applies the
tolerances it is given, and returns an ``Appraisal`` whose ``accepted`` is the decision
(a debug TD with valid signatures is *not* accepted unless debug mode is tolerated).
Underneath, ``verify_hardware_evidence`` returns a ``HardwareVerdict`` (typed claims,
status) or raises ``EvidenceError`` with the failed check, and ``refusal`` applies
tolerances (debug mode, TCB status and whether it was evaluated at all, SMT, advisories)
and says why evidence is not acceptable, or returns None. The CLI (`veil evidence
verify`), the CAS and the client verifying a CAS use them, so they judge alike.
"""

import dataclasses
import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from veil.errors import VeilError
from veil.tee.azure import REPORT_TYPES, AzureVerified, azure_claims, read_parts, verify_azure
from veil.tee.claims import EvidenceError
from veil.tee.intel import Collateral, IntelVerified, SgxReportBody, TdReportBody, verify_quote
from veil.tee.intel.ccel import check_rtmrs
from veil.tee.intel.tcb import (
    CONFIGURATION_AND_SW_HARDENING_NEEDED,
    CONFIGURATION_NEEDED,
    OUT_OF_DATE,
    OUT_OF_DATE_CONFIGURATION_NEEDED,
    REVOKED,
    SW_HARDENING_NEEDED,
    UP_TO_DATE,
)
from veil.tee.nvidia import GpuVerified, gpu_claims, verify_gpu_report
from veil.tee.snp import SnpProduct, SnpVerified, TcbVersion, verify_snp_report
from veil.tee.tpm import TpmVerified, nonce_matches, verify_tpm_quote
from veil.tee.tpm import claims as tpm_claims

HARDWARE_PLATFORMS = ("sev-snp", "tdx", "sgx")

#: what `veil evidence verify` reads: the hardware platforms, TPM 2.0 quotes, Azure CVMs
EVIDENCE_PLATFORMS = (*HARDWARE_PLATFORMS, "tpm", "azure-snp-vtpm", "azure-tdx-vtpm", "nvidia-gpu")
#: evidence whose TCB status comes from Intel collateral
INTEL_PLATFORMS = ("tdx", "sgx", "azure-tdx-vtpm")

#: the tolerance that accepts an Intel quote whose TCB status was not evaluated (no collateral)
NO_TCB_CHECK = "no-tcb-check"
#: the tolerance that accepts a TPM quote by an attestation key no certificate vouches for
UNCERTIFIED_AK = "uncertified-ak"
#: the tolerance that accepts GPU evidence whose measurements no reference manifest checked
NO_RIM_CHECK = "no-rim-check"

#: which tolerances a TCB status needs; Revoked is never acceptable.
STATUS_TOLERANCES: dict[str, frozenset[str] | None] = {
    UP_TO_DATE: frozenset(),
    SW_HARDENING_NEEDED: frozenset({"sw-hardening-needed"}),
    CONFIGURATION_NEEDED: frozenset({"configuration-needed"}),
    CONFIGURATION_AND_SW_HARDENING_NEEDED: frozenset({"configuration-needed", "sw-hardening-needed"}),
    OUT_OF_DATE: frozenset({"outdated-tcb"}),
    OUT_OF_DATE_CONFIGURATION_NEEDED: frozenset({"outdated-tcb", "configuration-needed"}),
    REVOKED: None,
}


@dataclass(frozen=True)
class HardwareVerdict:
    platform: str
    #: Intel TCB status; None for SEV-SNP (AMD has none) or without collateral.
    status: str | None
    advisories: tuple[str, ...]
    report_data: bytes
    debug: bool
    #: SMT enabled on the platform, where the evidence says (SNP platform_info, PCK config).
    smt: bool | None
    #: the launch measurement: SNP MEASUREMENT, SGX MRENCLAVE, TDX MRTD.
    measurement: bytes
    tcb: dict[str, object]
    claims: dict[str, object] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, object]:
        """Every claim of the evidence (all of them verified); the decision is an
        ``Appraisal``'s."""
        return {
            "platform": self.platform,
            "status": self.status,
            "advisories": list(self.advisories),
            "report_data": self.report_data.hex(),
            "debug": self.debug,
            "smt": self.smt,
            "tcb": self.tcb,
            **self.claims,
        }


def refusal(
    verdict: HardwareVerdict,
    tolerate: Collection[str],
    check_smt: bool = False,
    allowed_advisories: Collection[str] | None = None,
) -> str | None:
    """Why ``verdict`` is not acceptable under ``tolerate``, or None if it is."""
    if verdict.debug and "debug-mode" not in tolerate:
        return f"the {verdict.platform} platform runs in debug mode (tolerate 'debug-mode' to accept)"
    if verdict.platform in INTEL_PLATFORMS and verdict.status is None and NO_TCB_CHECK not in tolerate:
        return (
            f"the {verdict.platform} quote's TCB status was not evaluated (no collateral): give Intel "
            f"collateral, or tolerate '{NO_TCB_CHECK}' to accept a platform whose TCB may be out of date"
        )
    if (
        verdict.platform == "tpm"
        and verdict.claims.get("ak_certified") is not True
        and UNCERTIFIED_AK not in tolerate
    ):
        return (
            "the TPM quote's attestation key is not tied to a manufacturer (no EK or AK certificate): "
            f"tolerate '{UNCERTIFIED_AK}' to accept a key that may not live in a real TPM"
        )
    if verdict.claims.get("measurements_compared") is False and NO_RIM_CHECK not in tolerate:
        return (
            "the GPU's measurements were not compared with NVIDIA's reference manifests: tolerate "
            f"'{NO_RIM_CHECK}' to accept firmware and a driver nothing checked"
        )
    if verdict.status is not None:
        needed = STATUS_TOLERANCES.get(verdict.status)
        if needed is None:
            return f"TCB status {verdict.status} is never acceptable"
        missing = sorted(needed - set(tolerate))
        if missing:
            return f"TCB status {verdict.status} needs tolerance {' and '.join(missing)}"
        if verdict.status != UP_TO_DATE and allowed_advisories is not None:
            outside = [a for a in verdict.advisories if a not in allowed_advisories]
            if outside:
                return f"advisories not in the allow-list: {', '.join(outside)}"
    if check_smt and verdict.smt and "smt" not in tolerate:
        return "SMT is enabled on the platform (tolerate 'smt' to accept)"
    return None


@dataclass(frozen=True)
class Appraisal:
    """The decision on evidence under tolerances. ``verdict`` is None when the evidence
    itself did not verify; ``reason`` then names the failed check."""

    platform: str
    accepted: bool
    reason: str | None
    verdict: HardwareVerdict | None

    def to_json(self) -> dict[str, object]:
        """``accepted`` is the decision. ``signature_valid`` and ``chain_valid`` are true when
        the evidence verified, null when it did not (``reason`` says which check failed) or,
        for ``chain_valid``, when the evidence has no chain (TPM)."""
        valid = True if self.verdict is not None else None
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "evidence_valid": self.verdict is not None,
            "signature_valid": valid,
            # a TPM quote comes with its key, not a chain (see ak_certified)
            "chain_valid": None if self.platform == "tpm" else valid,
            **(self.verdict.to_json() if self.verdict is not None else {"platform": self.platform}),
        }


def appraise(
    platform: str,
    evidence: bytes,
    tolerate: Collection[str],
    *,
    endorsement_key: bytes | None = None,
    collateral: Collateral | None = None,
    at: dt.datetime | None = None,
    product: SnpProduct | None = None,
    event_log: bytes | None = None,
    check_smt: bool = False,
    allowed_advisories: Collection[str] | None = None,
    nonce: bytes | None = None,
    hcl_report: bytes | None = None,
    td_quote: bytes | None = None,
    rims: Sequence[bytes] = (),
) -> Appraisal:
    """Verify ``evidence`` and decide under ``tolerate``: never raises for bad evidence.
    With ``nonce``, the report data must be the nonce, or it followed by zero bytes."""
    try:
        verdict = verify_hardware_evidence(
            platform,
            evidence,
            endorsement_key=endorsement_key,
            collateral=collateral,
            at=at,
            product=product,
            event_log=event_log,
            hcl_report=hcl_report,
            td_quote=td_quote,
            rims=rims,
        )
    except VeilError as exc:
        return Appraisal(platform, False, str(exc), None)
    reason = refusal(verdict, tolerate, check_smt=check_smt, allowed_advisories=allowed_advisories)
    if reason is None and nonce is not None and not nonce_matches(verdict.report_data, nonce):
        reason = (
            f"the evidence's report data {verdict.report_data.hex()} does not carry the nonce {nonce.hex()}"
        )
    return Appraisal(platform, reason is None, reason, verdict)


def _tcb_json(t: TcbVersion) -> dict[str, object]:
    return {**t.components(), "raw": f"0x{t.raw:016x}"}


def _version(v: tuple[int, int, int]) -> str:
    return ".".join(str(part) for part in v)


def _hex_or_none(value: int | None) -> str | None:
    return None if value is None else f"0x{value:x}"


def _hex_bytes_or_none(value: bytes | None) -> str | None:
    return None if value is None else value.hex()


def _snp_verdict(v: SnpVerified) -> HardwareVerdict:
    r = v.report
    return HardwareVerdict(
        platform="sev-snp",
        status=None,
        advisories=(),
        report_data=r.report_data,
        debug=r.policy.debug,
        smt=r.platform_info.smt_enabled,
        measurement=r.measurement,
        tcb=_tcb_json(v.reported_tcb),
        claims={
            "measurement": r.measurement.hex(),
            "chip_id": r.chip_id.hex(),
            "policy": f"0x{r.policy.raw:x}",
            "host_data": r.host_data.hex(),
            "id_key_digest": r.id_key_digest.hex(),
            "author_key_digest": r.author_key_digest.hex(),
            "vmpl": r.vmpl,
            "guest_svn": r.guest_svn,
            "version": r.version,
            "product": v.product.value,
            "signing_key": v.signing_key,
            "platform_info": f"0x{r.platform_info.raw:x}",
            "current_tcb": _tcb_json(r.tcb("current", v.product)),
            "committed_tcb": _tcb_json(r.tcb("committed", v.product)),
            "launch_tcb": _tcb_json(r.tcb("launch", v.product)),
            "family_id": r.family_id.hex(),
            "image_id": r.image_id.hex(),
            "report_id": r.report_id.hex(),
            "report_id_ma": r.report_id_ma.hex(),
            "firmware_version": _version(r.current_version),
            "committed_firmware_version": _version(r.committed_version),
            "cpuid_family": r.cpuid_family,
            "cpuid_model": r.cpuid_model,
            "cpuid_stepping": r.cpuid_stepping,
            "launch_mitigation_vector": _hex_or_none(r.launch_mit_vector),
            "current_mitigation_vector": _hex_or_none(r.current_mit_vector),
            "signature_algorithm": r.signature_algo,
            "author_key_enabled": r.author_key_en,
            "mask_chip_key": r.mask_chip_key,
        },
        notes=("AMD has no TCB status; require a minimum TCB in the session",),
    )


def _intel_verdict(v: IntelVerified, platform: str) -> HardwareVerdict:
    body = v.quote.body
    tcb: dict[str, object] = {
        "sgx_components": list(v.pck.tcb_components),
        "pce_svn": v.pck.pce_svn,
    }
    claims: dict[str, object] = {
        "fmspc": v.pck.fmspc.hex(),
        "quote_version": v.quote.header.version,
        "pce_id": v.pck.pce_id.hex(),
        "cpu_svn": v.pck.cpu_svn.hex(),
        "sgx_type": v.pck.sgx_type,
        "platform_instance_id": _hex_bytes_or_none(v.pck.platform_instance_id),
        "dynamic_platform": v.pck.dynamic_platform,
        "cached_keys": v.pck.cached_keys,
    }
    if isinstance(body, TdReportBody):
        tcb["tee_tcb_svn"] = body.tee_tcb_svn.hex()
        measurement = body.mr_td
        claims |= {
            "mr_td": body.mr_td.hex(),
            "rtmr": [m.hex() for m in body.rtmr],
            "mr_seam": body.mr_seam.hex(),
            "mr_signer_seam": body.mr_signer_seam.hex(),
            "td_attributes": body.td_attributes.hex(),
            "xfam": body.xfam.hex(),
            "mr_config_id": body.mr_config_id.hex(),
            "mr_owner": body.mr_owner.hex(),
            "mr_owner_config": body.mr_owner_config.hex(),
            "seam_attributes": body.seam_attributes.hex(),
            "tee_tcb_svn2": _hex_bytes_or_none(body.tee_tcb_svn2),
            "mr_servicetd": _hex_bytes_or_none(body.mr_servicetd),
        }
    else:
        assert isinstance(body, SgxReportBody)
        measurement = body.mr_enclave
        claims |= {
            "mr_enclave": body.mr_enclave.hex(),
            "mr_signer": body.mr_signer.hex(),
            "isv_prod_id": body.isv_prod_id,
            "isv_svn": body.isv_svn,
            "attributes": body.attributes.hex(),
            "misc_select": body.misc_select,
        }
    notes = () if v.tcb else ("no collateral: TCB status not evaluated",)
    return HardwareVerdict(
        platform=platform,
        status=v.tcb.status if v.tcb else None,
        advisories=v.tcb.advisories if v.tcb else (),
        report_data=body.report_data,
        debug=body.debug,
        smt=v.pck.smt_enabled,
        measurement=measurement,
        tcb=tcb,
        claims=claims,
        notes=notes,
    )


def _azure_verdict(v: AzureVerified) -> HardwareVerdict:
    """The hardware report's verdict, with the vTPM quote's extraData as the report data
    (where Azure binds a relying party's nonce) and the vTPM's claims added."""
    if v.snp is not None:
        inner = _snp_verdict(v.snp)
    else:
        assert v.tdx is not None
        inner = _intel_verdict(v.tdx, "tdx")
    return dataclasses.replace(
        inner,
        platform=v.platform,
        report_data=v.quote.extra_data,
        claims={**inner.claims, "hardware_report_data": inner.report_data.hex(), **azure_claims(v)},
    )


def _keyed_verdict(
    platform: str, report_data: bytes, measurement: bytes, claims: dict[str, object], note: str
) -> HardwareVerdict:
    """Evidence signed by a key rather than a TEE's report: no TCB status, debug or SMT."""
    return HardwareVerdict(
        platform=platform,
        status=None,
        advisories=(),
        report_data=report_data,
        debug=False,
        smt=None,
        measurement=measurement,
        tcb={},
        claims=claims,
        notes=(note,),
    )


def _gpu_verdict(v: GpuVerified, rims: Sequence[bytes], at: dt.datetime | None) -> HardwareVerdict:
    """With RIMs (a VBIOS and a driver one), the measurements are compared with them: a
    mismatch or a RIM that does not verify refuses the evidence."""
    claims = gpu_claims(v)
    note = "measurements not compared: no reference integrity manifests (RIMs)"
    if rims:
        from veil.tee.nvidia_rim import compare, load_rim  # noqa: PLC0415  # XML libraries, for RIMs only

        manifests = [load_rim(rim, at) for rim in rims]
        compare(v.report, manifests)
        claims["measurements_compared"] = True
        claims["rims"] = [{"version": m.version, "signer": m.signer} for m in manifests]
        note = "measurements compared with the VBIOS and driver RIMs: every active one matches"
    return _keyed_verdict("nvidia-gpu", v.report.request_nonce, v.fwid, claims, note)


def _tpm_verdict(v: TpmVerified) -> HardwareVerdict:
    return _keyed_verdict(
        "tpm",
        v.quote.extra_data,
        v.quote.pcr_digest,
        tpm_claims(v),
        "the attestation key is not tied to a manufacturer: the evidence has no EK or AK certificate",
    )


def verify_hardware_evidence(
    platform: str,
    evidence: bytes,
    *,
    endorsement_key: bytes | None = None,
    collateral: Collateral | None = None,
    at: dt.datetime | None = None,
    product: SnpProduct | None = None,
    event_log: bytes | None = None,
    hcl_report: bytes | None = None,
    td_quote: bytes | None = None,
    rims: Sequence[bytes] = (),
) -> HardwareVerdict:
    if rims and platform != "nvidia-gpu":
        raise EvidenceError("reference integrity manifests (RIMs) apply to NVIDIA GPU evidence only")
    if platform == "tpm":
        return _tpm_verdict(verify_tpm_quote(evidence))
    if platform == "nvidia-gpu":
        if endorsement_key is None:
            raise EvidenceError("NVIDIA GPU evidence needs its device certificate chain")
        return _gpu_verdict(verify_gpu_report(evidence, endorsement_key, at), rims, at)
    if platform in REPORT_TYPES:
        parts = read_parts(evidence, hcl_report, endorsement_key, td_quote)
        return _azure_verdict(verify_azure(platform, parts, collateral=collateral, at=at, product=product))
    if platform == "sev-snp":
        if endorsement_key is None:
            raise EvidenceError("SEV-SNP evidence needs its VCEK or VLEK certificate")
        return _snp_verdict(verify_snp_report(evidence, endorsement_key, at, product))
    if platform not in ("tdx", "sgx"):
        raise EvidenceError(f"unknown platform '{platform}' (known: {', '.join(EVIDENCE_PLATFORMS)})")
    verified = verify_quote(evidence, collateral, at)
    kind = "tdx" if verified.quote.is_tdx else "sgx"
    if kind != platform:
        raise EvidenceError(f"the evidence is a {kind} quote, not {platform}")
    verdict = _intel_verdict(verified, platform)
    if event_log is not None:
        if not isinstance(verified.quote.body, TdReportBody):
            raise EvidenceError("an event log applies to TDX quotes only")
        events = check_rtmrs(event_log, verified.quote.body.rtmr)
        verdict = HardwareVerdict(
            **{**verdict.__dict__, "claims": {**verdict.claims, "event_log_events": len(events) - 1}}
        )
    return verdict
