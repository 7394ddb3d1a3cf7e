"""Errors of the policy part: every problem carries the file, line and column it is about."""

from dataclasses import dataclass

from veil.errors import VeilError


@dataclass(frozen=True)
class PolicyProblem:
    """One problem in a session file. ``line`` and ``column`` are 1-based (0 if unknown)."""

    source: str
    line: int
    column: int
    message: str
    hint: str = ""
    #: "error" refuses the session; "warning" is reported by `veil session check` only
    severity: str = "error"

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}:{self.column}" if self.line else self.source
        text = f"{where}: {self.severity}: {self.message}"
        return f"{text} (hint: {self.hint})" if self.hint else text


class PolicyError(VeilError):
    """A session file is not valid; ``problems`` lists every problem found, in file order."""

    exit_code = 1

    def __init__(self, problems: list[PolicyProblem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line, p.column))
        super().__init__("\n".join(str(p) for p in self.problems))


class SecretFormatError(VeilError):
    """A secret value cannot be rendered in the requested format or place."""
