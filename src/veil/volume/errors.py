"""Errors of the volume part. IntegrityError is what a mount turns into EIO."""

from veil.errors import VeilError


class VolumeError(VeilError):
    """A volume operation failed."""


class IntegrityError(VolumeError):
    """Stored data was modified, moved, truncated, rolled back or is missing."""


class StaleVolume(IntegrityError):
    """The volume's tag is not the expected one: an older copy, or not the right volume."""


class WrongKey(VolumeError):
    """The key does not open this volume."""


class VolumeBusy(VolumeError):
    """Another process has the volume open."""
