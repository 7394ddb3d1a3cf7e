"""YAML -> plain Python values, remembering the line and column of every key and value.

PyYAML's composer gives nodes with marks; we construct the values ourselves so that each
value is reachable by its path (``("services", 0, "command")``) and duplicate keys, which
PyYAML would silently accept, are reported.
"""

from dataclasses import dataclass, field
from typing import Any

import yaml

from veil.policy.errors import PolicyError, PolicyProblem

Path = tuple[str | int, ...]


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
        return self._scalars.construct_object(node, deep=True)

    def build_scalar_key(self, node: yaml.Node) -> str | None:
        if not isinstance(node, yaml.ScalarNode):
            pos = _mark(node)
            self.problems.append(
                PolicyProblem(self.doc.source, pos.line, pos.column, "keys must be plain strings")
            )
            return None
        value = self._scalars.construct_object(node)
        return str(value)


def load_yaml(text: str, source: str) -> YamlDocument:
    """Parse one YAML document; raise PolicyError with the position of any syntax error."""
    doc = YamlDocument(source=source, data=None)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        message = f"invalid YAML: {exc.problem or exc.context}"
        raise PolicyError([PolicyProblem(source, line, column, message)]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([PolicyProblem(source, 0, 0, f"invalid YAML: {exc}")]) from None
    if node is None:
        raise PolicyError([PolicyProblem(source, 1, 1, "the file holds no YAML document")])
    builder = _Builder(doc)
    doc.data = builder.build(node, ())
    if builder.problems:
        raise PolicyError(builder.problems)
    return doc
