"""Errors of the runtime part."""

from veil.errors import VeilError


class RuntimeFailure(VeilError):
    """The runtime could not start or supervise the program."""
