"""Where a mount's daemon records its pid and tag: known without the FUSE binding, so
that commands which only read it (or run programs without volumes) need no libfuse3."""

import hashlib
import os
from pathlib import Path


def state_file(mountpoint: Path) -> Path:
    """Where a mount's daemon records its pid and tag (per mountpoint). Call it before the
    mount exists, or from outside the daemon: it resolves the path."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/veil-{os.getuid()}") / "mounts"
    digest = hashlib.sha256(str(mountpoint.resolve()).encode()).hexdigest()[:24]
    return base / f"{digest}.json"
