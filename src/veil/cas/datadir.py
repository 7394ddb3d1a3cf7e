"""The version of a CAS node's data directory (docs/cas-storage.md, "Schema versions").

``DATA/version`` says which layout the directory has (platform key, sealed master key,
SQLite store). A directory without it was written before it existed and has layout 1,
which is today's: the file is then added. A newer layout is refused before anything in
the directory is touched.
"""

import json
from pathlib import Path

from veil import __version__
from veil.cas.errors import StorageCorrupted, StoreTooNew
from veil.crypto.files import replace_private_file

DATA_FORMAT = 1
_FILE = "version"


def check_data_dir(data: Path) -> int:
    """The layout of ``data`` (DATA_FORMAT when it has no version file yet); a newer one
    is refused. Reads only: ``mark_data_dir`` records the layout once the node opened."""
    path = data / _FILE
    try:
        found = int(json.loads(path.read_text())["format"])
    except FileNotFoundError:
        return DATA_FORMAT
    except (ValueError, KeyError, TypeError):
        raise StorageCorrupted(f"{path} is not a veil data directory version file") from None
    if found > DATA_FORMAT:
        raise StoreTooNew(
            f"{data} has data layout {found}, written by a newer veil; this one reads up to "
            f"{DATA_FORMAT}: run the newer veil, or restore a backup taken before the upgrade"
        )
    return found


def mark_data_dir(data: Path) -> None:
    """Record this layout in ``data`` (after an upgrade, or in a new directory)."""
    path = data / _FILE
    if path.exists() and check_data_dir(data) == DATA_FORMAT:
        return
    mark = json.dumps({"format": DATA_FORMAT, "written_by": __version__}) + "\n"
    replace_private_file(path, mark.encode())
