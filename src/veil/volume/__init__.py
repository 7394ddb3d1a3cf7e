"""Protected volumes: encrypted or authenticated files, fresh against rollback.

Format: docs/volume-format.md. ``Volume`` is the Python API; ``verify_volume`` checks a
whole volume; the FUSE mount serves it to unmodified programs.
"""

from veil.volume.errors import IntegrityError, StaleVolume, VolumeBusy, VolumeError, WrongKey
from veil.volume.keys import load_or_create_key_file
from veil.volume.verify import VolumeProblem, verify_volume
from veil.volume.volume import MODES, Volume, VolumeFile, VolumeStat

__all__ = [
    "MODES",
    "IntegrityError",
    "StaleVolume",
    "Volume",
    "VolumeBusy",
    "VolumeError",
    "VolumeFile",
    "VolumeProblem",
    "VolumeStat",
    "WrongKey",
    "load_or_create_key_file",
    "verify_volume",
]
