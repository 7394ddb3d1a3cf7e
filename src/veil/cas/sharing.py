"""Sharing between sessions: resolving an import against the exporting session.

An exporter lists the sessions a secret or volume goes to, each optionally pinned to one
hash of the importing session. Imports are resolved when they are used (attestation, tag
updates), so an exporter's change or an importer's update takes effect at once; at
create and update the CAS reports what does not resolve yet as warnings.
"""

from collections.abc import Callable
from dataclasses import dataclass

from veil.cas.errors import SharingRefused
from veil.crypto import constant_time_equal
from veil.policy import SecretDefinition, Session, VolumeDefinition
from veil.policy.model import ExportTarget


@dataclass(frozen=True)
class SessionRecord:
    name: str
    hash: str
    text: str
    creator: str
    revision: int
    session: Session


#: the stored session of a name, if any
Lookup = Callable[[str], SessionRecord | None]


def export_refusal(
    exporter: str, exports: list[ExportTarget] | None, what: str, importer: str, importer_hash: str
) -> str | None:
    """Why ``exporter`` does not share ``what`` (e.g. "secret 'x'") with ``importer`` at
    ``importer_hash``, or None when it does. ``exports`` None: no such item."""
    if exports is None:
        return f"session '{exporter}' has no {what} (imported by session '{importer}')"
    target = next((t for t in exports if t.session == importer), None)
    if target is None:
        return f"session '{exporter}' does not export {what} to session '{importer}'"
    if target.session_hash is not None and not constant_time_equal(target.session_hash, importer_hash):
        return (
            f"session '{exporter}' exports {what} to session '{importer}' pinned at hash "
            f"{target.session_hash[:16]}…, but '{importer}' is now at {importer_hash[:16]}… "
            f"(it changed since the pin; an owner of '{exporter}' must review it and update the pin)"
        )
    return None


def _exporter(importer: SessionRecord, name: str, lookup: Lookup) -> SessionRecord:
    found = lookup(name)
    if found is None:
        raise SharingRefused(f"session '{importer.name}' imports from session '{name}', which does not exist")
    return found


def imported_secret(
    importer: SessionRecord, definition: SecretDefinition, lookup: Lookup
) -> tuple[SessionRecord, SecretDefinition]:
    """The exporting session and its secret behind an imported secret, or SharingRefused."""
    assert definition.import_ is not None
    exporter = _exporter(importer, definition.import_.session, lookup)
    source = exporter.session.secret(definition.import_.secret)
    what = f"secret '{definition.import_.secret}'"
    refusal = export_refusal(
        exporter.name, source.export if source else None, what, importer.name, importer.hash
    )
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
    exporter = _exporter(record, definition.import_.session, lookup)
    source = exporter.session.volume(definition.import_.volume)
    what = f"volume '{definition.import_.volume}'"
    refusal = export_refusal(exporter.name, source.export if source else None, what, record.name, record.hash)
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
            elif target.session_hash is not None and target.session_hash != importer.hash:
                warnings.append(
                    f"{what} '{name}' is exported to session '{target.session}' pinned at "
                    f"{target.session_hash[:16]}…, but it is at {importer.hash[:16]}…"
                )
    return warnings
