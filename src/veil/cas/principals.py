"""Who may use a network CAS: principals (owner ids) with roles, and the bootstrap token.

The CAS starts closed (docs/cas-api.md, "Who may call what"): an owner id is admitted by
an administrator, by ``veil cas serve --admin``, by redeeming the one-time bootstrap token,
or, only where the operator allowed it with ``--open-enrolment``, by enrolling itself.
Every change is audited in the transaction that makes it.
"""

import hashlib
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from veil.cas.audit import AuditLog
from veil.cas.errors import AccessDenied, CasError, Conflict, NotFound
from veil.cas.sealing import SealedRecords
from veil.crypto import constant_time_equal

_PRINCIPAL = "principal"
_TOKEN = ("bootstrap-token", "token")
TOKEN_PREFIX = "veil-bootstrap-"
_OWNER_ID = re.compile(r"[0-9a-f]{64}")


class Role(StrEnum):
    """``admin`` manages the CAS (principals, platforms) and may do what the others may;
    ``owner`` creates and manages sessions; ``auditor`` reads the whole audit log."""

    ADMIN = "admin"
    OWNER = "owner"
    AUDITOR = "auditor"


ROLES = tuple(r.value for r in Role)


class PrincipalRefused(AccessDenied):
    """An owner id is not admitted, lacks a role, or a bootstrap token does not redeem."""


def check_owner_id(value: str) -> str:
    if not _OWNER_ID.fullmatch(value):
        raise CasError(f"'{value[:80]}' is not an owner id (64 lower-case hex digits, `veil owner id`)")
    return value


def check_roles(values: Iterable[str]) -> frozenset[Role]:
    roles = set()
    for value in values:
        if value not in ROLES:
            raise CasError(f"unknown role '{str(value)[:40]}' (roles: {', '.join(ROLES)})")
        roles.add(Role(value))
    return frozenset(roles)


@dataclass(frozen=True)
class Principal:
    owner: str
    roles: frozenset[Role]
    by: str
    time: int

    def has(self, role: Role) -> bool:
        """Administrators have every role."""
        return role in self.roles or Role.ADMIN in self.roles

    def to_json(self) -> dict[str, object]:
        return {"owner": self.owner, "roles": sorted(self.roles), "by": self.by, "time": self.time}


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Principals:
    """The principals of one CAS, kept as sealed records (kind ``principal``)."""

    def __init__(self, records: SealedRecords, audit: AuditLog, sim: bool) -> None:
        self._records = records
        self._audit = audit
        self._sim = sim

    def get(self, owner: str) -> Principal | None:
        found = self._records.get(_PRINCIPAL, owner)
        if found is None:
            return None
        raw = found[1]
        return Principal(owner, check_roles(raw["roles"]), str(raw["by"]), int(raw["time"]))

    def all(self) -> list[Principal]:
        found = (self.get(owner) for owner in self._records.keys(_PRINCIPAL))
        return [p for p in found if p is not None]

    def administrators(self) -> list[str]:
        return [p.owner for p in self.all() if Role.ADMIN in p.roles]

    def require(self, owner: str, role: Role) -> Principal:
        """The principal ``owner`` if it has ``role``; PrincipalRefused saying how to get it."""
        principal = self.get(owner)
        if principal is None:
            raise PrincipalRefused(
                f"owner {owner} is not admitted on this CAS; an administrator admits it with "
                f"`veil cas owner add {owner}`"
            )
        if not principal.has(role):
            have = ", ".join(sorted(principal.roles)) or "none"
            raise PrincipalRefused(
                f"this needs the role '{role}' (owner {owner[:16]}… has: {have}); an administrator "
                f"grants it with `veil cas owner add {owner} --role {role}`"
            )
        return principal

    def set_roles(self, owner: str, roles: Iterable[str], by: str) -> Principal:
        """Give ``owner`` exactly ``roles`` (admitting it if new); audited. Taking the role
        ``admin`` from the last administrator is refused (the CAS would be unmanageable)."""
        check_owner_id(owner)
        wanted = check_roles(roles)
        if not wanted:
            raise CasError("give at least one role; to remove an owner use `veil cas owner remove`")
        now = int(time.time())
        with self._records.store.transaction():
            found = self._records.get(_PRINCIPAL, owner)
            before = check_roles(found[1]["roles"]) if found else frozenset()
            if Role.ADMIN in before and Role.ADMIN not in wanted:
                self._keep_an_administrator(owner)
            value = {"roles": sorted(wanted), "by": by, "time": now}
            self._records.put(_PRINCIPAL, owner, value, found[0] if found else None)
            self._audit.append(
                "principal.set",
                self._sim,
                principal=owner,
                roles=sorted(wanted),
                previous=sorted(before),
                owner=by,
            )
        return Principal(owner, wanted, by, now)

    def remove(self, owner: str, by: str) -> None:
        """Remove ``owner`` and every role it had; audited. Its certificate stays valid
        for TLS but grants nothing: every request checks the principal again."""
        check_owner_id(owner)
        with self._records.store.transaction():
            found = self._records.get(_PRINCIPAL, owner)
            if found is None:
                raise NotFound(f"owner {owner} is not admitted on this CAS")
            if Role.ADMIN in check_roles(found[1]["roles"]):
                self._keep_an_administrator(owner)
            self._records.delete(_PRINCIPAL, owner)
            self._audit.append(
                "principal.remove", self._sim, principal=owner, roles=sorted(found[1]["roles"]), owner=by
            )

    def _keep_an_administrator(self, leaving: str) -> None:
        if not [a for a in self.administrators() if a != leaving]:
            raise Conflict(
                "this is the last administrator; admit another one first (veil cas owner add ID --role admin)"
            )

    def admit_at_start(self, owners: Iterable[str], role: Role, by: str) -> list[str]:
        """Add ``role`` to each of ``owners`` (``veil cas serve --admin/--auditor``); the ids
        that changed."""
        changed = []
        for owner in owners:
            current = self.get(check_owner_id(owner))
            if current is not None and role in current.roles:
                continue
            self.set_roles(owner, {role, *(current.roles if current else ())}, by)
            changed.append(owner)
        return changed

    # -- the one-time bootstrap token ---------------------------------------------------

    def issue_bootstrap_token(self) -> str | None:
        """A new one-time token that makes its redeemer an administrator, when the CAS has
        no administrator and no unused token; None otherwise. Only its digest is stored."""
        if self.administrators():
            return None
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._records.store.transaction():
            if self._records.get(*_TOKEN) is not None:
                return None
            self._records.put(*_TOKEN, {"digest": _token_digest(token), "time": int(time.time())}, None)
            self._audit.append("principal.token.issue", self._sim)
        return token

    def redeem_bootstrap_token(self, token: str, owner: str) -> Principal:
        """Make ``owner`` an administrator if ``token`` is the unused bootstrap token; the
        token is used up in the same transaction."""
        with self._records.store.transaction():
            found = self._records.get(*_TOKEN)
            if found is None or not constant_time_equal(found[1]["digest"], _token_digest(token)):
                raise PrincipalRefused(
                    "the bootstrap token is not valid (it can be used once; ask an administrator)"
                )
            self._records.delete(*_TOKEN)
            current = self.get(owner)
            principal = self.set_roles(owner, {Role.ADMIN, *(current.roles if current else ())}, "bootstrap")
            self._audit.append("principal.token.redeem", self._sim, principal=owner)
        return principal


__all__ = [
    "ROLES",
    "TOKEN_PREFIX",
    "Principal",
    "PrincipalRefused",
    "Principals",
    "Role",
    "check_owner_id",
    "check_roles",
]
