"""`veil session ...`: check and hash session files."""

from pathlib import Path

import click

from veil.cli.output import emit_json
from veil.policy import PolicyError, Session, load_session_file, session_hash


@click.group()
def session() -> None:
    """Work with session files (policies)."""


@session.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check(file: Path, as_json: bool) -> None:
    """Validate FILE; report every problem as FILE:LINE:COLUMN with a hint.

    Exit code 0 when the session is valid, 1 when it is not.
    """
    try:
        parsed, _ = load_session_file(file)
    except PolicyError as exc:
        if as_json:
            emit_json(
                {
                    "valid": False,
                    "problems": [
                        {"line": p.line, "column": p.column, "message": p.message, "hint": p.hint}
                        for p in exc.problems
                    ],
                }
            )
            raise SystemExit(1) from None
        raise
    digest = session_hash(parsed)
    if as_json:
        emit_json(
            {
                "valid": True,
                "name": parsed.name,
                "hash": digest,
                "services": [s.name for s in parsed.services],
                "secrets": [s.name for s in parsed.secrets],
                "tolerate": parsed.security.tolerate,
            }
        )
        return
    click.echo(
        f"{file}: ok: session {parsed.name}, {len(parsed.services)} service(s), "
        f"{len(parsed.secrets)} secret(s), hash {digest}"
    )
    if parsed.tolerates_sim:
        click.echo(f"{file}: note: tolerates sim evidence, which protects nothing (development only)")


@session.command("hash")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def hash_(file: Path, as_json: bool) -> None:
    """Print the canonical hash of FILE (what an update names as its predecessor)."""
    parsed, _ = load_session_file(file)
    digest = session_hash(parsed)
    if as_json:
        emit_json({"name": parsed.name, "hash": digest})
    else:
        click.echo(digest)


@session.command()
def schema() -> None:
    """Print the JSON Schema of the session language (for editors and CI checks).

    It is generated from the same model that validates sessions, so it cannot drift.
    """
    document = Session.model_json_schema(mode="validation")
    document["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    document["$id"] = "https://veil.dev/schemas/session-v1.json"
    document["title"] = "veil session, language version 1"
    emit_json(document)
