"""TCB evaluation against Intel collateral: platform TCB level, QE identity, TDX module.

Follows Intel's QVL as dcap-qvl implements it: the first matching level in the order given
wins; no platform match means the platform is not supported (reject). The overall status
merges platform, QE and (TDX) module results.
"""

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from veil.tee.claims import EvidenceError
from veil.tee.intel.pck import PckExtensions
from veil.tee.intel.quote import SgxReportBody, TdReportBody

UP_TO_DATE = "UpToDate"
SW_HARDENING_NEEDED = "SWHardeningNeeded"
CONFIGURATION_NEEDED = "ConfigurationNeeded"
CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
OUT_OF_DATE = "OutOfDate"
OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
REVOKED = "Revoked"

STATUSES = (
    UP_TO_DATE,
    SW_HARDENING_NEEDED,
    CONFIGURATION_NEEDED,
    CONFIGURATION_AND_SW_HARDENING_NEEDED,
    OUT_OF_DATE,
    OUT_OF_DATE_CONFIGURATION_NEEDED,
    REVOKED,
)


class TcbEvaluationError(EvidenceError):
    """The platform's TCB cannot be evaluated (no matching level, inconsistent collateral)."""


@dataclass(frozen=True)
class TcbResult:
    status: str
    advisories: tuple[str, ...] = field(default=())
    tcb_date: str | None = None


def parse_time(value: str) -> dt.datetime:
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise TcbEvaluationError(f"collateral time '{value}' is not RFC 3339") from None


def _result(level: dict[str, Any]) -> TcbResult:
    status = str(level.get("tcbStatus", ""))
    if status not in STATUSES:
        raise TcbEvaluationError(f"unknown TCB status '{status}' in collateral")
    return TcbResult(status, tuple(str(a) for a in level.get("advisoryIDs", [])), level.get("tcbDate"))


def _sgx_components(tcb: dict[str, Any]) -> list[int]:
    if "sgxtcbcomponents" in tcb:
        return [int(c["svn"]) for c in tcb["sgxtcbcomponents"]]
    return [int(tcb[f"sgxtcbcomp{i:02d}svn"]) for i in range(1, 17)]


def platform_level(tcb_info: dict[str, Any], pck: PckExtensions, tee_tcb_svn: bytes | None) -> TcbResult:
    """The first TCB level the platform meets (PCK components and PCESVN; TDX: tee_tcb_svn)."""
    for level in tcb_info.get("tcbLevels", []):
        tcb = level["tcb"]
        try:
            sgx = _sgx_components(tcb)
            if len(sgx) != 16 or any(req > have for req, have in zip(sgx, pck.tcb_components, strict=True)):
                continue
            if int(tcb["pcesvn"]) > pck.pce_svn:
                continue
            if tee_tcb_svn is not None:
                tdx = [int(c["svn"]) for c in tcb.get("tdxtcbcomponents", [])]
                if len(tdx) != 16 or any(req > have for req, have in zip(tdx, tee_tcb_svn, strict=True)):
                    continue
        except (KeyError, TypeError, ValueError) as exc:
            raise TcbEvaluationError(f"malformed TCB level in TCB info: {exc}") from None
        return _result(level)
    raise TcbEvaluationError("TCB level not supported: the platform matches no TCB level of the TCB info")


def _masked_equal(value: bytes, expected_hex: str, mask_hex: str) -> bool:
    expected, mask = bytes.fromhex(expected_hex), bytes.fromhex(mask_hex)
    if len(expected) != len(mask) or len(value) < len(mask):
        return False
    return all((v & m) == (e & m) for v, e, m in zip(value, expected, mask, strict=False))


def _isvsvn_level(levels: list[dict[str, Any]], isv_svn: int, what: str) -> TcbResult:
    for level in levels:
        if int(level["tcb"]["isvsvn"]) <= isv_svn:
            return _result(level)
    raise TcbEvaluationError(f"{what} TCB level not supported (ISV SVN {isv_svn})")


def qe_identity_level(identity: dict[str, Any], qe: SgxReportBody) -> TcbResult:
    """Check the QE report against the QE identity; return the QE's TCB status."""
    try:
        if bytes.fromhex(identity["mrsigner"]) != qe.mr_signer:
            raise TcbEvaluationError("QE identity: the QE's MRSIGNER is not Intel's")
        if int(identity["isvprodid"]) != qe.isv_prod_id:
            raise TcbEvaluationError(f"QE identity: ISVPRODID {qe.isv_prod_id} != {identity['isvprodid']}")
        if not _masked_equal(
            qe.misc_select.to_bytes(4, "little"), identity["miscselect"], identity["miscselectMask"]
        ):
            raise TcbEvaluationError("QE identity: MISCSELECT does not match under its mask")
        if not _masked_equal(qe.attributes, identity["attributes"], identity["attributesMask"]):
            raise TcbEvaluationError("QE identity: ATTRIBUTES do not match under their mask")
        return _isvsvn_level(identity["tcbLevels"], qe.isv_svn, "QE")
    except (KeyError, TypeError, ValueError) as exc:
        raise TcbEvaluationError(f"malformed QE identity: {exc}") from None


def tdx_module_level(tcb_info: dict[str, Any], body: TdReportBody) -> TcbResult:
    """Check the TDX module (SEAM) against TCB info's module identities."""
    try:
        minor = body.tee_tcb_svn[1]
        identities = tcb_info.get("tdxModuleIdentities")
        if identities and minor > 0:
            wanted = f"TDX_{minor:02X}"
            identity = next((i for i in identities if i.get("id") == wanted), None)
            if identity is None:
                raise TcbEvaluationError(f"TDX module {wanted} has no identity in the TCB info")
            _check_module(identity, body)
            return _isvsvn_level(identity["tcbLevels"], body.tee_tcb_svn[0], f"TDX module {wanted}")
        module = tcb_info.get("tdxModule")
        if module is None:
            raise TcbEvaluationError("TDX TCB info has no tdxModule")
        _check_module(module, body)
        return TcbResult(UP_TO_DATE)
    except (KeyError, TypeError, ValueError) as exc:
        raise TcbEvaluationError(f"malformed TDX module identity: {exc}") from None


def _check_module(identity: dict[str, Any], body: TdReportBody) -> None:
    if bytes.fromhex(identity["mrsigner"]) != body.mr_signer_seam:
        raise TcbEvaluationError("TDX module: MRSIGNERSEAM does not match the TCB info")
    if not _masked_equal(body.seam_attributes, identity["attributes"], identity["attributesMask"]):
        raise TcbEvaluationError("TDX module: SEAM attributes do not match under their mask")


def merge(platform: TcbResult, *others: TcbResult) -> TcbResult:
    """Overall status: an out-of-date QE or module makes the platform out of date."""
    status = platform.status
    advisories = list(platform.advisories)
    for other in others:
        for advisory in other.advisories:
            if advisory not in advisories:
                advisories.append(advisory)
        if other.status == REVOKED:
            status = REVOKED
        elif other.status == OUT_OF_DATE and status != REVOKED:
            if status in (UP_TO_DATE, SW_HARDENING_NEEDED):
                status = OUT_OF_DATE
            elif status in (CONFIGURATION_NEEDED, CONFIGURATION_AND_SW_HARDENING_NEEDED):
                status = OUT_OF_DATE_CONFIGURATION_NEEDED
    return TcbResult(status, tuple(advisories), platform.tcb_date)
