"""Log lines of the services (CAS, LAS): text for a terminal, JSON or logfmt for a collector.

A record carries its structured fields in ``extra={"fields": {...}}``; every format prints
them. Callers never pass secret values here: request lines hold routes, ids, results and
durations (docs/operations.md, "Logs").
"""

import json
import logging
import re
import sys
import time
from typing import Any

FORMATS = ("logfmt", "json", "text")
LEVELS = ("debug", "info", "warning", "error")

_BARE = re.compile(r"[A-Za-z0-9_./:@+-]+")


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    found = getattr(record, "fields", None)
    return dict(found) if isinstance(found, dict) else {}


def _timestamp(record: logging.LogRecord) -> str:
    millis = int(record.msecs)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{millis:03d}Z"


def _base(record: logging.LogRecord) -> dict[str, Any]:
    line = {"ts": _timestamp(record), "level": record.levelname.lower(), "logger": record.name}
    line["msg"] = record.getMessage()
    line.update(fields_of(record))
    if record.exc_info:
        line["error"] = logging.Formatter().formatException(record.exc_info)
    return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(_base(record), default=str, separators=(",", ":"))


def _logfmt_value(value: Any) -> str:
    text = "true" if value is True else "false" if value is False else str(value)
    if _BARE.fullmatch(text):
        return text
    return json.dumps(text)


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return " ".join(f"{key}={_logfmt_value(value)}" for key, value in _base(record).items())


class TextFormatter(logging.Formatter):
    """``veil: message key=value …``, as the CLI's other messages read."""

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{key}={_logfmt_value(value)}" for key, value in fields_of(record).items())
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        text = f"veil: {level}{record.getMessage()}" + (f" {extra}" if extra else "")
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


_FORMATTERS: dict[str, type[logging.Formatter]] = {
    "json": JsonFormatter,
    "logfmt": LogfmtFormatter,
    "text": TextFormatter,
}


def configure(fmt: str, level: str) -> None:
    """Send every ``veil`` log record of ``level`` or above to stderr in ``fmt``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_FORMATTERS[fmt]())
    root = logging.getLogger("veil")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
