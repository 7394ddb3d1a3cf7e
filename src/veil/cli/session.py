"""`veil session ...`: check and hash session files; create, update and read them on a CAS."""

import contextlib
import datetime as dt
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import yaml

from veil.cli.options import cas_url_option, owner_client
from veil.cli.output import emit_json, note
from veil.client.config import ClientConfig
from veil.client.http import CasRequestFailed, OwnerClient, public_secret
from veil.errors import VeilError
from veil.policy import PolicyError, Session, load_session_file, parse_session, session_hash, with_predecessor
from veil.policy.governance import Approval, sign_approval
from veil.policy.loader import check_session, read_session_file
from veil.policy.scone import convert_scone_session
from veil.tee import measure_command
from veil.tee.image_measure import measure_image


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
        parsed, warnings = check_session(read_session_file(file), str(file))
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
                "warnings": [
                    {"line": w.line, "column": w.column, "message": w.message, "hint": w.hint}
                    for w in warnings
                ],
            }
        )
        return
    click.echo(
        f"{file}: ok: session {parsed.name}, {len(parsed.services)} service(s), "
        f"{len(parsed.secrets)} secret(s), hash {digest}"
    )
    for warning in warnings:
        click.echo(str(warning))
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


@session.command("measure")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--service", "service_name", required=True, help="The service of FILE to measure.")
@click.option(
    "--root",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("/"),
    show_default=True,
    help="For `measure: image`: the unpacked root file system the service runs in.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the measurement and what it covers as JSON.")
def measure_(file: Path, service_name: str, root: Path, as_json: bool) -> None:
    """Print the measurement the runtime will attest for SERVICE of FILE: its command
    resolved from the service's pwd on the session's PATH (not this shell's PATH or
    directory), or, for `measure: image`, the root file system. Paste it into the
    service's attestation entry."""
    parsed, _ = load_session_file(file)
    service = parsed.service(service_name)
    if service is None:
        raise VeilError(f"{file}: {parsed.no_service(service_name)}")
    launch = service.launch()
    if launch.measure == "image":
        image = measure_image(launch.command, launch.pwd, launch.path, launch.volume_paths, root)
        if as_json:
            emit_json({"measurement": image.value, "measure": "image", "entries": image.entries})
        else:
            click.echo(image.value)
        return
    measured = measure_command(launch.command, launch.pwd, launch.path)
    if as_json:
        emit_json({"measurement": measured.value, "measure": "command", "covered": measured.covered_json()})
        return
    click.echo(measured.value)
    for c in measured.covered:
        note(f"covers {c.role} {c.path}")


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
    for warning in result.get("warnings", []):
        note(f"warning: {warning}")
    if result.get("sim"):
        note("the CAS runs in sim mode: it protects nothing (development only)")


@session.command()
@click.argument("file", type=click.Path(path_type=Path))
@cas_url_option
@click.option("--json", "as_json", is_flag=True, help="Print the stored session's identity as JSON.")
def create(file: Path, cas_url: str | None, as_json: bool) -> None:
    """Create the session in FILE on the CAS; you become its creator (owner)."""
    load_session_file(file)  # report every problem locally, with positions, first
    with _located_in(file):
        result = owner_client(cas_url).create_session(file.read_text())
    _say_stored(result, "created", as_json)


@contextlib.contextmanager
def _located_in(file: Path) -> Iterator[None]:
    """The CAS locates problems in the text it received ("<session>:LINE:COL"): name FILE."""
    try:
        yield
    except CasRequestFailed as exc:
        raise CasRequestFailed(str(exc).replace("<session>:", f"{file}:"), exc.status, exc.body) from None


def _update_text(file: Path, client: OwnerClient) -> tuple[Session, str]:
    """FILE's session and text, its predecessor filled in from the CAS when absent."""
    parsed, text = load_session_file(file)
    if parsed.predecessor is None:
        text = with_predecessor(text, str(client.get_session(parsed.name)["hash"]))
        parsed = parse_session(text, str(file))
    return parsed, text


def _read_approval(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
        Approval.from_json(value)
    except (OSError, ValueError, VeilError) as exc:
        raise click.BadParameter(f"{path}: not an approval ({exc})", param_hint="--approval") from None
    return dict(value)


@session.command()
@click.argument("file", type=click.Path(path_type=Path))
@cas_url_option
@click.option(
    "--approval",
    "approvals",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="An approval file from `veil session approve` (repeat; for sessions with governance).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the stored session's identity as JSON.")
def update(file: Path, cas_url: str | None, approvals: tuple[Path, ...], as_json: bool) -> None:
    """Update a session on the CAS to FILE.

    FILE names the hash it replaces as `predecessor`; without one, the CAS's current hash
    is filled in (so a change made meanwhile by someone else is overwritten only if you
    read it first; name the predecessor to be safe). When the stored session's
    access_policy.governance asks for several owners, pass their approvals of exactly this
    version (each made with `veil session approve FILE`); you count as one.
    """
    client = owner_client(cas_url)
    _, text = _update_text(file, client)
    with _located_in(file):
        result = client.update_session(text, [_read_approval(p) for p in approvals])
    _say_stored(result, "updated", as_json)


@session.command()
@click.argument("file", type=click.Path(path_type=Path))
@cas_url_option
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write it here.")
def approve(file: Path, cas_url: str | None, output: Path | None) -> None:
    """Approve the update of a session to FILE: sign its hash with your owner key.

    Prints (or writes) the approval as JSON; the owner who sends the update passes it with
    `veil session update FILE --approval APPROVAL`. The approval is for this exact version
    (its hash, which includes the predecessor), so any change to FILE needs new approvals.
    Without a predecessor in FILE, the CAS's current hash is filled in, as `update` does.
    """
    config = ClientConfig.load()
    parsed, _ = load_session_file(file)
    if parsed.predecessor is None:
        parsed, _ = _update_text(file, owner_client(cas_url))
    digest = session_hash(parsed)
    approval = json.dumps(sign_approval(config.owner_key(), parsed.name, digest).to_json(), indent=2)
    if output is None:
        click.echo(approval)
    else:
        output.write_text(approval + "\n")
    note(f"approved session {parsed.name} at {digest} as owner {config.owner_id()}")


@session.command()
@click.argument("name")
@cas_url_option
@click.option("--hash", "digest", default=None, help="An earlier version (from `veil session history`).")
@click.option("--json", "as_json", is_flag=True, help="Print hash, revision, creator, text and CA as JSON.")
def show(name: str, cas_url: str | None, digest: str | None, as_json: bool) -> None:
    """Print the stored session NAME (if its access policy lets you read it)."""
    client = owner_client(cas_url)
    if digest is not None:
        [version] = client.session_versions(name, digest)
        if as_json:
            emit_json({"name": name, **version})
        else:
            click.echo(f"# session {name} revision {version['revision']} hash {version['hash']}")
            click.echo(str(version["text"]).rstrip("\n"))
        return
    result = client.get_session(name)
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


@session.command()
@click.argument("name")
@cas_url_option
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
def history(name: str, cas_url: str | None, as_json: bool) -> None:
    """List every version of session NAME: revision, hash, time, and the owner who stored it."""
    versions = owner_client(cas_url).session_versions(name)
    if as_json:
        emit_json(versions)
        return
    for version in versions:
        when = dt.datetime.fromtimestamp(int(version["time"]), dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        click.echo(f"{version['revision']:>4}  {when}  {version['hash']}  by {str(version['by'])[:16]}…")


@session.command()
@click.argument("name")
@click.argument("secret")
@cas_url_option
@click.option("--format", "fmt", default=None, help="crt, chain, der (x509); raw, hex, base64 (values).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write it here.")
def public(name: str, secret: str, cas_url: str | None, fmt: str | None, output: Path | None) -> None:
    """Read SECRET of session NAME that its session marks export_public (no owner key needed)."""
    config = ClientConfig.load()
    value = public_secret(config.resolve_url(cas_url), config, name, secret, fmt)
    if output is not None:
        output.write_bytes(value)
    else:
        sys.stdout.buffer.write(value)
        sys.stdout.buffer.flush()


@session.command("import-scone")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Write it here.")
def import_scone(file: Path, output: Path | None) -> None:
    """Convert FILE, a session written for SCONE CAS (language 0.3), into a veil session.

    $$SCONE::name[:format]$$ placeholders, mrenclaves and attestation entries, images with
    injection_files and volumes, secrets with export/import and export_public,
    access_policy (owner certificates become key hashes) and security.attestation.tolerate
    are converted. What has no equivalent is reported as a warning (and in a comment at
    the top of the result). Exit code 1 when the result still needs edits to be valid,
    with every problem listed; the result is written either way.
    """
    try:
        document, warnings = convert_scone_session(file.read_text(encoding="utf-8"), str(file))
    except UnicodeDecodeError as exc:
        raise click.BadParameter(f"{file}: not UTF-8 text ({exc})", param_hint="FILE") from None
    header = f"# converted from {file.name} by veil session import-scone\n"
    header += "".join(f"# warning: {w}\n" for w in warnings)
    text = header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
    for warning in warnings:
        note(f"warning: {warning}")
    try:
        parse_session(text, str(output or "<converted session>"))
    except PolicyError as exc:
        note("the converted session needs edits before it is valid:")
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise SystemExit(1) from None
