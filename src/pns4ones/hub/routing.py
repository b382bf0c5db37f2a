"""
The recipient rule, once for every hub (pure).

A message goes to an (application, information base) and there to

* ``user``: every session of that user;
* ``group``: every session of the group's members (server-side membership,
  :class:`pns4ones.groups.Membership`) and every session registered with the
  group's name (the add-in's group, a ticket's groups), each session once;
* ``all``: every session.

The member side walks the smaller of (members, users online), so a group send
costs what its recipients cost, not what the connections or the group's size
cost.  :class:`~pns4ones.hub.local.LocalHub` applies the rule to its sessions,
:class:`~pns4ones.hub.redis.RedisHub` to the other nodes' presence, and
:func:`reaches` to one session (the recovery replay).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from typing import TypeVar

from ..messages import Recipient
from .interface import MembersOf, SessionInfo

V = TypeVar("V")


def members_online(members: Collection[str], online: Mapping[str, V]) -> Iterator[tuple[str, V]]:
    """The ``(user, what online holds for them)`` of every member in ``online``, walking the smaller side."""
    if len(members) <= len(online):
        for user_id in members:
            value = online.get(user_id)
            if value:
                yield user_id, value
    else:
        for user_id, value in online.items():
            if value and user_id in members:
                yield user_id, value


def reaches(app_id: str, recipient: Recipient, session: SessionInfo, members: MembersOf | None) -> bool:
    """Whether a message to ``recipient`` in ``app_id`` goes to ``session`` (same rule as the routing)."""
    if session.app_id != app_id or session.ib_id != recipient.ib_id:
        return False
    if recipient.type == "user":
        return recipient.user_id == session.user_id
    if recipient.type == "group":
        if recipient.group in session.groups:
            return True
        return members is not None and session.user_id in members(app_id, recipient.ib_id, recipient.group)
    return True
