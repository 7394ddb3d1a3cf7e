"""Converting a container image into a confidential one (`veil image convert`, docs/image.md)."""

from veil.image.convert import ConvertOptions, ConvertResult, convert
from veil.image.errors import ImageError

__all__ = ["ConvertOptions", "ConvertResult", "ImageError", "convert"]
