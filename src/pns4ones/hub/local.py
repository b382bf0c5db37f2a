"""The in-process hub: routing indexes in dictionaries, fan-out in one loop."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import Deferred, succeed

from ..messages import Message, Recipient
from ..metrics import NULL
from . import Outbound, Report, Session
from .recovery import Recovery


class _IbIndex:
    """Sessions of one (application, information base)."""

    __slots__ = ("all", "groups", "users")

    def __init__(self) -> None:
        self.all: set[Session] = set()
        self.users: dict[str, set[Session]] = {}
        self.groups: dict[str, set[Session]] = {}


def _groups(session: Session) -> Any:
    groups = getattr(session, "groups", None)
    if groups:
        return groups
    return (session.group,) if session.group else ()


def _discard(index: dict[str, set[Session]], key: str, session: Session) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.discard(session)
        if not bucket:
            del index[key]


class LocalHub:
    """:class:`pns4ones.hub.Hub` for one process."""

    #: Metrics hook, once per routed message: (application, sessions written, frame bytes).
    on_routed = staticmethod(NULL.routed)

    def __init__(
        self,
        members: Callable[[str, str, str], set[str] | frozenset[str]] | None = None,
        clock: Any = None,
        recovery_seconds: float = 120.0,
        recovery_messages: int = 1000,
    ) -> None:
        #: Server-side group membership: (app_id, ib_id, group) -> user ids.
        self._members = members
        self._ibs: dict[tuple[str, str], _IbIndex] = {}
        self._apps: dict[str, set[str]] = {}
        self._count = 0
        self._now = clock.seconds if clock is not None else time.time
        self.recovery = Recovery(int(time.time() * 1000) * 1000, recovery_seconds, recovery_messages)

    def __len__(self) -> int:
        return self._count

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
        for group in _groups(session):
            ib.groups.setdefault(group, set()).add(session)
        self._count += 1

    def detach(self, session: Session) -> None:
        key = (session.app_id, session.ib_id)
        ib = self._ibs.get(key)
        if ib is None or session not in ib.all:
            return
        ib.all.discard(session)
        _discard(ib.users, session.user_id, session)
        for group in _groups(session):
            _discard(ib.groups, group, session)
        self._count -= 1
        if not ib.all:
            del self._ibs[key]
            ibs = self._apps[session.app_id]
            ibs.discard(session.ib_id)
            if not ibs:
                del self._apps[session.app_id]

    def recipients(self, app_id: str, recipient: Recipient) -> set[Session] | tuple[()]:
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
            # Members with live sessions, plus sessions registered with the group name;
            # a set, so each session once.  Walk the smaller side: the cost follows the
            # recipients, not the connections.
            out = set(registered)
            users = ib.users
            if len(members) <= len(users):
                for user_id in members:
                    sessions = users.get(user_id)
                    if sessions:
                        out.update(sessions)
            else:
                for user_id, sessions in users.items():
                    if user_id in members:
                        out.update(sessions)
            return out
        return ib.all

    def route(self, app_id: str, recipient: Recipient, message: Message, message_id: int | None = None) -> Report:
        """
        Write ``message`` to every matching local session; the same bytes for all.
        ``message_id``: the id a hub between nodes gave it (its recovery window
        is kept there, not here).
        """
        targets = self.recipients(app_id, recipient)
        # Every message gets an id and a place in the recovery window, delivered or not.
        if not targets:
            if message_id is None:
                self.recovery.record(app_id, recipient, message, None, self._now())
            return Report(0, 0)
        outbound = Outbound(message)
        if message_id is None:
            outbound.id = self.recovery.record(app_id, recipient, message, outbound, self._now())
        else:
            outbound.id = message_id
        written = 0
        users = set()
        # A copy: a delivery may end a session (slow reader), which detaches it.
        for session in tuple(targets):
            if session.deliver(outbound):
                written += 1
                users.add(session.user_id)
        self.on_routed(app_id, written, len(outbound._frame))
        return Report(written, len(users), users)

    def publish(self, app_id: str, recipient: Recipient, message: Message) -> Deferred[Report]:
        return succeed(self.route(app_id, recipient, message))

    @property
    def last_id(self) -> int:
        """The id of the latest routed message."""
        return self.recovery.last_id

    def replay(self, session: Session, since: int | None) -> Deferred[tuple[int | None, list[Outbound], int]]:
        """
        What ``session`` should receive first when it resumes after message ``since``
        (None: a new subscription): (the window's floor when it may have missed
        messages (``since`` older than the window) else None, the messages, the id
        to resume from).  Fires at once: the caller attaches in the same turn.
        """
        if since is None:
            return succeed((None, [], self.recovery.last_id))
        missed, items = self.recovery.replay(session.app_id, session, since, self._now())
        backlog = [outbound if outbound is not None else Outbound(message, message_id) for message_id, message, outbound in items]
        return succeed((missed, backlog, self.recovery.last_id))

    def sessions(self, app_id: str | None = None) -> Iterator[Session]:
        apps = [app_id] if app_id is not None else list(self._apps)
        for app in apps:
            for ib_id in list(self._apps.get(app, ())):
                ib = self._ibs.get((app, ib_id))
                if ib is not None:
                    yield from list(ib.all)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (app, ib_id), ib in self._ibs.items():
            out.setdefault(app, {})[ib_id] = len(ib.all)
        return out
