"""`veil session ...`: check and hash session files; create, update and read them on a CAS."""

from pathlib import Path
from typing import Any

import click

from veil.cli.options import cas_url_option, owner_client
from veil.cli.output import emit_json, note
from veil.policy import PolicyError, Session, load_session_file, session_hash, with_predecessor


@click.group()
def session() -> None:
    """Session files (policies): check, hash, schema; create, update, show, list on a CAS."""


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


def _say_stored(result: dict[str, Any], verb: str, as_json: bool) -> None:
    if as_json:
        emit_json(result)
        return
    click.echo(f"{verb} session {result['name']} revision {result['revision']}: {result['hash']}")
    if result.get("sim"):
        note("the CAS runs in sim mode: it protects nothing (development only)")


@session.command()
@click.argument("file", type=click.Path(path_type=Path))
@cas_url_option
@click.option("--json", "as_json", is_flag=True, help="Print the stored session's identity as JSON.")
def create(file: Path, cas_url: str | None, as_json: bool) -> None:
    """Create the session in FILE on the CAS; you become its creator (owner)."""
    load_session_file(file)  # report every problem locally, with positions, first
    _say_stored(owner_client(cas_url).create_session(file.read_text()), "created", as_json)


@session.command()
@click.argument("file", type=click.Path(path_type=Path))
@cas_url_option
@click.option("--json", "as_json", is_flag=True, help="Print the stored session's identity as JSON.")
def update(file: Path, cas_url: str | None, as_json: bool) -> None:
    """Update a session on the CAS to FILE.

    FILE names the hash it replaces as `predecessor`; without one, the CAS's current hash
    is filled in (so a change made meanwhile by someone else is overwritten only if you
    read it first; name the predecessor to be safe).
    """
    parsed, text = load_session_file(file)
    client = owner_client(cas_url)
    if parsed.predecessor is None:
        current = str(client.get_session(parsed.name)["hash"])
        text = with_predecessor(text, current)
    _say_stored(client.update_session(text), "updated", as_json)


@session.command()
@click.argument("name")
@cas_url_option
@click.option("--json", "as_json", is_flag=True, help="Print hash, revision, creator, text and CA as JSON.")
def show(name: str, cas_url: str | None, as_json: bool) -> None:
    """Print the stored session NAME (if its access policy lets you read it)."""
    result = owner_client(cas_url).get_session(name)
    if as_json:
        emit_json(result)
        return
    click.echo(f"# session {result['name']} revision {result['revision']} hash {result['hash']}")
    click.echo(f"# creator {result['creator']}")
    click.echo(str(result["text"]).rstrip("\n"))


@session.command("list")
@cas_url_option
@click.option("--json", "as_json", is_flag=True, help="Print the names as JSON.")
def list_(cas_url: str | None, as_json: bool) -> None:
    """List the sessions on the CAS that you may read."""
    names = owner_client(cas_url).list_sessions()
    if as_json:
        emit_json(names)
    else:
        for name in names:
            click.echo(name)
