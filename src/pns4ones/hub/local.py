"""
The in-process hub: routing indexes in dictionaries, fan-out in one loop.

Invariants:

* ``_ibs[(app, ib)]`` exists only while it has a session; ``users`` and
  ``groups`` never hold an empty set; ``_count`` is the number of sessions.
* A message is routed to each of its sessions once, with the same
  :class:`~pns4ones.hub.outbound.Outbound` (render once, encrypt once per key).
* Every message published here gets an id and a place in the recovery window,
  delivered or not (:mod:`.recovery`); :meth:`LocalHub.route` alone (used by a
  hub between nodes, which keeps the window in Redis) leaves both alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred, succeed

from ..messages import Recipient
from ..metrics import NULL
from .interface import Clock, Delivery, MembersOf, Replay, Session, SessionInfo
from .outbound import Outbound
from .recovery import Recovery
from .routing import members_online, reaches

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric


class _IbIndex:
    """Sessions of one (application, information base)."""

    __slots__ = ("all", "groups", "users")

    def __init__(self) -> None:
        self.all: set[Session] = set()
        self.users: dict[str, set[Session]] = {}
        self.groups: dict[str, set[Session]] = {}


def _discard(index: dict[str, set[Session]], key: str, session: Session) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.discard(session)
        if not bucket:
            del index[key]


class LocalHub:
    """:class:`pns4ones.hub.Hub` for one process."""

    __slots__ = ("_apps", "_count", "_ibs", "_members", "_now", "on_routed", "recovery")

    def __init__(
        self,
        members: MembersOf | None = None,
        clock: Clock | None = None,
        recovery_seconds: float = 120.0,
        recovery_messages: int = 1000,
    ) -> None:
        #: Metrics hook, once per routed message: (application, sessions written, frame bytes).
        self.on_routed: Callable[[str, int, int], None] = NULL.routed
        #: Server-side group membership: (app_id, ib_id, group) -> user ids.
        self._members = members
        self._ibs: dict[tuple[str, str], _IbIndex] = {}
        self._apps: dict[str, set[str]] = {}
        self._count = 0
        self._now = clock.seconds if clock is not None else time.time
        self.recovery = Recovery(int(time.time() * 1000) * 1000, recovery_seconds, recovery_messages)

    # -- life: nothing to connect ----------------------------------------------------------

    def start(self) -> None:
        pass

    def close(self) -> Deferred[None]:
        return succeed(None)

    def status(self) -> tuple[bool, str]:
        return True, "ready"

    def metric_families(self) -> Iterable[Metric]:
        return ()

    def __len__(self) -> int:
        return self._count

    # -- sessions -------------------------------------------------------------------------

    def attach(self, session: Session) -> None:
        key = (session.app_id, session.ib_id)
        ib = self._ibs.get(key)
        if ib is None:
            ib = self._ibs[key] = _IbIndex()
            self._apps.setdefault(session.app_id, set()).add(session.ib_id)
        if session in ib.all:
            return
        ib.all.add(session)
        ib.users.setdefault(session.user_id, set()).add(session)
        for group in session.groups:
            ib.groups.setdefault(group, set()).add(session)
        self._count += 1

    def detach(self, session: Session) -> None:
        key = (session.app_id, session.ib_id)
        ib = self._ibs.get(key)
        if ib is None or session not in ib.all:
            return
        ib.all.discard(session)
        _discard(ib.users, session.user_id, session)
        for group in session.groups:
            _discard(ib.groups, group, session)
        self._count -= 1
        if not ib.all:
            del self._ibs[key]
            ibs = self._apps[session.app_id]
            ibs.discard(session.ib_id)
            if not ibs:
                del self._apps[session.app_id]

    def recipients(self, app_id: str, recipient: Recipient) -> Collection[Session]:
        """This node's sessions a message to ``recipient`` goes to (:mod:`.routing`)."""
        ib = self._ibs.get((app_id, recipient.ib_id))
        if ib is None:
            return ()
        if recipient.type == "user":
            return ib.users.get(recipient.user_id, ())
        if recipient.type == "group":
            registered = ib.groups.get(recipient.group, ())
            members = self._members(app_id, recipient.ib_id, recipient.group) if self._members is not None else ()
            if not members:
                return registered
            out = set(registered)
            for _, sessions in members_online(members, ib.users):
                out.update(sessions)
            return out
        return ib.all

    # -- messages -------------------------------------------------------------------------

    def route(self, app_id: str, recipient: Recipient, message: Outbound) -> Delivery:
        """Write ``message`` (its id given already) to every matching session of this node; the same bytes for all."""
        if recipient.type == "user":  # (the usual send) every target is that user's: no set of users to build
            ib = self._ibs.get((app_id, recipient.ib_id))  # (recipients(), inline)
            sessions = ib.users.get(recipient.user_id) if ib is not None else None
            if not sessions:
                return Delivery(0, 0, False, 0, message.id)
            written = 0
            for session in tuple(sessions):  # (a copy: see below)
                if session.deliver(message):
                    written += 1
            self.on_routed(app_id, written, message.frame_size)
            if not written:
                return Delivery(0, 0, False, 0, message.id)
            return Delivery(written, 1, False, 0, message.id, (recipient.user_id,))
        targets = self.recipients(app_id, recipient)
        if not targets:
            return Delivery(0, 0, False, 0, message.id)
        written = 0
        users = set()
        # A copy: a delivery may end a session (slow reader), which detaches it.
        for session in tuple(targets):
            if session.deliver(message):
                written += 1
                users.add(session.user_id)
        self.on_routed(app_id, written, message.frame_size)
        return Delivery(written, len(users), False, 0, message.id, users)

    def publish(self, app_id: str, recipient: Recipient, message: Outbound) -> Delivery:
        """Routed at once: the Delivery itself, no Deferred."""
        # Every message gets an id and a place in the recovery window, delivered or not.
        self.recovery.record(app_id, recipient, message, self._now())
        return self.route(app_id, recipient, message)

    @property
    def last_id(self) -> int:
        """The id of the latest published message."""
        return self.recovery.last_id

    def replay(self, session: Session, since: int | None) -> Deferred[Replay]:
        """From the recovery window; fires at once: the caller attaches in the same turn."""
        if since is None:
            return succeed(Replay(None, (), self.recovery.last_id))
        app_id = session.app_id
        missed, items = self.recovery.replay(
            app_id, session.ib_id, since, self._now(), lambda recipient: reaches(app_id, recipient, session, self._members)
        )
        return succeed(Replay(missed, list(items), self.recovery.last_id))

    def sessions(self, app_id: str | None = None) -> Iterator[Session]:
        apps = [app_id] if app_id is not None else list(self._apps)
        for app in apps:
            for ib_id in list(self._apps.get(app, ())):
                ib = self._ibs.get((app, ib_id))
                if ib is not None:
                    yield from list(ib.all)

    def remote_sessions(self, app_id: str, ib_id: str) -> dict[str, list[SessionInfo]]:
        return {}

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (app, ib_id), ib in self._ibs.items():
            out.setdefault(app, {})[ib_id] = len(ib.all)
        return out
