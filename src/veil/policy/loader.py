"""Reading a session from YAML text: syntax, schema and document rules, every problem located."""

import difflib
import types
import typing
from pathlib import Path as FsPath
from typing import Any

from pydantic import BaseModel, ValidationError

from veil.policy.errors import PolicyError, PolicyProblem
from veil.policy.model import PLATFORM_ENTRIES, Session
from veil.policy.rules import check_rules, session_warnings
from veil.policy.yamlsource import Path, YamlDocument, load_yaml


def render_path(path: Path) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "the document"


def _model_at(path: Path) -> type[BaseModel] | None:
    """The model class that describes the mapping at ``path`` (for 'did you mean' hints)."""
    model: type[BaseModel] = Session
    for part in path:
        if isinstance(part, int):
            continue
        if part in PLATFORM_ENTRIES:  # the tag of an attestation entry
            model = PLATFORM_ENTRIES[part]
            continue
        field = model.model_fields.get(part) or next(
            (f for f in model.model_fields.values() if f.alias == part), None
        )
        if field is None:
            return None
        found = _find_model(field.annotation)
        if found is None:
            return None
        model = found
    return model


def _document_path(loc: tuple[object, ...], data: object) -> Path:
    """pydantic's error location as a path in the YAML document (union tags dropped)."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            path.append(str(part))
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
        elif isinstance(part, str) and part in PLATFORM_ENTRIES:
            continue
        elif isinstance(part, str | int):
            path.append(part)
            node = None
    return tuple(path)


def _find_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is dict:
        return None
    if origin in (list, typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            found = _find_model(arg)
            if found is not None:
                return found
    return None


def _problem_from_pydantic(error: Any, doc: YamlDocument) -> PolicyProblem:
    raw: tuple[object, ...] = tuple(
        p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-"))
    )
    loc = _document_path(raw, doc.data)
    kind = error["type"]
    if kind == "extra_forbidden":
        key = str(loc[-1])
        parent = loc[:-1]
        model = _model_at(tuple(p for p in raw[:-1] if isinstance(p, str | int)))
        known = sorted(f.alias or n for n, f in model.model_fields.items()) if model else []
        close = difflib.get_close_matches(key, known, n=1)
        hint = (
            f"did you mean '{close[0]}'?" if close else (f"known keys: {', '.join(known)}" if known else "")
        )
        return doc.problem(loc, f"unknown key '{key}' in {render_path(parent)}", hint, prefer_key=True)
    if kind == "missing":
        return doc.problem(loc[:-1], f"missing required key '{loc[-1]}' in {render_path(loc[:-1])}")
    message = str(error["msg"]).removeprefix("Value error, ")
    return doc.problem(loc, f"{render_path(loc)}: {message}")


def parse_session(text: str, source: str = "<session>") -> Session:
    """Validate a session document; raise PolicyError listing every problem with its position."""
    return check_session(text, source)[0]


def check_session(text: str, source: str = "<session>") -> tuple[Session, list[PolicyProblem]]:
    """Validate a session document (PolicyError listing every problem), and return it with
    the warnings about what is valid but probably not meant."""
    doc = load_yaml(text, source)
    if not isinstance(doc.data, dict):
        raise PolicyError([doc.problem((), "a session is a mapping of keys (name, version, services, ...)")])
    try:
        session = Session.model_validate(doc.data)
    except ValidationError as exc:
        raise PolicyError([_problem_from_pydantic(e, doc) for e in exc.errors()]) from None
    problems = check_rules(session, doc)
    if problems:
        raise PolicyError(problems)
    return session, session_warnings(session, doc)


def locate(text: str, source: str, path: Path, message: str, hint: str = "") -> PolicyProblem:
    """A problem about ``path`` of a session text that parsed, with its line and column."""
    return load_yaml(text, source).problem(path, message, hint)


def read_session_file(path: FsPath) -> str:
    """A session file's text; an unreadable file is reported as a policy problem."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError([PolicyProblem(str(path), 0, 0, f"cannot read session file: {exc}")]) from None


def load_session_file(path: FsPath) -> tuple[Session, str]:
    """(session, its YAML text) from a file; unreadable files are reported as policy problems."""
    text = read_session_file(path)
    return parse_session(text, str(path)), text


def with_predecessor(text: str, predecessor: str) -> str:
    """The session text with its top-level ``predecessor`` set, comments and layout kept."""
    lines = text.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line.startswith("predecessor:"):
            lines[index] = f"predecessor: {predecessor}\n"
            return "".join(lines)
    separator = "" if not text or text.endswith("\n") else "\n"
    return f"{text}{separator}predecessor: {predecessor}\n"
