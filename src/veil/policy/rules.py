"""Rules that span a whole session document: unique names and secret references.

Each rule returns problems (with positions) instead of raising, so that ``veil session
check`` reports every problem at once.
"""

import re
from collections.abc import Iterator

from veil.policy.errors import PolicyProblem
from veil.policy.model import ExportTarget, Network, Session, TemplateAttestation
from veil.policy.placeholders import BINARY_FORMATS, KIND_FORMATS, find_placeholders, malformed_placeholder_at
from veil.policy.yamlsource import Path, YamlDocument


def _duplicates(names: list[str]) -> Iterator[int]:
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            yield index
        seen.add(name)


def _strings_with_text_context(session: Session) -> Iterator[tuple[Path, str, bool]]:
    """Every string that may hold placeholders: (path, text, must_be_text)."""
    for s_index, service in enumerate(session.services):
        base: Path = ("services", s_index)
        for a_index, arg in enumerate(service.command):
            yield (*base, "command", a_index), arg, True
        for key, value in service.environment.items():
            yield (*base, "environment", key), value, True
        for f_index, injected in enumerate(service.files):
            yield (*base, "files", f_index, "content"), injected.content, False
        for e_index, entry in enumerate(service.attestation):
            if isinstance(entry, TemplateAttestation):
                for key, text in entry.strings():
                    yield (*base, "attestation", e_index, key), text, True


_SHIELD_SECRET_KINDS = {"identity": "x509", "ca": "x509-ca"}


def _network_problems(
    s_index: int, network: Network, session: Session, doc: YamlDocument
) -> list[PolicyProblem]:
    """Two shields of one service may not listen on the same address, nor forward to a
    shield's own listening address (a loop); a named identity is an x509 secret, a named
    CA an x509-ca secret."""
    problems: list[PolicyProblem] = []
    for where, name, role in network.secret_uses():
        at: Path = ("services", s_index, "network", *where)
        secret, kind = session.secret(name), _SHIELD_SECRET_KINDS[role]
        if secret is None:
            known = ", ".join(sorted(s.name for s in session.secrets if s.kind == kind)) or "none"
            problems.append(
                doc.problem(at, f"unknown secret '{name}'", f"define an {kind} secret; known: {known}")
            )
        elif secret.kind != kind:
            use = "a shield's identity" if role == "identity" else "a trusted CA"
            problems.append(doc.problem(at, f"secret '{name}' is {secret.kind}; {use} is an {kind} secret"))
    seen: dict[str, Path] = {}
    listeners = [(("servers", i), s.listen) for i, s in enumerate(network.servers)]
    listeners += [(("clients", i), c.listen) for i, c in enumerate(network.clients)]
    for where, address in listeners:
        path: Path = ("services", s_index, "network", *where, "listen")
        if address in seen:
            problems.append(
                doc.problem(path, f"port conflict: {address} is also the listen address of another shield")
            )
        seen[address] = path
    for index, server in enumerate(network.servers):
        if server.forward in seen:
            problems.append(
                doc.problem(
                    ("services", s_index, "network", "servers", index, "forward"),
                    f"a server shield forwards to {server.forward}, which is a shield's own listen address",
                )
            )
    return problems


def _text_formats(kind: str) -> str:
    return ", ".join(f for f in KIND_FORMATS[kind] if (kind, f) not in BINARY_FORMATS)


def _certificate_problems(session: Session, doc: YamlDocument) -> list[PolicyProblem]:
    """Certificates name an existing private key and an existing CA, without cycles."""
    problems: list[PolicyProblem] = []
    kinds = {s.name: s.kind for s in session.secrets}
    issuers = {s.name: s.effective_issuer for s in session.secrets if s.kind == "x509-ca"}
    for index, secret in enumerate(session.secrets):
        if secret.private_key is not None and kinds.get(secret.private_key) != "private-key":
            problems.append(
                doc.problem(
                    ("secrets", index, "private_key"),
                    f"'{secret.private_key}' is not a private-key secret of this session",
                )
            )
        if secret.kind in ("x509", "x509-ca"):
            issuer = secret.effective_issuer
            if issuer != "session-ca" and kinds.get(issuer) != "x509-ca":
                problems.append(
                    doc.problem(
                        ("secrets", index, "issuer"),
                        f"issuer '{issuer}' is neither session-ca nor an x509-ca secret",
                        "use session-ca, or the name of an x509-ca secret",
                    )
                )
            seen = {secret.name}
            while issuer in issuers:
                if issuer in seen:
                    problems.append(
                        doc.problem(
                            ("secrets", index, "issuer"), f"CA secrets issue each other in a cycle ({issuer})"
                        )
                    )
                    break
                seen.add(issuer)
                issuer = issuers[issuer]
    return problems


def _volume_key_problems(session: Session, doc: YamlDocument) -> list[PolicyProblem]:
    """A volume's ``key`` names a binary secret of exactly 32 bytes."""
    problems: list[PolicyProblem] = []
    for index, volume in enumerate(session.volumes):
        if volume.key is None:
            continue
        secret = session.secret(volume.key)
        where = ("volumes", index, "key")
        if secret is None:
            known = ", ".join(sorted(s.name for s in session.secrets)) or "none"
            problems.append(doc.problem(where, f"unknown secret '{volume.key}'", f"known: {known}"))
        elif secret.kind != "binary" or secret.binary_size != 32:
            problems.append(
                doc.problem(
                    where,
                    f"secret '{volume.key}' cannot be a volume key",
                    "a volume key is a binary secret of 32 bytes (size: 32, or a 32-byte value)",
                )
            )
    return problems


def _sharing_problems(session: Session, doc: YamlDocument) -> list[PolicyProblem]:
    """Imports come from other sessions; an imported secret is used only through
    placeholders (it cannot key a volume, nor sign or be the key of a certificate)."""
    problems: list[PolicyProblem] = []
    imported = {s.name for s in session.secrets if s.import_ is not None}
    items: list[tuple[str, int, str | None, list[ExportTarget]]] = []
    for i, secret in enumerate(session.secrets):
        items.append(("secrets", i, secret.import_.session if secret.import_ else None, secret.export))
    for i, volume in enumerate(session.volumes):
        items.append(("volumes", i, volume.import_.session if volume.import_ else None, volume.export))
    for kind, index, source, exports in items:
        if source == session.name:
            problems.append(
                doc.problem((kind, index, "import", "session"), "a session cannot import from itself")
            )
        for e_index, target in enumerate(exports):
            if target.session == session.name:
                problems.append(
                    doc.problem((kind, index, "export", e_index, "session"), "a session exports to others")
                )
    for index, secret in enumerate(session.secrets):
        for field in ("private_key", "issuer"):
            if getattr(secret, field) in imported:
                problems.append(
                    doc.problem(
                        ("secrets", index, field),
                        f"'{getattr(secret, field)}' is imported; a certificate's key and issuer are "
                        "secrets of this session",
                    )
                )
    for index, volume in enumerate(session.volumes):
        if volume.key in imported:
            problems.append(
                doc.problem(
                    ("volumes", index, "key"), f"'{volume.key}' is imported; a volume key is this session's"
                )
            )
    return problems


def _overlap(path: str, other: str) -> bool:
    """Whether one of two absolute paths is the other or lies under it."""
    return path == other or path.startswith(other + "/") or other.startswith(path + "/")


def check_rules(session: Session, doc: YamlDocument) -> list[PolicyProblem]:
    problems: list[PolicyProblem] = []
    problems.extend(_sharing_problems(session, doc))
    for index in _duplicates([s.name for s in session.services]):
        problems.append(
            doc.problem(
                ("services", index, "name"), f"duplicate service name '{session.services[index].name}'"
            )
        )
    for index in _duplicates([s.name for s in session.secrets]):
        problems.append(
            doc.problem(("secrets", index, "name"), f"duplicate secret name '{session.secrets[index].name}'")
        )
    for index in _duplicates([v.name for v in session.volumes]):
        problems.append(
            doc.problem(("volumes", index, "name"), f"duplicate volume name '{session.volumes[index].name}'")
        )
    problems.extend(_volume_key_problems(session, doc))
    volumes = {v.name for v in session.volumes}
    for s_index, service in enumerate(session.services):
        paths: set[str] = set()
        for v_index, used in enumerate(service.volumes):
            where = ("services", s_index, "volumes", v_index)
            if used.name not in volumes:
                known_volumes = ", ".join(sorted(volumes)) or "none"
                problems.append(
                    doc.problem(
                        (*where, "name"),
                        f"unknown volume '{used.name}'",
                        f"define it under 'volumes:'; known: {known_volumes}",
                    )
                )
            overlapping = [p for p in paths if _overlap(used.path, p)]
            if overlapping:
                problems.append(
                    doc.problem((*where, "path"), f"volume path {used.path} overlaps {overlapping[0]}")
                )
            paths.add(used.path)
        for t_index, scratch in enumerate(service.tmpfs):
            hidden = [p for p in paths if _overlap(scratch, p)]
            if hidden:
                problems.append(
                    doc.problem(
                        ("services", s_index, "tmpfs", t_index),
                        f"tmpfs path {scratch} overlaps the volume path {hidden[0]}",
                        "a tmpfs there would hide the volume, or the volume the tmpfs",
                    )
                )
    for s_index, service in enumerate(session.services):
        problems.extend(_network_problems(s_index, service.network, session, doc))
    problems.extend(_certificate_problems(session, doc))
    known = {s.name: s for s in session.secrets}
    for path, text, must_be_text in _strings_with_text_context(session):
        if malformed_placeholder_at(text) is not None:
            problems.append(
                doc.problem(
                    path, "malformed secret placeholder", "write $$VEIL::name$$ or $$VEIL::name:format$$"
                )
            )
        for ph in find_placeholders(text):
            secret = known.get(ph.name)
            if secret is None:
                hint = f"define it under 'secrets:'; known: {', '.join(sorted(known)) or 'none'}"
                problems.append(doc.problem(path, f"unknown secret '{ph.name}'", hint))
                continue
            if ph.format_for(secret.kind) not in KIND_FORMATS[secret.kind]:
                problems.append(
                    doc.problem(
                        path,
                        f"unknown format '{ph.format}' for secret '{ph.name}'",
                        f"a {secret.kind} secret is written as {', '.join(KIND_FORMATS[secret.kind])}",
                    )
                )
            elif must_be_text and (secret.kind, ph.format_for(secret.kind)) in BINARY_FORMATS:
                problems.append(
                    doc.problem(
                        path,
                        f"{secret.kind} secret '{ph.name}' cannot be placed {ph.format_for(secret.kind)} "
                        "in a command or environment",
                        f"use $$VEIL::{ph.name}:hex$$ or $$VEIL::{ph.name}:base64$$"
                        if secret.kind == "binary"
                        else f"use a text format ({_text_formats(secret.kind)}) or put it in a file",
                    )
                )
    return problems


def session_warnings(session: Session, doc: YamlDocument) -> list[PolicyProblem]:
    """What is valid but probably not meant (``veil session check`` reports it): secrets in
    a command line, which every local user reads in /proc/PID/cmdline, text that looks like
    a placeholder but is not one, secrets nothing uses (warnings), and sim tolerated without
    naming the sim platforms a network CAS may accept (a note)."""
    warnings: list[PolicyProblem] = []
    for s_index, service in enumerate(session.services):
        for a_index, argument in enumerate(service.command):
            names = sorted({p.name for p in find_placeholders(argument)})
            if names:
                warnings.append(
                    doc.problem(
                        ("services", s_index, "command", a_index),
                        f"secret {', '.join(repr(n) for n in names)} is in the command line, which every "
                        "user of the machine can read (/proc/PID/cmdline)",
                        "pass it in environment or an injected file instead (docs/policy.md)",
                    )
                )
    warnings += _near_misses(session, doc) + _unused_secrets(session, doc)
    found = [PolicyProblem(w.source, w.line, w.column, w.message, w.hint, "warning") for w in warnings]
    if session.tolerates_sim and not session.security.sim_platforms:
        note = doc.problem(
            ("security", "tolerate"),
            "sim is tolerated but security.sim_platforms names no platform: a network CAS accepts "
            "sim evidence only from the platforms listed there (the embedded CAS, its own node)",
            "on a network CAS, add sim_platforms: [ID] with ids from `veil cas platform list`",
        )
        found.append(PolicyProblem(note.source, note.line, note.column, note.message, note.hint, "note"))
    return found


#: ``VEIL::name`` with whatever stands around it: dollars, or the digits a shell put where
#: it expanded ``$$`` (its process id) in an unquoted heredoc or string
_NEAR_MISS = re.compile(r"[$\d]*VEIL::[A-Za-z0-9_.\-]*(?::[a-z0-9\-]*)?[$\d]*")


def _near_misses(session: Session, doc: YamlDocument) -> list[PolicyProblem]:
    """Text that was meant as a placeholder and is not one: the program would receive it
    as it is (``$VEIL::db_pass$`` as its password). A ``$$VEIL::`` that does not close is
    an error already (malformed placeholder)."""
    found: list[PolicyProblem] = []
    for path, text, _ in _strings_with_text_context(session):
        placeholders = [(p.start, p.end) for p in find_placeholders(text)]
        for match in _NEAR_MISS.finditer(text):
            start = match.start() + match.group().index("VEIL::")
            if any(begin <= start < end for begin, end in placeholders) or text[:start].endswith("$$"):
                continue
            near = match.group()
            shell = near[: near.index("VEIL::")].lstrip("$").isdigit()
            found.append(
                doc.problem(
                    path,
                    f"'{near}' looks like a secret placeholder but is not one: the program gets it as it is",
                    "a shell replaced $$ with its process id: quote the heredoc (<<'EOF') or the string"
                    if shell
                    else "write $$VEIL::name$$ (two dollars on each side)",
                )
            )
    return found


def _unused_secrets(session: Session, doc: YamlDocument) -> list[PolicyProblem]:
    """Secrets that no placeholder, volume, shield, certificate or export names: a typo in
    the name that uses it, or a leftover."""
    used = {p.name for _, text, _ in _strings_with_text_context(session) for p in find_placeholders(text)}
    used |= {volume.key for volume in session.volumes if volume.key}
    used |= {name for service in session.services for _, name, _ in service.network.secret_uses()}
    used |= {s.issuer for s in session.secrets if s.issuer} | {
        s.private_key for s in session.secrets if s.private_key
    }
    return [
        doc.problem(
            ("secrets", index),
            f"secret '{secret.name}' is used nowhere: no placeholder, volume, shield, certificate or "
            "export names it",
            "use it as $$VEIL::" + secret.name + "$$, or remove it",
        )
        for index, secret in enumerate(session.secrets)
        if secret.name not in used and not secret.export and not secret.export_public
    ]
