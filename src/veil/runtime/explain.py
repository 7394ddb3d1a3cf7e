"""Why a refused program differs: the covered files of its last accepted run, kept by the
node, compared with what was measured now.

An attestation entry names only a digest, so a refusal (``measurement … matches no
attestation entry``) cannot say what changed. The embedded CAS's home keeps, per service,
the covered files (role, path, SHA-256) of the last run the CAS accepted; on a refusal the
runtime names the files that differ from it. A hint for the user, never a decision: it
trusts nothing it reads.
"""

import json
from pathlib import Path

from veil.crypto.files import replace_private_file
from veil.tee.measure import Measurement


def _record(home: Path, config_id: str) -> Path:
    return home / "accepted" / f"{config_id}.json"


def remember_accepted(home: Path, config_id: str, measurement: Measurement) -> None:
    """Keep what the CAS accepted for ``config_id`` (atomically replaced)."""
    path = _record(home, config_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"measurement": measurement.value, "covered": measurement.covered_json()}
    replace_private_file(path, json.dumps(record).encode())


def what_changed(home: Path, config_id: str, measurement: Measurement) -> list[str]:
    """The covered files that differ from the last accepted run, one line each; empty when
    there was none (or nothing differs: the session changed, not the program)."""
    try:
        before = json.loads(_record(home, config_id).read_text())
        old = {(c["role"], c["argument_index"]): c for c in before["covered"]}
    except (OSError, ValueError, KeyError, TypeError):
        return []
    new = {(c["role"], c["argument_index"]): c for c in measurement.covered_json()}
    lines = []
    for key in sorted(set(old) | set(new), key=lambda k: (k[1], k[0])):
        role, index = key
        what = role if role != "argument" else f"argument {index}"
        was, now = old.get(key), new.get(key)
        if was is None:
            lines.append(f"{what} {now['path'] if now else ''} is covered now, not in the last accepted run")
        elif now is None:
            lines.append(f"{what} {was['path']} was covered in the last accepted run, not now")
        elif was["path"] != now["path"]:
            lines.append(f"{what} is {now['path']}, was {was['path']}")
        elif was["sha256"] != now["sha256"]:
            old_digest, new_digest = str(was["sha256"])[:12], str(now["sha256"])[:12]
            lines.append(f"{what} {now['path']} changed (sha256 {old_digest}… → {new_digest}…)")
    return lines
