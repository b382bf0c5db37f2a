"""
Server-side group membership and the group and TTL input of the API, without I/O.

The stock add-in always registers with an empty group (docs/protocol.md section 4),
so groups live on the server: per application and information base, a group
name maps to a set of user ids.  :class:`Membership` is the in-memory copy the
hub routes with (a group send never touches the store); the store holds the
durable copy.

Invariants:

* ``_members[(app, ib)][group]`` is never an empty set (an emptied group is gone).
* ``_groups_of[(app, ib, user)]`` is the exact reverse of ``_members``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .messages import MAX_FIELD, lone_surrogate


class GroupError(ValueError):
    """Bad group input: ``status`` is 400 (malformed) or 413 (over a bound)."""

    def __init__(self, status: int, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.status = status
        self.field = field
        self.reason = reason


class Membership:
    """Group name -> user ids, per (application, information base)."""

    def __init__(self) -> None:
        self._members: dict[tuple[str, str], dict[str, set[str]]] = {}
        self._groups_of: dict[tuple[str, str, str], set[str]] = {}

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, str, str, str]]) -> Membership:
        """From ``(app_id, ib_id, group, user_id)`` rows."""
        out = cls()
        for app_id, ib_id, group, user_id in rows:
            out._add(app_id, ib_id, group, user_id)
        return out

    def load(self, rows: Iterable[tuple[str, str, str, str]]) -> None:
        """Replace everything with the store's rows (on a change made by the admin CLI)."""
        fresh = Membership.from_rows(rows)
        self._members, self._groups_of = fresh._members, fresh._groups_of

    def _add(self, app_id: str, ib_id: str, group: str, user_id: str) -> bool:
        members = self._members.setdefault((app_id, ib_id), {}).setdefault(group, set())
        if user_id in members:
            return False
        members.add(user_id)
        self._groups_of.setdefault((app_id, ib_id, user_id), set()).add(group)
        return True

    def _remove(self, app_id: str, ib_id: str, group: str, user_id: str) -> bool:
        groups = self._members.get((app_id, ib_id))
        if groups is None:
            return False
        members = groups.get(group)
        if not members or user_id not in members:
            return False
        members.discard(user_id)
        if not members:
            del groups[group]
            if not groups:
                del self._members[(app_id, ib_id)]
        of = self._groups_of[(app_id, ib_id, user_id)]
        of.discard(group)
        if not of:
            del self._groups_of[(app_id, ib_id, user_id)]
        return True

    # -- queries -----------------------------------------------------------------------

    def members(self, app_id: str, ib_id: str, group: str) -> set[str] | frozenset[str]:
        groups = self._members.get((app_id, ib_id))
        return groups.get(group, frozenset()) if groups else frozenset()

    def groups(self, app_id: str, ib_id: str) -> dict[str, int]:
        """Group name -> number of members."""
        return {g: len(m) for g, m in self._members.get((app_id, ib_id), {}).items()}

    def groups_of(self, app_id: str, ib_id: str, user_id: str) -> set[str] | frozenset[str]:
        return self._groups_of.get((app_id, ib_id, user_id), frozenset())

    def group_count(self, app_id: str) -> int:
        return sum(len(g) for (app, _), g in self._members.items() if app == app_id)

    # -- changes (the store has been written already) ------------------------------------

    def replace(self, app_id: str, ib_id: str, group: str, user_ids: Iterable[str]) -> None:
        for user_id in list(self.members(app_id, ib_id, group)):
            self._remove(app_id, ib_id, group, user_id)
        for user_id in user_ids:
            self._add(app_id, ib_id, group, user_id)

    def add(self, app_id: str, ib_id: str, group: str, user_ids: Iterable[str]) -> int:
        return sum(self._add(app_id, ib_id, group, u) for u in user_ids)

    def remove(self, app_id: str, ib_id: str, group: str, user_id: str) -> bool:
        return self._remove(app_id, ib_id, group, user_id)

    def drop_group(self, app_id: str, ib_id: str, group: str) -> int:
        members = list(self.members(app_id, ib_id, group))
        for user_id in members:
            self._remove(app_id, ib_id, group, user_id)
        return len(members)


# -- validation of API input ------------------------------------------------------------


def check_name(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise GroupError(400, field, "must be a string")
    if not value:
        raise GroupError(400, field, "must not be empty")
    if len(value) > MAX_FIELD:
        raise GroupError(400, field, f"is longer than {MAX_FIELD} characters")
    if lone_surrogate(value):
        raise GroupError(400, field, "is not Unicode text (it holds a lone surrogate)")
    return value


def parse_user_ids(doc: object, max_size: int) -> list[str]:
    """``{"UserIds": [...]}`` (member name case-insensitive) -> distinct ids in order."""
    if not isinstance(doc, dict):
        raise GroupError(400, "body", 'must be a JSON object {"UserIds": [...]}')
    lowered = {str(k).lower(): v for k, v in doc.items()}
    if "userids" not in lowered:
        raise GroupError(400, "UserIds", "is required")
    users = lowered["userids"]
    if not isinstance(users, list):
        raise GroupError(400, "UserIds", "must be a JSON array of strings")
    if len(users) > max_size:
        raise GroupError(413, "UserIds", f"has {len(users)} entries; a group holds at most {max_size} (max_group_size)")
    out: dict[str, None] = {}
    for i, user in enumerate(users):
        out[check_name(user, f"UserIds[{i}]")] = None
    return list(out)


def parse_ttl(value: object, max_ttl: float, field: str = "Message.TTL") -> float:
    """A TTL in seconds: a finite number, 0 <= ttl <= max_ttl (0 = do not keep)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise GroupError(400, field, "must be a number of seconds") from None
    # An int is finite however large (math.isfinite would overflow on one past 1e308).
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
        raise GroupError(400, field, "must be a number of seconds")
    if value < 0:
        raise GroupError(400, field, "must not be negative")
    if value > max_ttl:
        raise GroupError(400, field, f"is over the server's max_ttl of {max_ttl:g} seconds")
    return float(value)
