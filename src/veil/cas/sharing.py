"""Sharing between sessions: resolving an import against the exporting session.

An exporter lists the sessions a secret or volume goes to; an importer names the session
it imports from. Each side pins the other session: to one hash of it (``session_hash``),
to the owner who created it (``owner``), or, when it names neither, to the creator the
other session had when this one was stored (``SessionRecord.peers``, recorded by
``pin_peers``; a session that does not exist yet must be pinned explicitly). So a session
created later under a name another owner expected never receives what was meant for it.
Imports are resolved when they are used (attestation, tag updates), so an exporter's change
or an importer's update takes effect at once; at create and update the CAS reports what
does not resolve yet as warnings.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from veil.cas.errors import SharingRefused
from veil.crypto import constant_time_equal
from veil.policy import PolicyError, SecretDefinition, Session, VolumeDefinition
from veil.policy.loader import locate
from veil.policy.model import ExportTarget, SecretImport, SessionPin, VolumeImport
from veil.policy.yamlsource import Path


@dataclass(frozen=True)
class SessionRecord:
    name: str
    hash: str
    text: str
    creator: str
    revision: int
    session: Session
    #: the creator of every session this one shares with without an explicit pin, as it
    #: was when this version was stored (name -> owner id)
    peers: dict[str, str] = field(default_factory=dict)


#: the stored session of a name, if any
Lookup = Callable[[str], SessionRecord | None]


def sharing_pins(session: Session) -> Iterator[tuple[Path, SessionPin]]:
    """Every place the session names another session for sharing, with its path."""
    places: list[tuple[Path, SecretDefinition | VolumeDefinition]] = [
        (("secrets", i), s) for i, s in enumerate(session.secrets)
    ]
    places += [(("volumes", i), v) for i, v in enumerate(session.volumes)]
    for at, item in places:
        for t_index, target in enumerate(item.export):
            yield (*at, "export", t_index), target
        if item.import_ is not None:
            yield (*at, "import"), item.import_


def unpinned_peers(session: Session) -> list[tuple[Path, str]]:
    """(path, session name) of every sharing reference that pins neither hash nor owner:
    the CAS pins those to the named session's current creator."""
    return [
        (path, pin.session)
        for path, pin in sharing_pins(session)
        if pin.session_hash is None and pin.owner is None and pin.session != session.name
    ]


def pin_peers(session: Session, text: str, source: str, lookup: Lookup) -> dict[str, str]:
    """The creators of the sessions ``session`` shares with without a pin (``peers``); a
    PolicyError locating every such reference to a session that does not exist yet."""
    peers: dict[str, str] = {}
    problems = []
    for path, name in unpinned_peers(session):
        found = lookup(name)
        if found is not None:
            peers[name] = found.creator
            continue
        problems.append(
            locate(
                text,
                source,
                path,
                f"session '{name}' does not exist yet, so whoever creates it first would be the one "
                "this session shares with",
                "pin it: add owner: OWNER_ID (its owner's `veil owner id`) or session_hash: HASH",
            )
        )
    if problems:
        raise PolicyError(problems)
    return peers


def pin_refusal(holder: SessionRecord, pin: SessionPin, other: SessionRecord) -> str | None:
    """Why ``other`` (the session ``pin`` of ``holder`` names) is not the one ``holder``
    meant, or None when it is."""
    if pin.session_hash is not None and not constant_time_equal(pin.session_hash, other.hash):
        return (
            f"session '{holder.name}' shares with session '{other.name}' pinned at hash "
            f"{pin.session_hash[:16]}…, but '{other.name}' is now at {other.hash[:16]}… "
            f"(it changed since the pin; an owner of '{holder.name}' must review it and update the pin)"
        )
    owner = pin.owner
    if owner is None and pin.session_hash is None:
        owner = holder.peers.get(other.name)
        if owner is None:
            return (
                f"session '{holder.name}' names session '{other.name}' without a pin and was stored "
                f"before the CAS recorded pins: update '{holder.name}' (or pin it with session_hash/owner)"
            )
    if owner is not None and not constant_time_equal(owner, other.creator):
        return (
            f"session '{holder.name}' shares with session '{other.name}' as created by owner "
            f"{owner[:16]}…, but '{other.name}' was created by {other.creator[:16]}… (not the session meant)"
        )
    return None


def export_refusal(
    exporter: SessionRecord, exports: list[ExportTarget] | None, what: str, importer: SessionRecord
) -> str | None:
    """Why ``exporter`` does not share ``what`` (e.g. "secret 'x'") with ``importer``, or
    None when it does. ``exports`` None: no such item."""
    if exports is None:
        return f"session '{exporter.name}' has no {what} (imported by session '{importer.name}')"
    target = next((t for t in exports if t.session == importer.name), None)
    if target is None:
        return f"session '{exporter.name}' does not export {what} to session '{importer.name}'"
    refusal = pin_refusal(exporter, target, importer)
    return None if refusal is None else refusal.replace("shares with", f"exports {what} to", 1)


def _exporter(importer: SessionRecord, pin: SecretImport | VolumeImport, lookup: Lookup) -> SessionRecord:
    found = lookup(pin.session)
    if found is None:
        raise SharingRefused(
            f"session '{importer.name}' imports from session '{pin.session}', which does not exist"
        )
    refusal = pin_refusal(importer, pin, found)
    if refusal:
        raise SharingRefused(refusal.replace("shares with", "imports from", 1))
    return found


def imported_secret(
    importer: SessionRecord, definition: SecretDefinition, lookup: Lookup
) -> tuple[SessionRecord, SecretDefinition]:
    """The exporting session and its secret behind an imported secret, or SharingRefused."""
    assert definition.import_ is not None
    exporter = _exporter(importer, definition.import_, lookup)
    source = exporter.session.secret(definition.import_.secret)
    what = f"secret '{definition.import_.secret}'"
    refusal = export_refusal(exporter, source.export if source else None, what, importer)
    if refusal:
        raise SharingRefused(refusal)
    assert source is not None
    if source.kind != definition.kind:
        raise SharingRefused(
            f"{what} of session '{exporter.name}' is {source.kind}, but session '{importer.name}' "
            f"imports it as {definition.kind}"
        )
    return exporter, source


def volume_source(record: SessionRecord, name: str, lookup: Lookup) -> tuple[str, VolumeDefinition]:
    """(the session that holds the volume's key and tag, its definition) for volume
    ``name`` of ``record``, following an import; SharingRefused if it does not resolve."""
    definition = record.session.volume(name)
    if definition is None:
        raise SharingRefused(f"session '{record.name}' has no volume '{name}'")
    if definition.import_ is None:
        return record.name, definition
    exporter = _exporter(record, definition.import_, lookup)
    source = exporter.session.volume(definition.import_.volume)
    what = f"volume '{definition.import_.volume}'"
    refusal = export_refusal(exporter, source.export if source else None, what, record)
    if refusal:
        raise SharingRefused(refusal)
    assert source is not None
    return exporter.name, source


def sharing_warnings(record: SessionRecord, lookup: Lookup) -> list[str]:
    """What of the session's sharing does not work right now: imports that do not resolve,
    and pinned exports to sessions that exist at another hash."""
    warnings: list[str] = []
    for secret in record.session.secrets:
        if secret.import_ is not None:
            try:
                imported_secret(record, secret, lookup)
            except SharingRefused as exc:
                warnings.append(str(exc))
    for volume in record.session.volumes:
        if volume.import_ is not None:
            try:
                volume_source(record, volume.name, lookup)
            except SharingRefused as exc:
                warnings.append(str(exc))
    items = [("secret", s.name, s.export) for s in record.session.secrets]
    items += [("volume", v.name, v.export) for v in record.session.volumes]
    for what, name, exports in items:
        for target in exports:
            importer = lookup(target.session)
            if importer is None:
                warnings.append(
                    f"{what} '{name}' is exported to session '{target.session}', which does not exist yet"
                )
            else:
                refusal = pin_refusal(record, target, importer)
                if refusal:
                    warnings.append(f"{what} '{name}': {refusal}")
    return warnings
