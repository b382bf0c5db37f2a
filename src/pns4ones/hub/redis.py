"""
The hub between nodes over Redis (``hub = redis://...``), in the style of
Centrifugo's Redis engine.  Each node routes to its own sessions with a
:class:`LocalHub`; Redis carries what the nodes share:

* ``{P}msg:{app}:{ib}`` (pub/sub): every message of an (application,
  information base), once, as ``STREAM-ID JSON`` (origin, recipient, add-in
  JSON); each node encrypts for its own subscribers.  A node subscribes to the
  channel while it has a session there, so it receives only what concerns it.
* ``{P}stream:{app}:{ib}`` (stream): the same messages, capped by
  ``recovery_messages`` and ``recovery_window``: the recovery window of every
  node (a WebSocket/SSE client resumes on any node).  Message ids are the
  stream ids ``MS-SEQ`` as ``MS * 1000 + SEQ`` (see :mod:`.recovery`).
* One Lua script per send: XADD + trim + PUBLISH; the sending node routes to
  its own sessions when Redis answers and ignores its own publication.
* Presence: each node (``{P}node:{member}``, a hash with a short expiry)
  keeps ``user -> sessions`` and ``(group, user) -> sessions`` of its
  sessions, publishes the changes (batched) on ``{P}presence`` with a
  sequence number and a heartbeat; every node mirrors the others in memory,
  so reports and ``/presence`` count all nodes without a round trip per send.
  A gap in the sequence or a new node: its hash is read again.  A node not
  heard from within ``hub_presence_expiry`` is forgotten.

``{P}`` is ``pns4ones:{db}:`` (pub/sub channels are not per database in Redis).
Redis 7 or later (XTRIM MINID, XINFO STREAM's entries-added).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import txredisapi
from twisted.internet import task
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger

from ..messages import Message, Notification, Recipient, render_addin_json
from ..txinternals import send_now
from . import HubUnavailable, Outbound, Report, Session
from .local import LocalHub, _groups
from .recovery import addressed_to

#: Seconds Redis has to answer a command before the connection counts as lost.
REPLY_TIMEOUT = 3.0
#: Presence changes are batched this long (seconds).
PRESENCE_BATCH = 0.1

PUBLISH_SCRIPT = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'd', ARGV[2])
local ms, seq = string.match(id, '^(%d+)-(%d+)$')
if tonumber(seq) >= 1000 then
  -- more than 1000 messages in a millisecond here: the next millisecond's id, so MS*1000+SEQ stays unique
  redis.call('XDEL', KEYS[1], id)
  id = redis.call('XADD', KEYS[1], string.format('%d-0', tonumber(ms) + 1), 'd', ARGV[2])
end
redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', tonumber(ms) - tonumber(ARGV[4])))
redis.call('PUBLISH', ARGV[1], id .. ' ' .. ARGV[2])
return id
"""

REPLAY_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', now - tonumber(ARGV[2])))
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local f = {}
for i = 1, #info, 2 do f[info[i]] = info[i + 1] end
local first = ''
if f['first-entry'] then first = f['first-entry'][1] end
local entries = {}
if ARGV[3] ~= '0' then entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[3]) end
return {1, f['last-generated-id'], tostring(f['entries-added']), tostring(f['length']), first, entries}
"""

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

BYE_SCRIPT = """
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""


def stream_id_to_int(stream_id: str) -> int:
    ms, _, seq = stream_id.partition("-")
    return int(ms) * 1000 + int(seq)


def int_to_stream_id(message_id: int) -> str:
    return f"{message_id // 1000}-{message_id % 1000}"


def _message(doc: dict[str, Any]) -> Message:
    """The :class:`Message` of an add-in JSON object (as :func:`render_addin_json` made it)."""
    note = doc.get("notification")
    notification = None
    if note:
        notification = Notification(
            note.get("title", ""), note.get("body", ""), note.get("icon", ""), note.get("action", ""), bool(note.get("important", False))
        )
    return Message(doc.get("topic", ""), notification, doc.get("data") or {})


def _recipient(kind: str, ib_id: str, target: str) -> Recipient:
    if kind == "user":
        return Recipient("user", ib_id, user_id=target)
    if kind == "group":
        return Recipient("group", ib_id, group=target)
    return Recipient("all", ib_id)


class RedisURL:
    """What ``hub = redis://[USER:PASSWORD@]HOST[:PORT][/DB][?ca_file=PEM]`` says."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.tls = parts.scheme.lower() == "rediss"
        try:
            self.host = parts.hostname or "127.0.0.1"
            self.port = parts.port or 6379
        except ValueError as e:
            raise HubUnavailable(f"option 'hub': {e}") from None
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        if self.username and self.password is None:  # redis://PASSWORD@host
            self.username, self.password = None, self.username
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise HubUnavailable(f"option 'hub': the database {path!r} is not a number (redis://HOST:PORT/0)")
        self.db = int(path or 0)
        query = parse_qs(parts.query)
        self.ca_file = (query.get("ca_file") or [""])[0]
        unknown = set(query) - {"ca_file"}
        if unknown:
            raise HubUnavailable(f"option 'hub': unknown URL parameter(s) {', '.join(sorted(unknown))} (only ca_file)")
        if self.ca_file and not self.tls:
            raise HubUnavailable("option 'hub': ca_file needs rediss:// (TLS)")

    def describe(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{self.host}:{self.port}/{self.db}"

    def tls_creator(self) -> Any:
        """Certificate checked against the system's roots (or ``ca_file``) and the host name."""
        from twisted.internet import ssl

        if not self.ca_file:
            return ssl.optionsForClientTLS(self.host)
        try:
            with open(self.ca_file, "rb") as f:
                pem = f.read()
            root = ssl.Certificate.loadPEM(pem)
        except (OSError, Exception) as e:
            raise HubUnavailable(f"option 'hub': cannot read ca_file {self.ca_file}: {e}") from None
        return ssl.optionsForClientTLS(self.host, trustRoot=root)


# -- connections -----------------------------------------------------------------------------


class _DirectWrites:
    """The connection's transport, writing straight to the socket when nothing is queued (see :func:`pns4ones.txinternals.send_now`)."""

    __slots__ = ("_transport",)

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        if not send_now(self._transport, data):
            self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Watched:
    """
    Direct writes, and a reply deadline kept with one timestamp instead of a
    timer per command: the hub's sweep aborts a connection that owes replies
    and has said nothing for :data:`REPLY_TIMEOUT` (Redis stopped, a dead link).
    """

    waiting_since = 0.0

    def makeConnection(self, transport: Any) -> None:
        from twisted.internet.tcp import Connection

        # plain TCP only: a TLS wrapper must see every byte
        super().makeConnection(_DirectWrites(transport) if isinstance(transport, Connection) else transport)  # type: ignore[misc]

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if not self.replyQueue.waiting:  # type: ignore[attr-defined]
            self.waiting_since = time.monotonic()
        return super().execute_command(*args, **kwargs)  # type: ignore[misc]

    def replyReceived(self, reply: Any) -> None:
        self.waiting_since = time.monotonic()
        super().replyReceived(reply)  # type: ignore[misc]

    def connectionLost(self, why: Any) -> None:
        if not self._ready:  # type: ignore[attr-defined]
            # never usable: TLS handshake, authentication or SELECT failed
            self.factory.hub._attempt_failed(self.factory.role, why.getErrorMessage())  # type: ignore[attr-defined]
        super().connectionLost(why)  # type: ignore[misc]

    def overdue(self, now: float) -> bool:
        return bool(self.replyQueue.waiting) and now - self.waiting_since > REPLY_TIMEOUT  # type: ignore[attr-defined]


class _Commands(_Watched, txredisapi.RedisProtocol):
    pass


class _Factory(txredisapi.RedisFactory):
    """One connection, reconnected with backoff; tells the hub when it is usable and when lost."""

    protocol = _Commands

    initialDelay = 0.5
    maxDelay = 5.0

    def __init__(self, hub: RedisHub, role: str, url: RedisURL) -> None:
        super().__init__(
            url.describe(), url.db, 1, isLazy=True, password=url.password, replyTimeout=None, convertNumbers=False, username=url.username
        )
        self.hub = hub
        self.role = role
        self.deferred.addErrback(self._refused)

    def _refused(self, failure: Any) -> None:
        self.hub._refused(self.role, failure.getErrorMessage())

    def stopTrying(self) -> Any:
        """
        txredisapi gives up for good when AUTH or SELECT fails, also when the
        connection merely dropped meanwhile (Redis restarting, loading): keep
        retrying with backoff instead; :meth:`RedisHub.close` disconnects.
        """
        return succeed(None)

    def addConnection(self, conn: Any) -> None:
        super().addConnection(conn)
        if conn.connected and not self.disconnectCalled:
            self.hub._link_up(self.role, conn)

    def delConnection(self, conn: Any) -> None:
        super().delConnection(conn)
        self.hub._link_down(self.role, conn)


class _Endpoint:
    """The Redis endpoint, telling the hub when a connection attempt fails."""

    def __init__(self, endpoint: Any, hub: RedisHub, role: str) -> None:
        self.endpoint = endpoint
        self.hub = hub
        self.role = role

    def connect(self, factory: Any) -> Any:
        def failed(failure: Any) -> Any:
            self.hub._attempt_failed(self.role, failure.getErrorMessage())
            return failure

        return self.endpoint.connect(factory).addErrback(failed)


class _Subscriber(_Watched, txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern: Any, channel: str, message: str) -> None:
        self.factory.hub._received(channel, message)


class _SubscriberFactory(_Factory):
    protocol = _Subscriber


# -- the mirror of the other nodes' presence ---------------------------------------------------


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
        self.pending: list[dict[str, Any]] = []


class RemoteSession:
    """A session on another node, as presence shows it."""

    __slots__ = ("app_id", "group", "ib_id", "node", "user_id")
    transport_name = "remote"
    keys = None

    def __init__(self, app_id: str, ib_id: str, user_id: str, node: str) -> None:
        self.app_id = app_id
        self.ib_id = ib_id
        self.user_id = user_id
        self.group = ""
        self.node = node


def _bump(table: dict[str, int], key: str, delta: int) -> None:
    value = table.get(key, 0) + delta
    if value > 0:
        table[key] = value
    else:
        table.pop(key, None)


class RedisHub:
    """:class:`pns4ones.hub.Hub` for several nodes sharing one Redis."""

    log = Logger()

    def __init__(self, config: Any, members: Callable[[str, str, str], Any], reactor: Any) -> None:
        self.url = RedisURL(config.hub)
        self._creator = self.url.tls_creator() if self.url.tls else None
        self.reactor = reactor
        self.local = LocalHub(members, reactor, 0, 0)
        self._members = members
        self.recovery_window_ms = max(1, int(config.recovery_window * 1000))
        self.recovery_messages = max(1, int(config.recovery_messages))
        self.expiry = float(getattr(config, "hub_presence_expiry", 15.0))
        listen_port = getattr(getattr(config, "listen", None), "port", 0)
        self.node = config.node_name or f"{socket.gethostname()}:{listen_port}"
        #: This process: the node's name and an incarnation (a restarted node is a new member).
        self.member = f"{self.node}/{os.urandom(4).hex()}"
        self.prefix = f"pns4ones:{self.url.db}:"
        self.presence_channel = self.prefix + "presence"
        self.nodes_key = self.prefix + "nodes"
        self.own_key = self.prefix + "node:" + self.member
        self._origin = json.dumps(self.member).encode()
        self._own_prefix = '{"o":' + json.dumps(self.member) + ","
        # connections
        self._cmd: Any = None
        self._sub: Any = None
        self._factories: list[_Factory] = []
        self.state = "connecting"
        self._down_since = 0.0
        self._failure_logged = False
        self._closing = False
        # channels: channel -> (app, ib); the ones Redis confirmed; waiters for a confirmation
        self._channels: dict[str, tuple[str, str]] = {}
        self._pins: dict[tuple[str, str], int] = {}
        self._confirmed: set[str] = set()
        self._waiters: dict[str, list[Deferred[None]]] = {}
        self._presence_subscribed = False
        # recovery: messages routed while a resuming session reads the stream
        self._catchers: dict[tuple[str, str], list[list[tuple[int, Recipient, Message, Outbound | None]]]] = {}
        self._last_ids: dict[tuple[str, str], int] = {}
        # own presence: field -> sessions; fields changed since the last flush
        self._summary: dict[str, int] = {}
        self._dirty: set[str] = set()
        self._seq = 0
        self._flush_call: Any = None
        self._need_full = True
        self._synced = False
        # the others
        self._others: dict[str, _Member] = {}
        self._remote: dict[tuple[str, str], _RemoteIb] = {}
        self._loops: list[task.LoopingCall] = []
        # counters for the metrics
        self.published = 0
        self.publish_failures = 0
        self.received = 0

    # -- Hub: local routing, delegated -------------------------------------------------------

    @property
    def on_routed(self) -> Any:
        return self.local.on_routed

    @on_routed.setter
    def on_routed(self, hook: Any) -> None:
        self.local.on_routed = hook

    def __len__(self) -> int:
        return len(self.local)

    def sessions(self, app_id: str | None = None) -> Iterator[Session]:
        return self.local.sessions(app_id)

    def counts(self) -> dict[str, dict[str, int]]:
        return self.local.counts()

    def recipients(self, app_id: str, recipient: Recipient) -> Any:
        return self.local.recipients(app_id, recipient)

    @property
    def last_id(self) -> int:
        return max(self._last_ids.values(), default=0)

    def channel(self, app_id: str, ib_id: str) -> str:
        return f"{self.prefix}msg:{app_id}:{ib_id}"

    def stream(self, app_id: str, ib_id: str) -> str:
        return f"{self.prefix}stream:{app_id}:{ib_id}"

    # -- attach / detach: channels and presence ----------------------------------------------

    def attach(self, session: Session) -> None:
        before = len(self.local)
        self.local.attach(session)
        if len(self.local) == before:
            return
        self._want(session.app_id, session.ib_id)
        self._count(session, 1)

    def detach(self, session: Session) -> None:
        before = len(self.local)
        self.local.detach(session)
        if len(self.local) == before:
            return
        self._count(session, -1)
        self._unwant(session.app_id, session.ib_id)

    def _count(self, session: Session, delta: int) -> None:
        app, ib, user = session.app_id, session.ib_id, session.user_id
        fields = [json.dumps(["u", app, ib, user], ensure_ascii=False)]
        for group in _groups(session):
            fields.append(json.dumps(["g", app, ib, user, group], ensure_ascii=False))
        for field in fields:
            _bump(self._summary, field, delta)
            self._dirty.add(field)
        self._schedule_flush()

    def _want(self, app_id: str, ib_id: str) -> None:
        """Keep the channel of (app, ib) subscribed while sessions or resumes need it."""
        key = (app_id, ib_id)
        count = self._pins.get(key, 0)
        self._pins[key] = count + 1
        if count:
            return
        channel = self.channel(app_id, ib_id)
        self._channels[channel] = key
        if self._sub is not None:
            self._subscribe(channel)

    def _unwant(self, app_id: str, ib_id: str) -> None:
        key = (app_id, ib_id)
        count = self._pins.get(key, 0) - 1
        if count > 0:
            self._pins[key] = count
            return
        self._pins.pop(key, None)
        channel = self.channel(app_id, ib_id)
        self._channels.pop(channel, None)
        self._confirmed.discard(channel)
        self._last_ids.pop(key, None)
        if self._sub is not None:
            maybeDeferred(self._sub.unsubscribe, channel).addErrback(lambda _: None)

    def _subscribe(self, channel: str) -> None:
        sub = self._sub

        def confirmed(_: Any) -> None:
            if sub is self._sub and channel in self._channels:
                self._confirmed.add(channel)
                for waiter in self._waiters.pop(channel, []):
                    if not waiter.called:  # not timed out
                        waiter.callback(None)
                self._schedule_flush()

        maybeDeferred(sub.subscribe, channel).addCallbacks(confirmed, lambda _: None)

    def _subscribed(self, channel: str) -> Deferred[None]:
        if channel in self._confirmed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.setdefault(channel, []).append(d)
        return d

    # -- publish -----------------------------------------------------------------------------

    def publish(self, app_id: str, recipient: Recipient, message: Message) -> Deferred[Report]:
        cmd = self._cmd
        if cmd is None or self.state != "up":
            self.publish_failures += 1
            return fail(
                HubUnavailable(
                    f"the hub between nodes (Redis at {self.url.describe()}) is unreachable; the message was not sent, try again"
                )
            )
        payload = b'{"o":%s,"t":"%s","to":%s,"m":%s}' % (
            self._origin,
            recipient.type.encode(),
            json.dumps(recipient.target, ensure_ascii=False).encode("utf-8"),
            render_addin_json(message),
        )
        ib_id = recipient.ib_id
        d = maybeDeferred(
            cmd.eval,
            PUBLISH_SCRIPT,
            [self.stream(app_id, ib_id)],
            [self.channel(app_id, ib_id), payload, self.recovery_messages, self.recovery_window_ms],
        )
        return d.addCallbacks(self._published, self._publish_failed, callbackArgs=(app_id, recipient, message))

    def _published(self, stream_id: Any, app_id: str, recipient: Recipient, message: Message) -> Report:
        self.published += 1
        message_id = stream_id_to_int(stream_id.decode() if isinstance(stream_id, bytes) else stream_id)
        report = self._route(app_id, recipient, message, message_id)
        return self._with_remote(app_id, recipient, report)

    def _publish_failed(self, failure: Any) -> Any:
        self.publish_failures += 1
        if failure.check(txredisapi.ConnectionError, txredisapi.ResponseError):
            raise HubUnavailable(
                f"the hub between nodes (Redis) did not take the message ({failure.getErrorMessage()}); the message was not sent, try again"
            )
        return failure

    def _route(self, app_id: str, recipient: Recipient, message: Message, message_id: int) -> Report:
        key = (app_id, recipient.ib_id)
        if message_id > self._last_ids.get(key, 0) and key in self._pins:
            self._last_ids[key] = message_id
        catchers = self._catchers.get(key)
        if catchers:
            for caught in catchers:
                caught.append((message_id, recipient, message, None))
        return self.local.route(app_id, recipient, message, message_id)

    def _received(self, channel: str, data: str) -> None:
        """A message published by any node (our own ones are routed already)."""
        key = self._channels.get(channel)
        if key is None:
            if channel == self.presence_channel:
                self._presence_received(data)
            return
        stream_id, _, payload = data.partition(" ")
        if payload.startswith(self._own_prefix):  # ours: routed when Redis answered
            return
        try:
            doc = json.loads(payload)
            message_id = stream_id_to_int(stream_id)
            recipient = _recipient(doc["t"], key[1], doc["to"])
            message = _message(doc["m"])
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            self.log.warn("ignored a malformed message on Redis channel {channel}: {error}", channel=channel, error=str(e))
            return
        self.received += 1
        self._route(key[0], recipient, message, message_id)

    # -- reports: this node's sessions and the others' -------------------------------------

    def _with_remote(self, app_id: str, recipient: Recipient, report: Report) -> Report:
        ib = self._remote.get((app_id, recipient.ib_id))
        if ib is None:
            return report
        if recipient.type == "user":
            n = ib.users.get(recipient.user_id, 0)
            if not n:
                return report
            return Report(report.sessions + n, len(set(report.reached) | {recipient.user_id}), set(report.reached) | {recipient.user_id})
        if recipient.type == "group":
            members = self._members(app_id, recipient.ib_id, recipient.group) if self._members is not None else ()
            registered = ib.groups.get(recipient.group, {})
            sessions = 0
            users: set[str] = set()
            if members:
                if len(members) <= len(ib.users):
                    for user_id in members:
                        n = ib.users.get(user_id)
                        if n:
                            sessions += n
                            users.add(user_id)
                else:
                    for user_id, n in ib.users.items():
                        if user_id in members:
                            sessions += n
                            users.add(user_id)
            for user_id, n in registered.items():
                if user_id not in users:
                    sessions += n
                    users.add(user_id)
        else:
            sessions = sum(ib.users.values())
            users = set(ib.users)
        if not sessions:
            return report
        users |= set(report.reached)
        return Report(report.sessions + sessions, len(users), users)

    def remote_sessions(self, app_id: str, ib_id: str) -> dict[str, list[RemoteSession]]:
        """Sessions of one information base on the other nodes, by user (one entry per session)."""
        out: dict[str, list[RemoteSession]] = {}
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
                    out.setdefault(user, []).extend(RemoteSession(app, ib, user, node) for _ in range(n))
        return out

    # -- recovery: the stream ---------------------------------------------------------------

    def replay(self, session: Session, since: int | None) -> Deferred[tuple[int | None, list[Outbound], int]]:
        key = (session.app_id, session.ib_id)
        cmd = self._cmd
        if cmd is None or self.state != "up":
            # Redis is away: subscribe now, say what may be missing.
            resume = self._last_ids.get(key, 0)
            return succeed((since if since is not None and since != resume else None, [], resume))
        self._want(*key)
        caught: list[tuple[int, Recipient, Message, Outbound | None]] = []
        self._catchers.setdefault(key, []).append(caught)

        def read(_: Any) -> Any:
            start = int_to_stream_id(since) if since is not None else "0-0"
            count = self.recovery_messages + 200 if since is not None else 0
            return maybeDeferred(cmd.eval, REPLAY_SCRIPT, [self.stream(*key)], [start, self.recovery_window_ms, count])

        def done(reply: Any) -> tuple[int | None, list[Outbound], int]:
            return self._backlog(session, since, reply, caught)

        def cleanup(result: Any) -> Any:
            catchers = self._catchers.get(key)
            if catchers is not None:
                catchers.remove(caught)
                if not catchers:
                    del self._catchers[key]
            # after the caller attached the session (same turn): the channel stays subscribed
            self.reactor.callLater(0, self._unwant, *key)
            return result

        def failed(failure: Any) -> tuple[int | None, list[Outbound], int]:
            self.log.warn(
                "cannot read the recovery stream of app={app_id} ib={ib_id} from Redis: {error}",
                app_id=key[0],
                ib_id=key[1],
                error=failure.getErrorMessage(),
            )
            resume = self._last_ids.get(key, 0)
            return (since if since is not None else None), [], resume

        d = self._subscribed(self.channel(*key))
        timeout = self.reactor.callLater(REPLY_TIMEOUT, lambda: d.cancel() if not d.called else None)
        d.addBoth(lambda r: (timeout.cancel() if timeout.active() else None, r)[1])
        d.addCallback(read).addCallback(done).addErrback(failed)
        return d.addBoth(cleanup)

    def _backlog(self, session: Session, since: int | None, reply: Any, caught: list[Any]) -> tuple[int | None, list[Outbound], int]:
        floor: int | None = None
        backlog: list[Outbound] = []
        resume = 0
        if reply and int(reply[0]) == 1:
            _, last, added, length, first, entries = reply
            resume = stream_id_to_int(last)
            added, length = int(added), int(length)
            if since is not None:
                if added > length:  # some were trimmed: everything before the first entry
                    window_floor = stream_id_to_int(first) - 1 if first else resume
                else:
                    window_floor = 0
                if since < window_floor or since > resume:
                    floor = window_floor
                    since = window_floor
                for entry_id, fields in entries or ():
                    message_id = stream_id_to_int(entry_id)
                    if message_id <= since:
                        continue
                    try:
                        payload = dict(zip(fields[::2], fields[1::2]))["d"]
                        doc = json.loads(payload)
                        recipient = _recipient(doc["t"], session.ib_id, doc["to"])
                        if addressed_to(recipient, session):
                            backlog.append(Outbound(_message(doc["m"]), message_id))
                    except (ValueError, KeyError, TypeError, AttributeError):
                        continue
        elif since is not None and since > 0:
            floor = 0  # no stream (never sent to, or Redis lost it): messages may be missing
        last_written = backlog[-1].id if backlog else max(resume, since or 0)
        for message_id, recipient, message, _ in caught:
            if message_id > last_written and addressed_to(recipient, session):
                backlog.append(Outbound(message, message_id))
                last_written = message_id
        resume = max(resume, last_written)
        return floor, backlog, resume

    # -- presence: our summary out, the others' in --------------------------------------------

    def _schedule_flush(self) -> None:
        if self._flush_call is None and self.state == "up" and self._synced:
            self._flush_call = self.reactor.callLater(PRESENCE_BATCH, self._flush)

    def _flush(self, full: bool = False, heartbeat: bool = False) -> Any:
        self._flush_call = None
        cmd = self._cmd
        if cmd is None or self.state != "up":
            self._need_full = True
            return succeed(None)
        if any(channel not in self._confirmed for channel in self._channels):
            # presence only once the node receives the information base's messages
            self._flush_call = self.reactor.callLater(PRESENCE_BATCH, self._flush)
            return succeed(None)
        full = full or self._need_full
        if full:
            fields = dict(self._summary)
        else:
            fields = {f: self._summary.get(f, 0) for f in self._dirty}
        if not fields and not full and not heartbeat:
            return succeed(None)
        self._dirty = set()
        self._need_full = False
        if fields or full:
            self._seq += 1
        doc: dict[str, Any] = {"n": self.member, "s": self._seq}
        if full:
            doc["full"] = 1
        elif fields:
            doc["f"] = [[f, n] for f, n in fields.items()]
        args: list[Any] = [
            self.member,
            int(self.expiry * 1000),
            self.presence_channel,
            json.dumps(doc, ensure_ascii=False),
            "1" if full else "0",
            self._seq,
        ]
        for field, n in fields.items():
            args.append(field)
            args.append(n)
        d = maybeDeferred(cmd.eval, PRESENCE_SCRIPT, [self.own_key, self.nodes_key], args)

        def failed(failure: Any) -> None:
            self._need_full = True
            self.log.debug("presence update failed: {error}", error=failure.getErrorMessage())

        return d.addErrback(failed)

    def _heartbeat(self) -> None:
        if self.state == "up" and self._synced:
            self._flush(heartbeat=True)

    def _presence_received(self, data: str) -> None:
        try:
            doc = json.loads(data)
            name = doc["n"]
        except (ValueError, KeyError, TypeError):
            return
        if name == self.member:
            return
        if doc.get("bye"):
            self._forget(name)
            return
        member = self._others.get(name)
        now = time.monotonic()
        if member is None:
            member = self._others[name] = _Member(name, now)
            member.pending.append(doc)
            self._load(member)
            return
        member.seen = now
        if member.loading:
            member.pending.append(doc)
            return
        self._apply(member, doc)

    def _apply(self, member: _Member, doc: dict[str, Any]) -> None:
        seq = int(doc.get("s", 0))
        if doc.get("full"):
            if seq > member.seq:
                member.pending.append(doc)
                self._load(member)
            return
        changes = doc.get("f")
        if changes is None:  # heartbeat
            if seq > member.seq:
                self._load(member)
            return
        if seq <= member.seq:
            return
        if seq != member.seq + 1:
            self._load(member)
            return
        member.seq = seq
        for field, n in changes:
            self._set_field(member, field, int(n))

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

    def _load(self, member: _Member) -> None:
        """Read the whole summary of another node (new to us, or we missed some of its changes)."""
        if member.loading:
            return
        cmd = self._cmd
        if cmd is None:
            return
        member.loading = True

        def loaded(values: Any) -> None:
            member.loading = False
            if self._others.get(member.name) is not member:
                return
            if isinstance(values, list):
                values = dict(zip(values[::2], values[1::2]))
            values = dict(values or {})
            if not values:
                self._forget(member.name)
                return
            seq = int(values.pop("~seq", 0))
            for field in list(member.fields):
                if field not in values:
                    self._set_field(member, field, 0)
            for field, n in values.items():
                self._set_field(member, field, int(n))
            member.seq = seq
            pending, member.pending = member.pending, []
            for doc in pending:
                if int(doc.get("s", 0)) > seq or (doc.get("f") is None and not doc.get("full")):
                    self._apply(member, doc)

        def failed(failure: Any) -> None:
            member.loading = False

        maybeDeferred(cmd.execute_command, "HGETALL", self.prefix + "node:" + member.name).addCallbacks(loaded, failed)

    def _forget(self, name: str) -> None:
        member = self._others.pop(name, None)
        if member is None:
            return
        for field in list(member.fields):
            self._set_field(member, field, 0)
        self.log.info("hub: node {node} left (presence)", node=name)

    def _sweep(self) -> None:
        """Forget nodes not heard from within the expiry (killed, cut off); drop a connection Redis stopped answering on."""
        now = time.monotonic()
        for conn in (self._cmd, self._sub):
            if conn is not None and conn.overdue(now):
                self.log.warn(
                    "hub: Redis at {url} has not answered for {timeout} s: reconnecting", url=self.url.describe(), timeout=REPLY_TIMEOUT
                )
                conn.transport.abortConnection()
        cutoff = time.monotonic() - self.expiry
        for name, member in list(self._others.items()):
            if member.seen < cutoff:
                self.log.info("hub: node {node} not heard from for {expiry} s: dropped from presence", node=name, expiry=self.expiry)
                self._forget(name)

    def _sync(self) -> None:
        """Both connections up: publish our whole presence, read everybody's."""
        cmd = self._cmd
        if cmd is None or self._sub is None or not self._presence_subscribed or self._synced:
            return
        self._synced = True
        self._need_full = True
        self._flush(full=True)

        def members(names: Any) -> None:
            for name in names or ():
                if name == self.member:
                    continue
                member = self._others.get(name)
                if member is None:
                    member = self._others[name] = _Member(name, time.monotonic())
                self._load(member)

        maybeDeferred(cmd.execute_command, "ZRANGE", self.nodes_key, 0, -1).addCallbacks(members, lambda _: None)

    # -- connection state --------------------------------------------------------------------

    def start(self) -> None:
        from twisted.internet.endpoints import HostnameEndpoint

        endpoint: Any = HostnameEndpoint(self.reactor, self.url.host, self.url.port, timeout=REPLY_TIMEOUT)
        if self._creator is not None:
            endpoint = txredisapi._TLSEndpoint(endpoint, self._creator)
        for role, factory_class in (("commands", _Factory), ("subscriber", _SubscriberFactory)):
            factory = factory_class(self, role, self.url)
            self._factories.append(factory)
            factory.startConnecting(_Endpoint(endpoint, self, role))
        sweep = task.LoopingCall(self._sweep)
        sweep.clock = self.reactor
        sweep.start(1.0, now=False)
        heartbeat = task.LoopingCall(self._heartbeat)
        heartbeat.clock = self.reactor
        heartbeat.start(max(0.2, self.expiry / 3), now=False)
        self._loops = [sweep, heartbeat]
        self.log.info("hub: Redis at {url} as node {node}", url=self.url.describe(), node=self.member)

    def _refused(self, role: str, reason: str) -> None:
        self.log.error(
            "hub: Redis at {url} refused the {role} connection: {reason}; retrying", url=self.url.describe(), role=role, reason=reason
        )
        self._failure_logged = True

    def _attempt_failed(self, role: str, reason: str) -> None:
        """A connection attempt failed: said once until the hub is up again."""
        if self._failure_logged:
            return
        self._failure_logged = True
        self.log.error(
            "hub: cannot connect to Redis at {url}: {reason}; retrying with backoff (up to {delay:g} s apart)",
            url=self.url.describe(),
            reason=reason,
            delay=_Factory.maxDelay,
        )

    def _link_up(self, role: str, conn: Any) -> None:
        if role == "commands":
            self._cmd = conn
        else:
            self._sub = conn
            self._confirmed = set()
            self._presence_subscribed = False

            def presence(_: Any) -> None:
                if conn is self._sub:
                    self._presence_subscribed = True
                    self._sync()

            maybeDeferred(conn.subscribe, self.presence_channel).addCallbacks(presence, lambda _: None)
            for channel in list(self._channels):
                self._subscribe(channel)
        if self._cmd is not None and self._sub is not None and self.state != "up":
            previous = self.state
            self.state = "up"
            self._failure_logged = False
            if previous == "down":
                self.log.info(
                    "hub: reconnected to Redis at {url} after {seconds:.1f} s; resubscribed to {channels} channels",
                    url=self.url.describe(),
                    seconds=time.monotonic() - self._down_since,
                    channels=len(self._channels),
                )
            else:
                self.log.info("hub: connected to Redis at {url}", url=self.url.describe())
        self._sync()

    def _link_down(self, role: str, conn: Any) -> None:
        if role == "commands":
            if conn is not self._cmd:
                return
            self._cmd = None
        else:
            if conn is not self._sub:
                return
            self._sub = None
            self._confirmed = set()
            self._presence_subscribed = False
        self._synced = False
        self._need_full = True
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        if self.state == "up" and not self._closing:
            self.state = "down"
            self._failure_logged = True  # the failed attempts of this outage are not news
            self._down_since = time.monotonic()
            self.log.error(
                "hub: lost the connection to Redis at {url}: sends answer 503 until it is back; reconnecting", url=self.url.describe()
            )

    def status(self) -> tuple[bool, str]:
        """For ``/ready``."""
        if self.state == "up":
            return True, "ready"
        return False, f"hub {'connecting to' if self.state == 'connecting' else 'lost'} Redis at {self.url.describe()}"

    def close(self) -> Deferred[Any]:
        """Leave: remove our presence (the others forget us at once), close the connections."""
        self._closing = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None
        cmd = self._cmd
        if cmd is not None:
            bye = json.dumps({"n": self.member, "bye": 1})
            d = maybeDeferred(cmd.eval, BYE_SCRIPT, [self.own_key, self.nodes_key], [self.member, self.presence_channel, bye])
            d.addErrback(lambda _: None)
        else:
            d = succeed(None)

        def disconnect(_: Any) -> Any:
            from twisted.internet.defer import gatherResults

            factories, self._factories = self._factories, []
            return gatherResults([f.disconnect() for f in factories], consumeErrors=True)

        # a stuck Redis does not hold the stop up
        return d.addCallback(disconnect).addTimeout(REPLY_TIMEOUT, self.reactor).addErrback(lambda _: None)

    # -- metrics -------------------------------------------------------------------------------

    def metric_families(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily(
            "pns4ones_hub_connected", "1 while the hub between nodes (Redis) is connected", value=1 if self.state == "up" else 0
        )
        published = CounterMetricFamily("pns4ones_hub_publishes", "Messages published to Redis by this node, by result", labels=["result"])
        published.add_metric(["ok"], self.published)
        published.add_metric(["failed"], self.publish_failures)
        yield published
        yield CounterMetricFamily("pns4ones_hub_received", "Messages received from other nodes through Redis", value=self.received)
        yield GaugeMetricFamily("pns4ones_hub_nodes", "Other nodes this node sees in the hub's presence", value=len(self._others))
