"""Errors of image conversion."""

from veil.errors import VeilError


class ImageError(VeilError):
    """An image cannot be read, converted or written; the message says why."""
