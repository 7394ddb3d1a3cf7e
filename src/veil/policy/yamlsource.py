"""YAML -> plain Python values, remembering the line and column of every key and value.

PyYAML's composer gives nodes with marks; we construct the values ourselves so that each
value is reachable by its path (``("services", 0, "command")``) and duplicate keys, which
PyYAML would silently accept, are reported. Before composing, the event stream is scanned
for its size once aliases are expanded and for its nesting depth, so that an alias bomb or
a deeply nested document is refused in time linear in its text (docs/policy.md, "Limits").
"""

from dataclasses import dataclass, field
from typing import Any

import yaml

from veil.policy.errors import PolicyError, PolicyProblem

Path = tuple[str | int, ...]

#: a session is small: these bound the work any document can cause (docs/policy.md, "Limits")
MAX_TEXT = 1 << 20
MAX_NODES = 20_000
MAX_DEPTH = 64


@dataclass(frozen=True)
class Position:
    line: int
    column: int


@dataclass
class YamlDocument:
    source: str
    data: Any
    value_positions: dict[Path, Position] = field(default_factory=dict)
    key_positions: dict[Path, Position] = field(default_factory=dict)

    def position(self, path: Path, prefer_key: bool = False) -> Position:
        """The best known position for ``path``, walking up to the nearest known parent."""
        for cut in range(len(path), -1, -1):
            prefix = path[:cut]
            first, second = (
                (self.key_positions, self.value_positions)
                if prefer_key
                else (self.value_positions, self.key_positions)
            )
            if prefix in first:
                return first[prefix]
            if prefix in second:
                return second[prefix]
        return Position(0, 0)

    def problem(self, path: Path, message: str, hint: str = "", prefer_key: bool = False) -> PolicyProblem:
        pos = self.position(path, prefer_key)
        return PolicyProblem(self.source, pos.line, pos.column, message, hint)


def _mark(node: yaml.Node) -> Position:
    return Position(node.start_mark.line + 1, node.start_mark.column + 1)


class _Builder:
    def __init__(self, doc: YamlDocument) -> None:
        self.doc = doc
        self.problems: list[PolicyProblem] = []
        self._scalars = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.doc.value_positions[path] = _mark(node)
        if isinstance(node, yaml.MappingNode):
            result: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self.build_scalar_key(key_node)
                if key is None:
                    continue
                child = (*path, key)
                if key in result:
                    pos = _mark(key_node)
                    self.problems.append(
                        PolicyProblem(
                            self.doc.source,
                            pos.line,
                            pos.column,
                            f"duplicate key '{key}'",
                            "each key may appear once in a mapping",
                        )
                    )
                    continue
                self.doc.key_positions[child] = _mark(key_node)
                result[key] = self.build(value_node, child)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        assert isinstance(node, yaml.ScalarNode)
        return self._scalar(node)

    def _scalar(self, node: yaml.Node) -> Any:
        """A scalar's value; one YAML cannot make into a plain value (a bare ``=``, which
        YAML 1.1 tags as a "value key", or an unknown ``!!tag``) is a located problem."""
        try:
            return self._scalars.construct_object(node, deep=True)
        except yaml.YAMLError:
            pos = _mark(node)
            self.problems.append(
                PolicyProblem(
                    self.doc.source,
                    pos.line,
                    pos.column,
                    f"'{node.value}' is not a value YAML can read here ({node.tag})",
                    "quote it to make it text",
                )
            )
            return None

    def build_scalar_key(self, node: yaml.Node) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            pos = _mark(node)
            self.problems.append(
                PolicyProblem(self.doc.source, pos.line, pos.column, "keys must be plain strings")
            )
            return None
        known = len(self.problems)
        value = self._scalar(node)
        return None if len(self.problems) > known else str(value)


def _limit_problem(source: str, event: yaml.Event, message: str, hint: str) -> PolicyError:
    mark = event.start_mark
    line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
    return PolicyError([PolicyProblem(source, line, column, message, hint)])


def check_bounds(text: str, source: str, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a document whose nodes, with every alias expanded, number more than
    ``max_nodes``, or that nests deeper than ``max_depth``: counted on the event stream,
    before any node is built (PyYAML's parser is not recursive; its composer is)."""
    if len(text) > MAX_TEXT:
        raise PolicyError(
            [PolicyProblem(source, 0, 0, f"the document has {len(text)} characters; the limit is {MAX_TEXT}")]
        )
    open_sizes: list[int] = []  # expanded node count of each open collection
    open_anchors: list[str | None] = []
    sizes: dict[str, int] = {}  # anchor -> expanded node count of its node
    top = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            open_sizes.append(1)
            open_anchors.append(event.anchor)
            if len(open_sizes) > max_depth:
                raise _limit_problem(
                    source, event, f"the document nests deeper than {max_depth} levels", "a session is flat"
                )
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            size = open_sizes.pop()
            anchor = open_anchors.pop()
        elif isinstance(event, yaml.ScalarEvent):
            size, anchor = 1, event.anchor
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor in open_anchors:
                raise _limit_problem(
                    source, event, f"alias *{event.anchor} refers to a node that contains it", ""
                )
            size, anchor = sizes.get(str(event.anchor), 1), None
        else:
            continue
        if anchor is not None:
            sizes[anchor] = size
        if open_sizes:
            open_sizes[-1] += size
            total = open_sizes[-1]
        else:
            top += size
            total = top
        if total > max_nodes:
            raise _limit_problem(
                source,
                event,
                f"the document expands to more than {max_nodes} nodes",
                "aliases (*name) count once per use; a session is small",
            )


#: what a YAML parser's complaint usually means in a session file, by a word of it
_SYNTAX_HINTS = (
    ("'\\t'", "YAML indents with spaces, never tabs: replace the tab on this line"),
    ("mapping values are not allowed", "a value holding ': ' must be quoted, e.g. \"a: b\""),
    ("could not find expected ':'", "a key needs ': ' after it; a text value on several lines needs quotes"),
    ("cannot start any token", "a value that starts with @, ` or % must be quoted"),
    ("unknown escape", "in double quotes a backslash starts an escape: use single quotes for paths"),
    ("found undefined alias", "*name refers to an anchor &name defined above it"),
    (
        "expected <block end>",
        "check this line's indentation against the lines above: the items of one list "
        "or mapping line up, and a list item starts with '- '",
    ),
    ("did not find expected key", "check this line's indentation: the keys of one mapping line up"),
    ("did not find expected '-'", "the items of a list line up, each starting with '- '"),
    ("found unexpected end of stream", "a quote or bracket opened here is never closed"),
    ("while scanning a quoted scalar", "a quote opened here is never closed"),
)


def _syntax_hint(problem: str, before: str) -> str:
    """``before``: the problem's line up to where the parser stopped."""
    if "\t" in before[: len(before) - len(before.lstrip())] or (not before.strip() and "\t" in before):
        return _SYNTAX_HINTS[0][1]
    if "mapping values are not allowed" in problem and ": " not in before:
        return "this line is indented more than the key above it, which already has a value"
    return next((hint for word, hint in _SYNTAX_HINTS if word in problem), "")


def load_yaml(text: str, source: str) -> YamlDocument:
    """Parse one YAML document; raise PolicyError with the position of any syntax error
    and refuse documents beyond the limits (``check_bounds``)."""
    doc = YamlDocument(source=source, data=None)
    try:
        check_bounds(text, source)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = str(exc.problem or exc.context)
        message = f"invalid YAML: {problem}"
        lines = text.splitlines()
        hint = _syntax_hint(problem, lines[line - 1][: column - 1] if 0 < line <= len(lines) else "")
        raise PolicyError([PolicyProblem(source, line, column, message, hint)]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([PolicyProblem(source, 0, 0, f"invalid YAML: {exc}")]) from None
    if node is None:
        raise PolicyError([PolicyProblem(source, 1, 1, "the file holds no YAML document")])
    builder = _Builder(doc)
    doc.data = builder.build(node, ())
    if builder.problems:
        raise PolicyError(builder.problems)
    return doc
