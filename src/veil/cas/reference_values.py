"""Matching verified evidence against a service's attestation entries (reference values).

Each function says why one entry does not match, or returns None. The CAS accepts evidence
when any entry of the service matches.
"""

from veil.crypto import constant_time_equal
from veil.policy import SgxAttestation, SnpAttestation, TdxAttestation
from veil.policy.model import AttestationEntry
from veil.tee.verdict import HardwareVerdict


def _differs(name: str, expected: str | None, actual: object) -> str | None:
    if expected is None:
        return None
    if not isinstance(actual, str) or not constant_time_equal(expected, actual):
        return f"{name} {str(actual)[:16]}… is not the expected {expected[:16]}…"
    return None


def _first_difference(expected: dict[str, str | None], claims: dict[str, object]) -> str | None:
    for name, value in expected.items():
        problem = _differs(name, value, claims.get(name))
        if problem:
            return problem
    return None


def _snp(entry: SnpAttestation, v: HardwareVerdict) -> str | None:
    c = v.claims
    problem = _first_difference(
        {
            "measurement": entry.measurement,
            "host_data": entry.host_data,
            "id_key_digest": entry.id_key_digest,
        },
        c,
    )
    if problem:
        return problem
    if entry.vmpl is not None and c.get("vmpl") != entry.vmpl:
        return f"VMPL {c.get('vmpl')} is not {entry.vmpl}"
    guest_svn = c.get("guest_svn")
    if entry.min_guest_svn is not None and isinstance(guest_svn, int) and guest_svn < entry.min_guest_svn:
        return f"guest SVN {guest_svn} is below {entry.min_guest_svn}"
    if entry.min_tcb is not None:
        low = [
            f"{name} {v.tcb.get(name)} < {minimum}"
            for name, minimum in entry.min_tcb.model_dump(exclude_none=True).items()
            if not isinstance(v.tcb.get(name), int) or int(str(v.tcb.get(name))) < minimum
        ]
        if low:
            return "reported TCB below the minimum (" + ", ".join(low) + ")"
    return None


def _sgx(entry: SgxAttestation, v: HardwareVerdict) -> str | None:
    c = v.claims
    problem = _first_difference({"mr_enclave": entry.mr_enclave, "mr_signer": entry.mr_signer}, c)
    if problem:
        return problem
    if entry.isv_prod_id is not None and c.get("isv_prod_id") != entry.isv_prod_id:
        return f"ISVPRODID {c.get('isv_prod_id')} is not {entry.isv_prod_id}"
    svn = c.get("isv_svn")
    if (
        entry.isv_svn is not None
        and isinstance(svn, int)
        and not entry.isv_svn.min <= svn <= entry.isv_svn.max
    ):
        return f"ISVSVN {svn} is outside {entry.isv_svn.min}..{entry.isv_svn.max}"
    return None


def _tdx(entry: TdxAttestation, v: HardwareVerdict) -> str | None:
    c = v.claims
    problem = _differs("mr_td", entry.mr_td, c.get("mr_td")) or _differs(
        "mr_seam", entry.mr_seam, c.get("mr_seam")
    )
    if problem:
        return problem
    quoted = c.get("rtmr")
    for index, expected in enumerate(entry.rtmr or []):
        if expected is not None and isinstance(quoted, list):
            problem = _differs(f"RTMR{index}", expected, quoted[index])
            if problem:
                return problem
    return None


def mismatch(entry: AttestationEntry, verdict: HardwareVerdict, workload: str) -> str | None:
    """Why ``verdict`` (with the runtime's ``workload`` measurement) does not match ``entry``."""
    if entry.platform != verdict.platform:
        return f"entry is for {entry.platform}"
    if isinstance(entry, SnpAttestation):
        problem = _snp(entry, verdict)
    elif isinstance(entry, SgxAttestation):
        problem = _sgx(entry, verdict)
    elif isinstance(entry, TdxAttestation):
        problem = _tdx(entry, verdict)
    else:
        return "entry is for sim"
    if problem is None and entry.workload is not None and not constant_time_equal(entry.workload, workload):
        problem = f"workload {workload} is not the expected {entry.workload}"
    return problem
