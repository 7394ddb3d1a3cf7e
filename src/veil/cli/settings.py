"""Settings of a long-running command from flags, ``VEIL_*`` variables and a TOML file.

Every option of a command configured this way has three more sources than its flag:
an environment variable (``PREFIX`` + the flag's name in capitals, dashes as underscores)
and a key of the file given with ``--config`` (the flag's name without dashes). Click
resolves them in the documented order: flag > environment > file > default
(docs/operations.md, "Configuration").

Relative paths in the file are relative to the file's directory, so a file and the
directory it names can move together.
"""

import difflib
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

#: options that never come from a file or a variable
_NOT_SETTINGS = {"help", "config"}


@dataclass(frozen=True)
class Problem:
    """One problem of a configuration file, located by line when the key is found there."""

    path: Path
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}" if self.line else f"{self.path}: {self.message}"


class ConfigFileError(click.ClickException):
    """The configuration file cannot be used; every problem is listed."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("the configuration file is not valid:\n" + "\n".join(f"  {p}" for p in problems))


def setting_options(command: click.Command) -> dict[str, click.Option]:
    """The options a file may set, by their key (the long flag without dashes)."""
    found: dict[str, click.Option] = {}
    for param in command.params:
        if not isinstance(param, click.Option) or param.name in _NOT_SETTINGS:
            continue
        longs = [opt for opt in param.opts if opt.startswith("--")]
        found[max(longs, key=len)[2:]] = param
    return found


def env_name(prefix: str, key: str) -> str:
    return prefix + key.upper().replace("-", "_")


def configurable(prefix: str) -> Callable[[click.Command], click.Command]:
    """Give every option of the command a ``PREFIX…`` variable and add ``--config FILE``
    (itself also ``PREFIX`` + ``CONFIG``). Apply it above ``@group.command``."""

    def decorate(command: click.Command) -> click.Command:
        for key, option in setting_options(command).items():
            option.envvar = env_name(prefix, key)
            option.show_envvar = True
        config = click.Option(
            ["--config"],
            type=click.Path(dir_okay=False, path_type=Path),
            envvar=env_name(prefix, "config"),
            show_envvar=True,
            is_eager=True,
            expose_value=False,
            callback=_load_into_context,
            help="A TOML file with any of these options (keys are the flag names without dashes); "
            "flags and variables override it.",
        )
        command.params.insert(0, config)
        # Contexts are made for this command outside the CLI tree (`veil cas config check`),
        # and click caches a command's help option the first time it is built: give it the
        # CLI's names here, or a help text rendered later would lose `-h`.
        command.context_settings.setdefault("help_option_names", ["-h", "--help"])
        return command

    return decorate


def _load_into_context(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is None:
        return
    assert isinstance(ctx.command, click.Command)
    values, problems = read_settings(value, ctx.command)
    if problems:
        raise ConfigFileError(problems)
    ctx.default_map = {**(ctx.default_map or {}), **values}


def read_settings(path: Path, command: click.Command) -> tuple[dict[str, Any], list[Problem]]:
    """The file's values by parameter name, converted as the flags would be, and every
    problem found (syntax, unknown keys, values the flag would refuse)."""
    try:
        text = path.read_text()
    except OSError as exc:
        return {}, [Problem(path, None, f"cannot be read: {exc.strerror or exc}")]
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        return {}, [Problem(path, int(found.group(1)) if found else None, f"not TOML: {exc}")]
    options = setting_options(command)
    values: dict[str, Any] = {}
    problems: list[Problem] = []
    ctx = click.Context(command)
    for key, raw in document.items():
        line = _line_of(text, key)
        option = options.get(key)
        if option is None:
            near = difflib.get_close_matches(key, list(options), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else f"; known keys: {', '.join(sorted(options))}"
            problems.append(Problem(path, line, f"'{key}' is not a setting{hint}"))
            continue
        try:
            value = _relative_to(path.absolute().parent, option, raw)
            option.type_cast_value(ctx, value)
        except click.BadParameter as exc:
            problems.append(Problem(path, line, f"{key}: {exc.message}"))
            continue
        values[str(option.name)] = value
    return values, problems


def _relative_to(directory: Path, option: click.Option, raw: object) -> object:
    """A value as the flag would receive it: lists only for repeatable options, paths
    relative to the file's directory."""
    if option.multiple:
        if not isinstance(raw, list):
            raise click.BadParameter('a list is expected, e.g. ["a", "b"]')
        return [_relative_to(directory, _single(option), item) for item in raw]
    if isinstance(raw, list | dict):
        raise click.BadParameter("one value is expected, not a list or table")
    if option.is_flag and not isinstance(raw, bool):
        raise click.BadParameter("true or false is expected")
    if isinstance(option.type, click.Path) and isinstance(raw, str) and raw and not Path(raw).is_absolute():
        return str(directory / raw)
    return raw


def _single(option: click.Option) -> click.Option:
    return click.Option(option.opts, type=option.type)


def _line_of(text: str, key: str) -> int | None:
    name = rf"(\"{re.escape(key)}\"|'{re.escape(key)}'|{re.escape(key)})"
    pattern = re.compile(rf"^\s*({name}\s*=|\[\[?\s*{name}\s*[].])")
    for number, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return number
    return None


def check_file(path: Path, command: click.Command) -> list[Problem]:
    """Every problem of ``path`` as settings of ``command``."""
    return read_settings(path, command)[1]


def sources(ctx: click.Context) -> dict[str, str]:
    """Where each setting's value came from (flag, environment, file, default)."""
    names = {
        click.core.ParameterSource.COMMANDLINE: "flag",
        click.core.ParameterSource.ENVIRONMENT: "environment",
        click.core.ParameterSource.DEFAULT_MAP: "file",
        click.core.ParameterSource.DEFAULT: "default",
    }
    assert isinstance(ctx.command, click.Command)
    found: dict[str, str] = {}
    for key, option in setting_options(ctx.command).items():
        source = ctx.get_parameter_source(str(option.name))
        found[key] = names.get(source, "default") if source is not None else "default"
    return found
