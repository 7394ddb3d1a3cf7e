"""The FUSE binding, bound to libfuse 3.

mfusepy prefers libfuse 2 when both are installed (gocryptfs pulls it in); veil is written
for libfuse 3 (big writes by default, the FUSE 3 init), so it says which library to load
before the binding loads one. Import ``fuse`` from here, never mfusepy directly: whichever
module imports mfusepy first decides for the whole process. Importing this loads the
library, which only mounting needs (veil.volume.daemon.fuse_serve).
"""

import ctypes.util
import os

os.environ.setdefault("FUSE_LIBRARY_PATH", ctypes.util.find_library("fuse3") or "libfuse3.so.3")

import mfusepy as fuse  # type: ignore[import-untyped]

__all__ = ["fuse"]
