"""
Presence between nodes, without I/O (time from a clock that is passed in).

Each node keeps a summary of its own sessions, ``field -> sessions``, where a
field is ``["u", app, ib, user]`` or ``["g", app, ib, user, group]`` (JSON),
and tells the others (:class:`OwnPresence`): a full summary, changes with a
sequence number, or a heartbeat.  Every node mirrors the others in memory
(:class:`Mirror`), so reports and ``/presence`` count all nodes without a round
trip per send.  The hub does the I/O: it publishes what :class:`OwnPresence`
produces and reads another node's whole summary (its hash) when the mirror
asks for it.

Invariants of :class:`Mirror`:

* ``_remote[(app, ib)]`` is the sum over the other nodes of their fields, and
  holds no zero and no empty table.
* A member's changes are applied only in sequence (``seq + 1``); a gap, a new
  member or a heartbeat ahead of what we hold makes the mirror ask for a load,
  and what arrives while loading is applied after it, by sequence.
* A member not heard from within ``expiry`` seconds is forgotten.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ...jsondoc import JSONObject
from ...messages import Recipient
from ..interface import Clock, MembersOf, SessionInfo
from ..routing import members_online

#: Publish one presence update: the node's hash (fields, ~seq, expiry), its entry in the node set, the channel.
PRESENCE_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[5] == '1' then redis.call('DEL', KEYS[1]) end
for i = 7, #ARGV, 2 do
  if ARGV[i + 1] == '0' then redis.call('HDEL', KEYS[1], ARGV[i]) else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
redis.call('HSET', KEYS[1], '~seq', ARGV[6])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

#: Leave: the node's hash and entry go, the others hear it at once.
BYE_SCRIPT = """
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""


def user_field(app_id: str, ib_id: str, user_id: str) -> str:
    return json.dumps(["u", app_id, ib_id, user_id], ensure_ascii=False)


def group_field(app_id: str, ib_id: str, user_id: str, group: str) -> str:
    return json.dumps(["g", app_id, ib_id, user_id, group], ensure_ascii=False)


def _bump(table: dict[str, int], key: str, delta: int) -> None:
    value = table.get(key, 0) + delta
    if value > 0:
        table[key] = value
    else:
        table.pop(key, None)


# -- this node ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Update:
    """One presence publication: the document for the channel and the fields for the node's hash."""

    doc: str
    #: field -> sessions (0: remove the field).
    fields: dict[str, int]
    #: Replace the whole hash.
    full: bool
    seq: int


class OwnPresence:
    """This node's summary, what changed since the last publication, and its sequence number."""

    def __init__(self, member: str) -> None:
        self.member = member
        self.summary: dict[str, int] = {}
        self.dirty: set[str] = set()
        self.seq = 0
        #: The next publication carries everything (start, reconnect, a failed update).
        self.need_full = True

    def count(self, session: SessionInfo, delta: int) -> None:
        """A session joined (+1) or left (-1)."""
        app, ib, user = session.app_id, session.ib_id, session.user_id
        fields = [user_field(app, ib, user)]
        fields.extend(group_field(app, ib, user, group) for group in session.groups)
        for field in fields:
            _bump(self.summary, field, delta)
            self.dirty.add(field)

    def update(self, full: bool = False, heartbeat: bool = False) -> Update | None:
        """The next publication, or None when there is nothing to say."""
        full = full or self.need_full
        fields = dict(self.summary) if full else {f: self.summary.get(f, 0) for f in self.dirty}
        if not fields and not full and not heartbeat:
            return None
        self.dirty = set()
        self.need_full = False
        if fields or full:
            self.seq += 1
        doc: JSONObject = {"n": self.member, "s": self.seq}
        if full:
            doc["full"] = 1
        elif fields:
            doc["f"] = [[f, n] for f, n in fields.items()]
        return Update(json.dumps(doc, ensure_ascii=False), fields, full, self.seq)

    def failed(self) -> None:
        """A publication did not reach Redis: the next one is full."""
        self.need_full = True


# -- the other nodes -------------------------------------------------------------------------


class RemoteSession:
    """A session on another node, as presence shows it (counted; its details stay on its node)."""

    __slots__ = ("app_id", "ib_id", "node", "session_id", "user_id")
    transport_name = "remote"
    group = ""
    groups: tuple[str, ...] = ()
    peer = ""
    connected_at = 0.0
    delivered = 0

    def __init__(self, app_id: str, ib_id: str, user_id: str, node: str, number: int) -> None:
        self.app_id = app_id
        self.ib_id = ib_id
        self.user_id = user_id
        self.node: str | None = node
        self.session_id = f"{node}/{user_id}/{number}"


class _RemoteIb:
    """Sessions of one (application, information base) on the other nodes."""

    __slots__ = ("groups", "users")

    def __init__(self) -> None:
        self.users: dict[str, int] = {}
        self.groups: dict[str, dict[str, int]] = {}


class _Member:
    """One other node (one process: NAME/INCARNATION) as last heard."""

    __slots__ = ("fields", "loading", "name", "pending", "seen", "seq")

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.seq = -1
        self.fields: dict[str, int] = {}
        self.seen = now
        self.loading = False
        self.pending: list[JSONObject] = []


class Mirror:
    """The other nodes' presence; the caller loads a member's hash when a method returns its name."""

    def __init__(self, own: str, clock: Clock, expiry: float) -> None:
        self.own = own
        self.clock = clock
        self.expiry = expiry
        self._others: dict[str, _Member] = {}
        self._remote: dict[tuple[str, str], _RemoteIb] = {}

    def __len__(self) -> int:
        return len(self._others)

    def __contains__(self, name: object) -> bool:
        return name in self._others

    # -- input ------------------------------------------------------------------------------

    def received(self, doc: JSONObject) -> list[str]:
        """A presence publication (``n``: member, ``s``: sequence, ``full``, ``f``: changes, ``bye``): the members to load."""
        name = doc["n"]
        if name == self.own:
            return []
        if doc.get("bye"):
            self.forget(name)
            return []
        member = self._others.get(name)
        now = self.clock.seconds()
        if member is None:
            member = self._others[name] = _Member(name, now)
            member.pending.append(doc)
            return self._load(member)
        member.seen = now
        if member.loading:
            member.pending.append(doc)
            return []
        return self._apply(member, doc)

    def known(self, names: Iterable[str]) -> list[str]:
        """The members Redis lists (after a (re)connection): the ones to load."""
        out = []
        for name in names:
            if name == self.own:
                continue
            member = self._others.get(name)
            if member is None:
                member = self._others[name] = _Member(name, self.clock.seconds())
            out.extend(self._load(member))
        return out

    def loaded(self, name: str, values: Mapping[str, str]) -> list[str]:
        """A member's whole hash (``~seq`` and its fields); empty: it is gone.  Returns members to load again."""
        member = self._others.get(name)
        if member is None or not member.loading:
            return []
        member.loading = False
        if not values:
            self.forget(name)
            return []
        values = dict(values)
        seq = int(values.pop("~seq", 0))
        for field in list(member.fields):
            if field not in values:
                self._set_field(member, field, 0)
        for field, n in values.items():
            self._set_field(member, field, int(n))
        member.seq = seq
        pending, member.pending = member.pending, []
        out: list[str] = []
        for doc in pending:
            if int(doc.get("s", 0)) > seq or (doc.get("f") is None and not doc.get("full")):
                out.extend(self._apply(member, doc))
        return out

    def load_failed(self, name: str) -> None:
        member = self._others.get(name)
        if member is not None:
            member.loading = False

    def forget(self, name: str) -> bool:
        """Drop a member and its sessions; False if it was not known."""
        member = self._others.pop(name, None)
        if member is None:
            return False
        for field in list(member.fields):
            self._set_field(member, field, 0)
        return True

    def expire(self) -> list[str]:
        """Forget the members not heard from within the expiry; their names."""
        cutoff = self.clock.seconds() - self.expiry
        gone = [name for name, member in self._others.items() if member.seen < cutoff]
        for name in gone:
            self.forget(name)
        return gone

    def _load(self, member: _Member) -> list[str]:
        if member.loading:
            return []
        member.loading = True
        return [member.name]

    def _apply(self, member: _Member, doc: JSONObject) -> list[str]:
        seq = int(doc.get("s", 0))
        if doc.get("full"):
            if seq > member.seq:
                member.pending.append(doc)
                return self._load(member)
            return []
        changes = doc.get("f")
        if changes is None:  # heartbeat
            return self._load(member) if seq > member.seq else []
        if seq <= member.seq:
            return []
        if seq != member.seq + 1:
            return self._load(member)
        member.seq = seq
        for field, n in changes:
            self._set_field(member, field, int(n))
        return []

    def _set_field(self, member: _Member, field: str, n: int) -> None:
        old = member.fields.get(field, 0)
        if n == old:
            return
        if n:
            member.fields[field] = n
        else:
            member.fields.pop(field, None)
        try:
            parts = json.loads(field)
        except ValueError:
            return
        if not isinstance(parts, list) or len(parts) < 4:
            return
        key = (parts[1], parts[2])
        ib = self._remote.get(key)
        if ib is None:
            ib = self._remote[key] = _RemoteIb()
        if parts[0] == "u":
            _bump(ib.users, parts[3], n - old)
        elif parts[0] == "g" and len(parts) == 5:
            table = ib.groups.setdefault(parts[4], {})
            _bump(table, parts[3], n - old)
            if not table:
                del ib.groups[parts[4]]
        if not ib.users and not ib.groups:
            del self._remote[key]

    # -- output -----------------------------------------------------------------------------

    def reach(self, app_id: str, recipient: Recipient, members: MembersOf | None) -> tuple[int, set[str]]:
        """The other nodes' sessions and users a message to ``recipient`` goes to (:mod:`..routing`)."""
        ib = self._remote.get((app_id, recipient.ib_id))
        if ib is None:
            return 0, set()
        if recipient.type == "user":
            n = ib.users.get(recipient.user_id, 0)
            return n, ({recipient.user_id} if n else set())
        if recipient.type == "group":
            sessions = 0
            users: set[str] = set()
            group_members = members(app_id, recipient.ib_id, recipient.group) if members is not None else ()
            for user_id, n in members_online(group_members, ib.users):
                sessions += n
                users.add(user_id)
            for user_id, n in ib.groups.get(recipient.group, {}).items():
                if user_id not in users:
                    sessions += n
                    users.add(user_id)
            return sessions, users
        return sum(ib.users.values()), set(ib.users)

    def sessions(self, app_id: str, ib_id: str) -> dict[str, list[SessionInfo]]:
        """Sessions of one information base on the other nodes, by user (one entry per session)."""
        out: dict[str, list[SessionInfo]] = {}
        if (app_id, ib_id) not in self._remote:
            return out
        for member in self._others.values():
            node = member.name.rsplit("/", 1)[0]
            for field, n in member.fields.items():
                if not field.startswith('["u"'):
                    continue
                try:
                    _, app, ib, user = json.loads(field)
                except ValueError:
                    continue
                if app == app_id and ib == ib_id:
                    listed = out.setdefault(user, [])
                    listed.extend(RemoteSession(app, ib, user, node, len(listed) + i) for i in range(n))
        return out
