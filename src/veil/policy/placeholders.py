"""Secret placeholders ``$$VEIL::name[:format]$$``: finding, checking and rendering them.

A placeholder may stand anywhere in a string that the policy allows (command arguments,
environment values, file contents). The format says how the secret's bytes are written.
"""

import base64
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from veil.policy.errors import SecretFormatError

PLACEHOLDER = re.compile(r"\$\$VEIL::(?P<name>[A-Za-z0-9_.\-]+)(?::(?P<format>[a-z0-9\-]+))?\$\$")
_OPENER = "$$VEIL::"

FORMATS = ("raw", "hex", "base64", "base64url")
#: the formats each kind of secret can be written in; the first is the default
KIND_FORMATS: dict[str, tuple[str, ...]] = {
    "ascii": FORMATS,
    "binary": FORMATS,
    "private-key": ("pem", "pkcs8", "der"),
    "x509": ("crt", "key", "chain", "der", "pkcs12"),
    "x509-ca": ("crt", "chain", "der"),
}
#: formats whose bytes are not text (they may go into files only)
BINARY_FORMATS = {
    ("binary", "raw"),
    ("private-key", "der"),
    ("x509", "der"),
    ("x509", "pkcs12"),
    ("x509-ca", "der"),
}

#: formats that carry a private key (never public)
PRIVATE_FORMATS = {("private-key", f) for f in KIND_FORMATS["private-key"]} | {
    ("x509", "key"),
    ("x509", "pkcs12"),
}


@dataclass(frozen=True)
class Placeholder:
    name: str
    #: None: the secret kind's default format
    format: str | None
    start: int
    end: int

    def format_for(self, kind: str) -> str:
        return self.format or KIND_FORMATS[kind][0]


def find_placeholders(text: str) -> Iterator[Placeholder]:
    for match in PLACEHOLDER.finditer(text):
        yield Placeholder(match["name"], match["format"], match.start(), match.end())


def malformed_placeholder_at(text: str) -> int | None:
    """Index of a ``$$VEIL::`` that does not start a well-formed placeholder, if any."""
    covered = {p.start for p in find_placeholders(text)}
    index = text.find(_OPENER)
    while index != -1:
        if index not in covered:
            return index
        index = text.find(_OPENER, index + 1)
    return None


def render_secret(value: bytes, fmt: str) -> bytes:
    if fmt == "raw":
        return value
    if fmt == "hex":
        return value.hex().encode("ascii")
    if fmt == "base64":
        return base64.b64encode(value)
    if fmt == "base64url":
        return base64.urlsafe_b64encode(value).rstrip(b"=")
    raise SecretFormatError(f"unknown secret format '{fmt}' (known: {', '.join(FORMATS)})")


#: renders secret NAME in FORMAT (None: the kind's default) as bytes
SecretRenderer = Callable[[str, str | None], bytes]


def value_renderer(values: dict[str, bytes]) -> SecretRenderer:
    """A renderer for plain values (ascii and binary secrets)."""
    return lambda name, fmt: render_secret(values[name], fmt or "raw")


def substitute(text: str, render: SecretRenderer) -> bytes:
    """Replace every placeholder in ``text`` by its rendered secret; the result is bytes."""
    out = bytearray()
    position = 0
    for ph in find_placeholders(text):
        out += text[position : ph.start].encode("utf-8")
        out += render(ph.name, ph.format)
        position = ph.end
    out += text[position:].encode("utf-8")
    return bytes(out)


def substitute_text(text: str, render: SecretRenderer, where: str) -> str:
    """As ``substitute``, for places that need text (argv, environment): no NUL, valid UTF-8."""
    rendered = substitute(text, render)
    if b"\0" in rendered:
        raise SecretFormatError(f"{where}: a secret rendered here contains a NUL byte; use :hex or :base64")
    try:
        return rendered.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretFormatError(
            f"{where}: a secret rendered here is not valid text; use :hex or :base64"
        ) from None
