"""Bounds on what a caller can make the CAS do before it is known (docs/cas-api.md, "Limits").

Every bound refuses with a 4xx and a one-line reason, or closes a connection that never
sent a request; the event loop keeps answering ``/healthz`` meanwhile. The request size
limit is aiohttp's ``client_max_size``; YAML bounds are the policy loader's
(``veil.policy.yamlsource.check_bounds``).
"""

import json
import os


def _seconds(variable: str, default: float) -> float:
    """A timeout from the environment (VEIL_CAS_*), e.g. shorter in tests; the default otherwise."""
    try:
        value = float(os.environ.get(variable, default))
    except ValueError:
        return default
    return value if value > 0 else default


#: a TLS handshake must complete within this many seconds
HANDSHAKE_TIMEOUT = _seconds("VEIL_CAS_HANDSHAKE_TIMEOUT", 10.0)
#: a connection must send a complete request head within this many seconds of opening (or of
#: its previous response); an idle keep-alive connection is closed after the same time
HEADER_TIMEOUT = _seconds("VEIL_CAS_HEADER_TIMEOUT", 15.0)
#: a request body must arrive within this many seconds of its head
BODY_TIMEOUT = _seconds("VEIL_CAS_BODY_TIMEOUT", 15.0)
#: a submitted session must parse within this many seconds (it is parsed off the event loop)
PARSE_TIMEOUT = 5.0
#: JSON bodies nest no deeper than this (the deepest the API uses is 4)
MAX_JSON_DEPTH = 32
#: connections that have not sent a complete request yet, per peer address and in all
MAX_PENDING_PER_PEER = 64
MAX_PENDING = 1024


def json_depth(value: object) -> int:
    """How deep the arrays and objects of a parsed JSON value nest, without recursion."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_json_body(raw: bytes) -> object:
    """A request body as JSON, or ValueError with a one-line reason: not JSON, or nested
    deeper than MAX_JSON_DEPTH (the C decoder stops at Python's recursion limit first)."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ValueError(f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the request body is not JSON") from None
    # no value nests deeper than it has brackets: most bodies need no walk
    if raw.count(b"[") + raw.count(b"{") > MAX_JSON_DEPTH and json_depth(value) > MAX_JSON_DEPTH:
        raise ValueError(f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
    return value
