"""DER decoding into plain, typed Python values (pyasn1 underneath, kept behind this module).

INTEGER/ENUMERATED -> int, BOOLEAN -> bool, OCTET STRING -> bytes, string types -> str,
OBJECT IDENTIFIER -> ``Oid``, SEQUENCE/SET -> list. Other types are refused.
"""

from dataclasses import dataclass
from typing import TypeAlias

from pyasn1.codec.der import decoder  # type: ignore[import-untyped]
from pyasn1.error import PyAsn1Error  # type: ignore[import-untyped]
from pyasn1.type import char, univ  # type: ignore[import-untyped]

from veil.crypto.errors import CryptoError


class DerError(CryptoError):
    """Bytes are not the DER expected."""


@dataclass(frozen=True)
class Oid:
    dotted: str


DerValue: TypeAlias = "int | bool | bytes | str | Oid | list[DerValue] | None"


def _convert(node: object) -> DerValue:
    if isinstance(node, univ.Boolean):
        return bool(node)
    if isinstance(node, univ.Integer):  # also ENUMERATED
        return int(node)
    if isinstance(node, univ.OctetString) and not isinstance(node, char.AbstractCharacterString):
        return bytes(node)
    if isinstance(node, char.AbstractCharacterString):
        return str(node)
    if isinstance(node, univ.ObjectIdentifier):
        return Oid(str(node))
    if isinstance(node, univ.Null):
        return None
    if isinstance(node, univ.SequenceOf | univ.Sequence | univ.SetOf | univ.Set):
        # iterating a pyasn1 Sequence yields field names; index it instead
        return [_convert(node[index]) for index in range(len(node))]
    raise DerError(f"unsupported DER type {type(node).__name__}")


def decode_der(data: bytes) -> DerValue:
    """Decode exactly one DER value; trailing bytes are an error."""
    try:
        node, rest = decoder.decode(data)
    except PyAsn1Error as exc:
        raise DerError(f"not valid DER: {exc}") from None
    if rest:
        raise DerError(f"{len(rest)} trailing bytes after the DER value")
    return _convert(node)
