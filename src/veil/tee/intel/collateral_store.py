"""A collateral store: one directory per (TEE, FMSPC), in the cache layout.

The LAS keeps one per node (`veil las collateral import`); the CAS reads one.

``CACHE/tdx-b0c06f000000/tcb_info.json`` and so on (see veil.tee.intel.collateral.FILES).
Imports are verified (signatures, chains to the Intel root) before they are stored, so a
cache never holds collateral that does not verify; validity windows are checked at use.
"""

import shutil
from pathlib import Path

from veil.crypto.certs import load_pem_chain
from veil.tee.intel.collateral import FILES, Collateral, CollateralError
from veil.tee.intel.quote import Quote
from veil.tee.intel.verify import check_collateral_signatures, pck_extensions


def set_name(collateral: Collateral) -> str:
    info = collateral.tcb_info.parsed()
    return f"{str(info.get('id', 'SGX')).lower()}-{str(info.get('fmspc', '')).lower()}"


def import_collateral(collateral: Collateral, cache: Path) -> Path:
    """Verify and store ``collateral``; return its directory in the cache."""
    # Checked inside its own validity window: a stale set may still be imported (an operator
    # may verify past events); using it is checked against the verification time.
    start, end = collateral.validity_window()
    if end <= start:
        raise CollateralError("the collateral items have no common validity window")
    check_collateral_signatures(collateral, start)
    target = cache / set_name(collateral)
    staging = cache / f".{target.name}.new"
    if staging.exists():
        shutil.rmtree(staging)
    collateral.save(staging)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


class CollateralStore:
    """A directory of collateral sets, found by TEE and FMSPC."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def find(self, tee: str, fmspc: bytes) -> Collateral:
        return find_collateral(self.root, tee, fmspc)

    def add(self, collateral: Collateral) -> Path:
        return import_collateral(collateral, self.root)


def find_collateral(location: Path, tee: str, fmspc: bytes) -> Collateral:
    """A collateral set: ``location`` itself, or its ``TEE-FMSPC`` subdirectory, or a bundle file."""
    if location.is_dir() and not (location / FILES["tcb_info"]).exists():
        candidate = location / f"{tee}-{fmspc.hex()}"
        if not candidate.is_dir():
            raise CollateralError(f"no collateral for {tee} FMSPC {fmspc.hex()} in {location}")
        return Collateral.from_directory(candidate)
    return Collateral.load(location)


def collateral_for(store: Path, platform: str, quote_bytes: bytes) -> Collateral:
    """The set of ``store`` for the FMSPC of the PCK certificate in an Intel quote;
    CollateralError if it has none."""
    quote = Quote.from_bytes(quote_bytes)
    fmspc = pck_extensions(load_pem_chain(quote.signature.pck_chain_pem)[0]).fmspc
    return CollateralStore(store).find(platform, fmspc)


def describe(collateral: Collateral) -> dict[str, object]:
    info = collateral.tcb_info.parsed()
    identity = collateral.qe_identity.parsed()
    return {
        "tee": str(info.get("id")),
        "fmspc": str(info.get("fmspc", "")).lower(),
        "tcb_evaluation_data_number": info.get("tcbEvaluationDataNumber"),
        "tcb_info_valid": [info.get("issueDate"), info.get("nextUpdate")],
        "qe_identity_valid": [identity.get("issueDate"), identity.get("nextUpdate")],
        "qe_identity": identity.get("id"),
    }


__all__ = [
    "CollateralStore",
    "collateral_for",
    "describe",
    "find_collateral",
    "import_collateral",
    "set_name",
]
