"""Session namespaces: who may create a session of a given name (docs/policy.md, "Namespaces").

A name is a path (``acme/payments/api``). Creating it needs the right to update its nearest
existing ancestor session. Without one, the top-level namespace (``acme``) belongs to the
sessions already in it: the creator must be allowed to update every one of them. And a
session is never created over existing descendants the creator may not update. So nobody
creates ``alice`` over Alice's ``alice/demo``, nor ``alice/other`` beside it.
"""

from collections.abc import Callable

from veil.cas.errors import AccessDenied
from veil.cas.sharing import Lookup, SessionRecord
from veil.crypto import constant_time_equal


def may(owners: list[str], caller: str, creator: str) -> bool:
    """Does an access-policy list (``read`` or ``update``) admit ``caller``?"""
    if "ANY" in owners:
        return True
    if "CREATOR" in owners and constant_time_equal(caller, creator):
        return True
    return any(o not in ("CREATOR", "NONE") and constant_time_equal(o, caller) for o in owners)


def may_update(record: SessionRecord, caller: str) -> bool:
    return may(record.session.access_policy.update, caller, record.creator)


def check_namespace(name: str, caller: str, lookup: Lookup, names_under: Callable[[str], list[str]]) -> None:
    """Raise AccessDenied unless ``caller`` may create session ``name``; ``names_under(p)``
    lists the stored session names that start with ``p``."""
    parts = name.split("/")
    ancestor = None
    for end in range(len(parts) - 1, 0, -1):
        ancestor = lookup("/".join(parts[:end]))
        if ancestor is not None:
            break
    if ancestor is not None and not may_update(ancestor, caller):
        raise AccessDenied(
            f"session '{name}' is in the namespace of session '{ancestor.name}'; creating it needs "
            f"the right to update '{ancestor.name}'"
        )
    below = [(other, f"session '{other}' exists under '{name}'") for other in names_under(name + "/")]
    beside: list[tuple[str, str]] = []
    if ancestor is None:
        top = parts[0]
        beside = [
            (other, f"namespace '{top}' holds session '{other}'")
            for other in names_under(top)
            if (other == top or other.startswith(top + "/")) and not other.startswith(name + "/")
        ]
    for other, where in below + beside:
        record = lookup(other)
        if record is not None and not may_update(record, caller):
            raise AccessDenied(
                f"{where}, which you may not update: creating '{name}' needs that right (its owner "
                f"can claim '{parts[0]}' with a session of that name listing you under access_policy.update)"
            )


__all__ = ["check_namespace", "may", "may_update"]
