"""
The delivery trace (pure): this node's last sends and what each reached, in
memory, to answer "user X says the notification never came".

Every message this node takes is recorded: each ``/sendmessage``, each element
of ``/sendmessages`` and each test message from the admin panel, with its time,
the sender's address (as the send log names it, after ``trusted_proxies``), the
application, the recipient, the topic and what it reached (sessions, users,
kept for offline users, older kept messages dropped), under the message id the
send's answer carries (``"id"``, ``X-Pns-Id``).  The admin panel's Trace page,
the admin listener's ``/trace.json`` and ``pns4ones-admin trace`` read it.

Invariants:

* Recording (:meth:`Trace.sent`) builds one tuple and appends it to a bounded
  deque: nothing is formatted, copied or looked up until somebody reads.
* Bounded: at most ``size`` records, the oldest dropped first.  The users a
  send reached are the hub's own set (not copied); those of all records
  together are at most :data:`REACHED_BUDGET`: past it the oldest large sends
  (over :data:`SMALL_REACHED` users) keep their counts only.  Message bodies
  only with ``bodies``, at most :data:`BODY_CHARS` characters each.
* Time is passed in: the trace never reads a clock.
* A record never changes once made, but for a large send's users being
  released (see above).
* Sends refused before the hub (400, 401, 403, 413, 429) or by it (503) are not
  recorded: the sender got the error.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .messages import Recipient, SendRequest, render_addin_json

#: Default number of sends kept (the ``trace_size`` option).
DEFAULT_SIZE = 5000
#: Most characters of a message's add-in JSON kept with ``trace_bodies``.
BODY_CHARS = 2000
#: A send that reached more users than this has its users counted against :data:`REACHED_BUDGET`.
SMALL_REACHED = 64
#: Most user ids the large sends' records hold together (about 30 MB at the worst).
REACHED_BUDGET = 250_000

#: Where a send came from.
SOURCES = ("api", "batch", "panel")

#: Why a send reached no session (``Sent.why_none``), and why it did not reach one user (``Sent.outcome_for``).
REASONS = {
    "user-offline": "the user had no session connected (on any node)",
    "group-offline": "no session of the group's members, nor one registered with the group, was connected",
    "ib-empty": "nobody was connected to this information base",
    "reached": "reached",
    "offline": "not connected",
    "not-member": "not a member of the group (now), nor registered with it",
    "unknown": "not known: the trace no longer holds the users of this large send",
}


class Delivered(Protocol):
    """What the trace reads of a send's outcome (:class:`pns4ones.hub.Delivery`)."""

    @property
    def sessions(self) -> int: ...
    @property
    def users(self) -> int: ...
    @property
    def stored(self) -> bool: ...
    @property
    def dropped(self) -> int: ...
    @property
    def message_id(self) -> int: ...
    @property
    def reached(self) -> Collection[str]: ...


class _Many:
    """The users a large send reached, until :data:`REACHED_BUDGET` pushes them out (then None)."""

    __slots__ = ("users",)

    def __init__(self, users: Collection[str]) -> None:
        self.users: Collection[str] | None = users


# The record: a plain tuple, cheapest to build (fields in this order).
_Record = tuple[
    int,  # seq: 1, 2, ... in this process
    float,  # at
    str,  # source
    str,  # peer
    str,  # app_id
    Recipient,
    str,  # topic
    float,  # ttl
    int,  # message_id
    int,  # sessions
    int,  # users
    bool,  # stored
    int,  # dropped
    Collection[str] | _Many,  # reached
    str | None,  # body
]


@dataclass(frozen=True, slots=True)
class Sent:
    """One recorded send, as readers see it."""

    #: This node's number of the record (1, 2, ... since the start): the detail page's address.
    seq: int
    at: float
    #: ``api`` (``/sendmessage``), ``batch`` (an element of ``/sendmessages``) or ``panel`` (a test message).
    source: str
    #: The sender's address (the browser's for a test message).
    peer: str
    app_id: str
    recipient: Recipient
    topic: str
    #: The TTL asked for (0: not kept).
    ttl: float
    #: The hub's id of the message: the ``id`` of the send's answer.
    message_id: int
    sessions: int
    users: int
    stored: bool
    dropped: int
    #: The users reached (a set; not to be changed), or None when no longer held (a large send, see the module).
    reached: Collection[str] | None
    #: The add-in JSON (shortened), with ``trace_bodies`` only.
    body: str | None

    @property
    def expires_at(self) -> float | None:
        """When the kept copy expires (None: not kept)."""
        return self.at + self.ttl if self.stored else None

    def why_none(self) -> str:
        """Why it reached no session (a key of :data:`REASONS`), or "" when it reached some."""
        if self.sessions:
            return ""
        kind = self.recipient.type
        return "user-offline" if kind == "user" else "group-offline" if kind == "group" else "ib-empty"

    def outcome_for(self, user_id: str, groups: Collection[str]) -> str:
        """
        What this send did for one user (a key of :data:`REASONS`): ``reached``,
        ``offline``, ``not-member`` (a group send: not a member now, by
        ``groups``, the user's groups now) or ``unknown``.
        """
        if self.reached is not None and user_id in self.reached:
            return "reached"
        if self.reached is None and self.sessions:
            return "unknown"
        if self.recipient.type == "group" and self.recipient.group not in groups:
            return "not-member"
        return "offline"

    def kept_for(self, user_id: str, groups: Collection[str]) -> bool:
        """Whether ``user_id``, not reached, was to get the kept copy on connecting (before :attr:`expires_at`)."""
        return self.stored and self.outcome_for(user_id, groups) == "offline"


@dataclass(frozen=True, slots=True)
class Query:
    """A reader's filter; empty fields match everything."""

    app_id: str = ""
    ib: str = ""
    #: The sends that concern this user: to him, to his groups, to everyone of his information base.
    user: str = ""
    message_id: int = 0


#: The groups of a user now: (application, information base, user) -> group names.
GroupsOf = Callable[[str, str, str], Collection[str]]


def _no_groups(app_id: str, ib_id: str, user_id: str) -> Collection[str]:
    return ()


class Trace:
    """The last ``size`` sends of this node (0: off, nothing recorded)."""

    __slots__ = ("_many", "_many_total", "_records", "bodies", "budget", "recorded", "size")

    def __init__(self, size: int = DEFAULT_SIZE, bodies: bool = False, budget: int = REACHED_BUDGET) -> None:
        self.size = max(0, size)
        self.bodies = bodies
        self.budget = budget
        #: Sends recorded since the start (the last record's ``seq``).
        self.recorded = 0
        self._records: deque[_Record] = deque(maxlen=self.size)
        self._many: deque[_Many] = deque()
        self._many_total = 0

    def __len__(self) -> int:
        return len(self._records)

    # -- the hot path -----------------------------------------------------------------------

    def sent(self, now: float, source: str, peer: str, app_id: str, send: SendRequest, ttl: float, delivery: Delivered) -> None:
        """Record a send that the hub took (see the module's invariants: one tuple, one append)."""
        if not self.size:
            return
        users = delivery.reached
        reached = self._hold(users) if len(users) > SMALL_REACHED else users
        body = self._body(send) if self.bodies else None
        self.recorded = seq = self.recorded + 1
        self._records.append(
            (
                seq,
                now,
                source,
                peer,
                app_id,
                send.recipient,
                send.message.topic,
                ttl,
                delivery.message_id,
                delivery.sessions,
                delivery.users,
                delivery.stored,
                delivery.dropped,
                reached,
                body,
            )
        )

    def _hold(self, users: Collection[str]) -> _Many:
        """A large send's users, counted against the budget; the oldest large ones are released past it."""
        many = _Many(users)
        if len(users) > self.budget:
            many.users = None
            return many
        self._many.append(many)
        self._many_total += len(users)
        while self._many_total > self.budget:
            old = self._many.popleft()
            if old.users is not None:
                self._many_total -= len(old.users)
                old.users = None
        return many

    @staticmethod
    def _body(send: SendRequest) -> str:
        text = render_addin_json(send.message).decode("utf-8", "replace")
        return text if len(text) <= BODY_CHARS else text[: BODY_CHARS - 1] + "…"

    # -- readers ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Sent]:
        """Every record, newest first."""
        for record in reversed(self._records):
            yield _sent(record)

    def find(self, seq: int) -> Sent | None:
        """The record numbered ``seq``, if still held (the numbers held are consecutive)."""
        records = self._records
        index = seq - records[0][0] if records else -1
        return _sent(records[index]) if 0 <= index < len(records) else None

    def select(self, query: Query, groups_of: GroupsOf = _no_groups) -> Iterator[Sent]:
        """The records ``query`` matches, newest first (``groups_of``: a user's groups now, for ``query.user``)."""
        for record in reversed(self._records):
            if _matches(record, query, groups_of):
                yield _sent(record)

    def page(self, query: Query, groups_of: GroupsOf, offset: int, limit: int) -> tuple[int, list[Sent]]:
        """How many records ``query`` matches, and those from ``offset`` (newest first), at most ``limit``: only those are built."""
        matched = 0
        out = []
        for record in reversed(self._records):
            if _matches(record, query, groups_of):
                if offset <= matched < offset + limit:
                    out.append(_sent(record))
                matched += 1
        return matched, out


def _sent(record: _Record) -> Sent:
    reached = record[13]
    users = reached.users if isinstance(reached, _Many) else reached
    return Sent(*record[:13], users, record[14])


def _matches(record: _Record, query: Query, groups_of: GroupsOf) -> bool:
    """
    Whether ``query`` selects a record (read on the tuple: a million are read in
    a second or two).  A user's sends: those to him, those to a group that
    reached him or that he belongs to now (``groups_of``), and those to
    everyone of an information base that reached him, or, when the query names
    the information base, every one of them.
    """
    recipient = record[5]
    if (query.message_id and record[8] != query.message_id) or (query.app_id and record[4] != query.app_id):
        return False
    if query.ib and recipient.ib_id != query.ib:
        return False
    user = query.user
    if not user:
        return True
    if recipient.type == "user":
        return recipient.user_id == user
    reached = record[13]
    users = reached.users if isinstance(reached, _Many) else reached
    if users is not None and user in users:
        return True
    if recipient.type == "group":
        return recipient.group in groups_of(record[4], recipient.ib_id, user)
    return bool(query.ib) or users is None


class _Registered(Protocol):
    """What :class:`UserGroups` reads of a live session (:class:`pns4ones.hub.SessionInfo`)."""

    @property
    def groups(self) -> tuple[str, ...]: ...


class UserGroups:
    """
    A user's groups now, for :func:`matches`: the server-side membership
    (``server_side``) and the groups his live sessions registered with
    (``sessions``: an information base's live sessions by user, read once per
    information base).
    """

    def __init__(
        self,
        server_side: Callable[[str, str, str], Collection[str]],
        sessions: Callable[[str, str], Mapping[str, Sequence[_Registered]]],
    ) -> None:
        self._server_side = server_side
        self._sessions = sessions
        self._online: dict[tuple[str, str], Mapping[str, Sequence[_Registered]]] = {}

    def __call__(self, app_id: str, ib_id: str, user_id: str) -> Collection[str]:
        key = (app_id, ib_id)
        online = self._online.get(key)
        if online is None:
            online = self._online[key] = self._sessions(app_id, ib_id)
        groups = set(self._server_side(app_id, ib_id, user_id))
        for session in online.get(user_id, ()):
            groups.update(session.groups)
        return groups


# -- as JSON, and for people ------------------------------------------------------------------

#: Most user ids listed in one record's JSON (the count is always there).
JSON_USERS = 1000


def as_json(sent: Sent, user: str = "", groups: Collection[str] = ()) -> dict[str, Any]:
    """One record for ``/trace.json`` and ``pns4ones-admin trace --json``; ``user``: add what it did for him."""
    r = sent.recipient
    reached = sorted(sent.reached)[:JSON_USERS] if sent.reached is not None else None
    doc: dict[str, Any] = {
        "seq": sent.seq,
        "id": sent.message_id,
        "at": round(sent.at, 3),
        "source": sent.source,
        "peer": sent.peer,
        "app_id": sent.app_id,
        "type": r.type,
        "ib": r.ib_id,
        "user": r.user_id,
        "group": r.group,
        "topic": sent.topic,
        "ttl": sent.ttl,
        "sessions": sent.sessions,
        "users": sent.users,
        "stored": sent.stored,
        "expires_at": round(sent.expires_at, 3) if sent.expires_at is not None else None,
        "dropped": sent.dropped,
        "reached": reached,
        "why": sent.why_none(),
    }
    if user:
        doc["for_user"] = {"user": user, "outcome": sent.outcome_for(user, groups), "kept": sent.kept_for(user, groups)}
    if sent.body is not None:
        doc["body"] = sent.body
    return doc


def report(trace: Trace, query: Query, groups_of: GroupsOf, limit: int, node: str, titles: Mapping[str, str]) -> dict[str, Any]:
    """The answer of ``/trace.json``: this node's records ``query`` matches, newest first, at most ``limit``."""
    matched, found = trace.page(query, groups_of, 0, limit)
    sends: list[dict[str, Any]] = []
    for sent in found:
        groups = groups_of(sent.app_id, sent.recipient.ib_id, query.user) if query.user else ()
        doc = as_json(sent, query.user, groups)
        doc["app"] = titles.get(sent.app_id)
        sends.append(doc)
    return {
        "node": node,
        "size": trace.size,
        "held": len(trace),
        "recorded": trace.recorded,
        "bodies": trace.bodies,
        "query": {"app_id": query.app_id, "ib": query.ib, "user": query.user, "id": query.message_id},
        "matched": matched,
        "sends": sends,
    }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def render(doc: Mapping[str, Any]) -> str:
    """A ``/trace.json`` answer for people (``pns4ones-admin trace``)."""
    node = doc.get("node", "?")
    if not doc.get("size"):
        return f"node {node}: the delivery trace is off (trace_size = 0)\n"
    lines = []
    for s in doc.get("sends", []):
        kind = s.get("type")
        target = f"user {s.get('user')}" if kind == "user" else f"group {s.get('group')}" if kind == "group" else "everyone"
        app = s.get("app") or s.get("app_id")
        lines.append(
            f"{_when(s.get('at', 0.0))}  id {s.get('id')}  {s.get('source')} from {s.get('peer')}  {app}: "
            f"{target} in {s.get('ib')}  topic {json.dumps(s.get('topic', ''), ensure_ascii=False)}"
        )
        reached = f"    reached {_plural(s.get('sessions', 0), 'session')}, {_plural(s.get('users', 0), 'user')}"
        if s.get("why"):
            reached += f": {REASONS.get(s['why'], s['why'])}"
        if s.get("stored"):
            reached += f"; kept for offline users until {_when(s.get('expires_at') or 0.0)}"
        if s.get("dropped"):
            reached += f"; {_plural(s['dropped'], 'older kept message')} dropped"
        lines.append(reached)
        mine = s.get("for_user")
        if mine:
            outcome = REASONS.get(mine.get("outcome", ""), mine.get("outcome", ""))
            lines.append(
                f"    for {mine.get('user')}: {outcome}" + ("; he gets the kept copy when he connects" if mine.get("kept") else "")
            )
        if "body" in s:
            lines.append(f"    body: {s['body']}")
    shown, matched = len(doc.get("sends", [])), doc.get("matched", 0)
    head = (
        f"node {node}: {shown} of {matched} matching sends, newest first "
        f"(this node holds its last {doc.get('held', 0)} of {doc.get('recorded', 0)} sends, trace_size {doc.get('size')}; "
        "every node keeps its own trace)"
    )
    if not lines:
        return head.replace(f"{shown} of {matched} matching sends, newest first", "no matching send") + "\n"
    tail = [f"({shown} of {matched}; --limit N for more)"] if shown < matched else []
    return "\n".join([head, *lines, *tail]) + "\n"
