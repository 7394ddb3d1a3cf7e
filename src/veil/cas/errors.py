"""Errors of the CAS part."""

from veil.errors import VeilError


class CasError(VeilError):
    """A CAS operation was refused or failed."""


class StorageCorrupted(CasError):
    """A stored record failed authentication: the database was modified outside the CAS."""


class StoreTooNew(CasError):
    """The database or data directory was written by a newer veil than this one."""


class Conflict(CasError):
    """A concurrent change won; re-read and retry."""


class NotFound(CasError):
    """What a request names does not exist (HTTP 404)."""


class SessionNotFound(NotFound):
    pass


class PredecessorMismatch(CasError):
    pass


class AccessDenied(CasError):
    pass


class MasterKeyError(CasError):
    pass


class VolumeTagRefused(CasError):
    """A volume tag update was refused (not attested, not this volume's, or stale)."""


class SharingRefused(CasError):
    """An import does not resolve: the exporter is missing, does not export it to the
    importer, or its pin names another version of the importer."""
