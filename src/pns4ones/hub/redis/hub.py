"""
:class:`RedisHub`: several nodes sharing one Redis, in the style of
Centrifugo's Redis engine.  Each node routes to its own sessions with a
:class:`~pns4ones.hub.local.LocalHub`; Redis carries what the nodes share
(:mod:`.stream`: messages and the recovery window; :mod:`.presence` and
:mod:`.sync`: who is online where), over the connections of :mod:`.link`.

* Publish: one script per send (add to the stream, trim, publish); the sending
  node routes to its own sessions when Redis answers and ignores its own
  publication; the others route the published bytes as they are.
* A node subscribes to the channel of an (application, information base)
  while it has a session there (or a web client resumes there).
* Recovery: a web client resuming with its last id reads the stream (on any
  node).  A node whose link comes back after an outage reads the stream of each
  of its channels from the last id it had routed there, and routes what it
  missed to its sessions (add-in ones included) before anything newer, once and
  in order; sends wait (503) until that is done.

Invariants:

* ``_last_ids[key]``: every message of that channel up to this id has been
  routed here (or predates this node's sessions there).
* While a key is gated (catching up after an outage), its messages are queued,
  not routed; the gate opens by routing stream and queue merged by id.
* The node is ready (sends accepted) when the link is up and no key is gated.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TypeVar

import txredisapi
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ...messages import Recipient
from ..interface import Clock, Delivery, HubUnavailable, MembersOf, Replay, Session, SessionInfo
from ..local import LocalHub
from ..outbound import Outbound
from ..routing import reaches
from .link import REPLY_TIMEOUT, Link, RedisConnection
from .stream import (
    LAST_ID_SCRIPT,
    PUBLISH_SCRIPT,
    REPLAY_SCRIPT,
    Caught,
    Gates,
    Key,
    Reply,
    decode_payload,
    encode_payload,
    int_to_stream_id,
    read_stream,
    replay_backlog,
    stream_id_to_int,
)
from .sync import PresenceSync
from .url import RedisURL

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from ...config import Config

T = TypeVar("T")

#: Seconds a node may take to read back what it missed after an outage before it routes live again without it.
CATCH_UP_TIMEOUT = 10.0


def _deadline(d: Deferred[T], clock: Clock, seconds: float = REPLY_TIMEOUT) -> Deferred[T]:
    """``d``, cancelled if it has not fired within ``seconds``."""

    def expire() -> None:
        if not d.called:
            d.cancel()

    timer = clock.callLater(seconds, expire)

    def done(result: T) -> T:
        if timer.active():
            timer.cancel()
        return result

    return d.addBoth(done)


class RedisHub:
    """:class:`pns4ones.hub.Hub` for several nodes sharing one Redis (Redis 7 or later)."""

    log = Logger()

    def __init__(
        self,
        url: str,
        members: MembersOf | None,
        reactor: Clock,
        node: str,
        recovery_window: float = 120.0,
        recovery_messages: int = 1000,
        presence_expiry: float = 15.0,
    ) -> None:
        self.url = RedisURL(url)
        self.reactor = reactor
        self.local = LocalHub(members, reactor, 0, 0)
        self._members = members
        self.recovery_window_ms = max(1, int(recovery_window * 1000))
        self.recovery_messages = max(1, int(recovery_messages))
        self.expiry = presence_expiry
        self.node = node
        #: This process: the node's name and an incarnation (a restarted node is a new member).
        self.member = f"{node}/{os.urandom(4).hex()}"
        self.prefix = f"pns4ones:{self.url.db}:"
        self._origin = json.dumps(self.member).encode()
        self._own_prefix = '{"o":' + json.dumps(self.member) + ","
        self.link = Link(self.url, reactor, self)
        self._closing = False
        # channels: channel -> (app, ib); pins per key; the ones Redis confirmed; waiters for a confirmation
        self._channels: dict[str, Key] = {}
        self._pins: dict[Key, int] = {}
        self._confirmed: set[str] = set()
        self._waiters: dict[str, list[Deferred[None]]] = {}
        # recovery: messages routed while a resuming session reads the stream; the last id routed per key
        self._catchers: dict[Key, list[list[Caught]]] = {}
        self._last_ids: dict[Key, int] = {}
        # catching up after an outage: queued messages per gated key, keys being read, waiters for a gate
        self._cut = False
        self._gates = Gates()
        self._gate_waiters: dict[Key, list[Deferred[None]]] = {}
        self._caught_up = 0
        self._catch_up_deadline: IDelayedCall | None = None
        self.presence = PresenceSync(
            self.link, reactor, self.member, self.prefix, presence_expiry, lambda: all(c in self._confirmed for c in self._channels)
        )
        self.mirror = self.presence.mirror
        # counters for the metrics
        self.published = 0
        self.publish_failures = 0
        self.received = 0
        self.replayed = 0

    @classmethod
    def from_config(cls, config: Config, members: MembersOf, reactor: Clock) -> RedisHub:
        return cls(config.hub, members, reactor, config.node, config.recovery_window, config.recovery_messages, config.hub_presence_expiry)

    # -- Hub: local routing, delegated -------------------------------------------------------

    @property
    def on_routed(self) -> Callable[[str, int, int], None]:
        return self.local.on_routed

    @on_routed.setter
    def on_routed(self, hook: Callable[[str, int, int], None]) -> None:
        self.local.on_routed = hook

    def __len__(self) -> int:
        return len(self.local)

    def sessions(self, app_id: str | None = None) -> Iterator[Session]:
        return self.local.sessions(app_id)

    def counts(self) -> dict[str, dict[str, int]]:
        return self.local.counts()

    def remote_sessions(self, app_id: str, ib_id: str) -> dict[str, list[SessionInfo]]:
        return self.mirror.sessions(app_id, ib_id)

    @property
    def ready(self) -> bool:
        """Sends are accepted: the link is up and nothing missed during an outage is still being read."""
        return self.link.up and not self._gates

    def receiving(self, app_id: str, ib_id: str) -> bool:
        """Redis confirmed this node's subscription to the channel of (app, ib): it gets the other nodes' messages there."""
        return self.channel(app_id, ib_id) in self._confirmed

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
        self.presence.own.count(session, 1)
        self.presence.changed()

    def detach(self, session: Session) -> None:
        before = len(self.local)
        self.local.detach(session)
        if len(self.local) == before:
            return
        self.presence.own.count(session, -1)
        self.presence.changed()
        self._unwant(session.app_id, session.ib_id)

    def _want(self, app_id: str, ib_id: str) -> None:
        """Keep the channel of (app, ib) subscribed while sessions or resumes need it."""
        key = (app_id, ib_id)
        count = self._pins.get(key, 0)
        self._pins[key] = count + 1
        if count:
            return
        channel = self.channel(app_id, ib_id)
        self._channels[channel] = key
        if self.link.subscriber is not None:
            self._subscribe(self.link.subscriber, channel)

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
        if self._gates.drop(key):
            self._gate_opened(key)
        sub = self.link.subscriber
        if sub is not None:
            maybeDeferred(sub.unsubscribe, channel).addErrback(lambda _: None)

    def _subscribe(self, sub: RedisConnection, channel: str) -> None:
        """Subscribe ``sub`` (the link's subscriber connection) to ``channel``."""

        def confirmed(_: object) -> None:
            key = self._channels.get(channel)
            if sub is not self.link.subscriber or key is None:
                return
            self._confirmed.add(channel)
            for waiter in self._waiters.pop(channel, []):
                if not waiter.called:  # not timed out
                    waiter.callback(None)
            self.presence.changed()
            if key in self._gates:
                self._catch_up(key)
            elif key not in self._last_ids:
                self._learn_last_id(key)

        maybeDeferred(sub.subscribe, channel).addCallbacks(confirmed, lambda _: None)

    def _subscribed(self, channel: str) -> Deferred[None]:
        if channel in self._confirmed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.setdefault(channel, []).append(d)
        return d

    def _learn_last_id(self, key: Key) -> None:
        """A channel newly subscribed: what its stream holds already is not this node's to catch up on after an outage."""
        cmd = self.link.commands
        if cmd is None:
            return

        def learned(stream_id: Reply) -> None:
            if key in self._pins and key not in self._gates:
                self._last_ids[key] = max(self._last_ids.get(key, 0), stream_id_to_int(stream_id))

        maybeDeferred(cmd.eval, LAST_ID_SCRIPT, [self.stream(*key)], []).addCallbacks(learned, lambda _: None)

    # -- publish and receive -----------------------------------------------------------------

    def publish(self, app_id: str, recipient: Recipient, message: Outbound) -> Deferred[Delivery]:
        cmd = self.link.commands
        if cmd is None or not self.ready:
            self.publish_failures += 1
            what = "is unreachable" if not self.link.up else "is catching up after an outage"
            return fail(
                HubUnavailable(f"the hub between nodes (Redis at {self.url.describe()}) {what}; the message was not sent, try again")
            )
        ib_id = recipient.ib_id
        d = maybeDeferred(
            cmd.eval,
            PUBLISH_SCRIPT,
            [self.stream(app_id, ib_id)],
            [
                self.channel(app_id, ib_id),
                encode_payload(self._origin, recipient, message.plaintext),
                self.recovery_messages,
                self.recovery_window_ms,
            ],
        )
        return d.addCallbacks(self._published, self._publish_failed, callbackArgs=(app_id, recipient, message))

    def _published(self, stream_id: Reply, app_id: str, recipient: Recipient, message: Outbound) -> Delivery:
        self.published += 1
        message.id = stream_id_to_int(stream_id)
        local = self._route(app_id, recipient, message)
        sessions, users = self.mirror.reach(app_id, recipient, self._members)
        if not sessions:
            return local
        users |= set(local.reached)
        return Delivery(local.sessions + sessions, len(users), message_id=message.id, reached=users)

    def _publish_failed(self, failure: Failure) -> Failure:
        self.publish_failures += 1
        if failure.check(txredisapi.ConnectionError, txredisapi.ResponseError):
            raise HubUnavailable(
                f"the hub between nodes (Redis) did not take the message ({failure.getErrorMessage()}); the message was not sent, try again"
            )
        return failure

    def _route(self, app_id: str, recipient: Recipient, message: Outbound) -> Delivery:
        key = (app_id, recipient.ib_id)
        if self._gates and self._gates.queue(key, (message.id, recipient, message)):
            return Delivery(0, 0, message_id=message.id)  # catching up: after what the stream says we missed
        if message.id > self._last_ids.get(key, 0) and key in self._pins:
            self._last_ids[key] = message.id
        catchers = self._catchers.get(key)
        if catchers:
            for caught in catchers:
                caught.append((message.id, recipient, message))
        return self.local.route(app_id, recipient, message)

    def message(self, channel: str, data: str) -> None:
        """A message published by any node (our own ones are routed already), or presence."""
        key = self._channels.get(channel)
        if key is None:
            if channel == self.presence.channel:
                self.presence.received(data)
            return
        stream_id, _, payload = data.partition(" ")
        if payload.startswith(self._own_prefix):  # ours: routed when Redis answered
            return
        try:
            message_id = stream_id_to_int(stream_id)
            _, recipient, plaintext = decode_payload(key[1], payload)
        except (ValueError, KeyError, TypeError) as e:
            self.log.warn("ignored a malformed message on Redis channel {channel}: {error}", channel=channel, error=str(e))
            return
        self.received += 1
        self._route(key[0], recipient, Outbound.rendered(plaintext, message_id))

    # -- recovery: a web client resuming -----------------------------------------------------

    def replay(self, session: Session, since: int | None) -> Deferred[Replay]:
        key = (session.app_id, session.ib_id)
        cmd = self.link.commands
        if cmd is None or not self.link.up:
            # Redis is away: subscribe now, say what may be missing.
            resume = self._last_ids.get(key, 0)
            return succeed(Replay(since if since is not None and since != resume else None, (), resume))
        self._want(*key)
        caught: list[Caught] = []

        def catch(_: object) -> Deferred[None]:
            self._catchers.setdefault(key, []).append(caught)
            return self._subscribed(self.channel(*key))

        def read(_: object) -> Deferred[Reply]:
            start = int_to_stream_id(since) if since is not None else "0-0"
            count = self.recovery_messages + 200 if since is not None else 0
            return maybeDeferred(cmd.eval, REPLAY_SCRIPT, [self.stream(*key)], [start, self.recovery_window_ms, count])

        def done(reply: Reply) -> Replay:
            return self._backlog(session, since, reply, caught)

        def cleanup(result: Replay | Failure) -> Replay | Failure:
            catchers = self._catchers.get(key)
            if catchers is not None and caught in catchers:
                catchers.remove(caught)
                if not catchers:
                    del self._catchers[key]
            # after the caller attached the session (same turn): the channel stays subscribed
            self.reactor.callLater(0, self._unwant, *key)
            return result

        def failed(failure: Failure) -> Replay:
            self.log.warn(
                "cannot read the recovery stream of app={app_id} ib={ib_id} from Redis: {error}",
                app_id=key[0],
                ib_id=key[1],
                error=failure.getErrorMessage(),
            )
            resume = self._last_ids.get(key, 0)
            return Replay(since if since is not None else None, (), resume)

        subscribed = _deadline(self._ungated(key).addCallback(catch), self.reactor)
        replay = subscribed.addCallback(read).addCallback(done).addErrback(failed)
        return replay.addBoth(cleanup)

    def _backlog(self, session: Session, since: int | None, reply: Reply, caught: list[Caught]) -> Replay:
        app_id = session.app_id
        return replay_backlog(
            read_stream(session.ib_id, since, reply), since, caught, lambda recipient: reaches(app_id, recipient, session, self._members)
        )

    # -- recovery: this node after an outage -------------------------------------------------

    def _gate_all(self) -> None:
        """The subscriber connection is back after an outage: queue every channel's messages until its stream is read."""
        for key in set(self._channels.values()):
            if key in self._last_ids:
                self._gates.close(key)
            else:
                self.log.warn(
                    "hub: app={app_id} ib={ib_id}: this node did not know where its stream stood (its first session there came "
                    "during the outage or just before): messages sent there during the outage are not replayed",
                    app_id=key[0],
                    ib_id=key[1],
                )

    def _catch_up(self, key: Key) -> None:
        """Read what the stream of ``key`` got after the last id routed here, then open its gate."""
        cmd = self.link.commands
        if cmd is None or key in self._gates.reading or key not in self._gates or self.channel(*key) not in self._confirmed:
            return  # again when the commands connection is back, or the channel confirmed
        self._gates.reading.add(key)
        since = self._last_ids.get(key, 0)
        d = maybeDeferred(
            cmd.eval, REPLAY_SCRIPT, [self.stream(*key)], [int_to_stream_id(since), self.recovery_window_ms, self.recovery_messages + 200]
        )
        _deadline(d, self.reactor).addCallbacks(self._stream_read, self._stream_unread, callbackArgs=(key, since), errbackArgs=(key,))

    def _stream_read(self, reply: Reply, key: Key, since: int) -> None:
        if key not in self._gates.reading:
            return
        read = read_stream(key[1], since, reply)
        if read.missed is not None:
            self.log.warn(
                "hub: app={app_id} ib={ib_id}: this node was cut off from Redis longer than the recovery window: "
                "messages after id {since} up to {floor} are lost for its sessions",
                app_id=key[0],
                ib_id=key[1],
                since=since,
                floor=read.missed,
            )
        self._open(key, [(i, r, Outbound.rendered(p, i)) for i, r, p in read.entries])

    def _stream_unread(self, failure: Failure, key: Key) -> None:
        if key not in self._gates.reading:
            return
        self.log.warn(
            "hub: app={app_id} ib={ib_id}: cannot read what was sent during the outage ({error}); it is lost for this node's sessions",
            app_id=key[0],
            ib_id=key[1],
            error=failure.getErrorMessage(),
        )
        self._open(key, [])

    def _open(self, key: Key, missed: list[Caught]) -> None:
        """Route the stream's entries and the queued messages, merged by id, each once; then route live again."""
        read_up_to = missed[-1][0] if missed else 0
        for message_id, recipient, message in self._gates.open(key, self._last_ids.get(key, 0), missed):
            if message_id <= read_up_to:
                self.replayed += 1
                self._caught_up += 1
            self._route(key[0], recipient, message)
        self._gate_opened(key)

    def _gate_opened(self, key: Key) -> None:
        for waiter in self._gate_waiters.pop(key, []):
            if not waiter.called:  # not timed out
                waiter.callback(None)
        if not self._gates and self._cut:
            self._cut = False
            self._cancel_catch_up_deadline()
            if self.link.up:
                self.log.info(
                    "hub: caught up after the outage: {count} messages sent meanwhile went to this node's sessions",
                    count=self._caught_up,
                )
            self._caught_up = 0

    def _give_up_catching_up(self) -> None:
        """A channel could not be read back in time (a subscription Redis never confirmed): route live again without it."""
        self._catch_up_deadline = None
        if not self.link.up:
            return  # the next connection starts over
        for key in self._gates:
            self.log.warn(
                "hub: app={app_id} ib={ib_id}: could not read what was sent during the outage within {timeout} s; it is lost for this node's sessions",
                app_id=key[0],
                ib_id=key[1],
                timeout=CATCH_UP_TIMEOUT,
            )
            self._open(key, [])

    def _cancel_catch_up_deadline(self) -> None:
        if self._catch_up_deadline is not None and self._catch_up_deadline.active():
            self._catch_up_deadline.cancel()
        self._catch_up_deadline = None

    def _ungated(self, key: Key) -> Deferred[None]:
        if key not in self._gates:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._gate_waiters.setdefault(key, []).append(d)
        return d

    # -- the link's events -------------------------------------------------------------------

    def connection_up(self, role: str, conn: RedisConnection) -> None:
        if role == "commands":
            for key in self._gates:
                self._catch_up(key)
            return
        self._confirmed = set()
        if self._cut:
            self._gate_all()
            if not self._gates:
                self._cut = False  # nothing to read back
            else:
                self._cancel_catch_up_deadline()
                self._catch_up_deadline = self.reactor.callLater(CATCH_UP_TIMEOUT, self._give_up_catching_up)
        self.presence.subscriber_up(conn)
        for channel in list(self._channels):
            self._subscribe(conn, channel)

    def connection_down(self, role: str) -> None:
        if role == "subscriber":
            self._confirmed = set()
            if not self._closing:
                self._cut = True  # what is published until we are back is read from the streams
        self._gates.reading.clear()  # a read in flight is lost with its connection: read again
        self.presence.lost(role)

    def link_up(self, reconnected: bool) -> None:
        if reconnected:
            self.log.info(
                "hub: resubscribing to {channels} channels; catching up on {gated} of them",
                channels=len(self._channels),
                gated=len(self._gates),
            )
        self.presence.sync()

    def link_down(self) -> None:
        pass

    # -- life ------------------------------------------------------------------------------------

    def start(self) -> None:
        self.link.start()
        self.presence.start()
        self.log.info("hub: Redis at {url} as node {node}", url=self.url.describe(), node=self.member)

    def status(self) -> tuple[bool, str]:
        """For ``/ready``."""
        if self.ready:
            return True, "ready"
        if self.link.up:
            return False, f"hub catching up after an outage of Redis at {self.url.describe()}"
        return False, f"hub {'connecting to' if self.link.state == 'connecting' else 'lost'} Redis at {self.url.describe()}"

    def close(self) -> Deferred[None]:
        """Leave: remove our presence (the others forget us at once), close the connections."""
        self._closing = True
        self._cancel_catch_up_deadline()
        self.presence.stop()
        d = self.presence.bye()
        d.addCallback(lambda _: self.link.close())
        # a stuck Redis does not hold the stop up
        return _deadline(d, self.reactor).addCallbacks(lambda _: None, lambda _: None)

    def metric_families(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        yield GaugeMetricFamily(
            "pns4ones_hub_connected", "1 while the hub between nodes (Redis) is connected", value=1 if self.link.up else 0
        )
        published = CounterMetricFamily("pns4ones_hub_publishes", "Messages published to Redis by this node, by result", labels=["result"])
        published.add_metric(["ok"], self.published)
        published.add_metric(["failed"], self.publish_failures)
        yield published
        yield CounterMetricFamily("pns4ones_hub_received", "Messages received from other nodes through Redis", value=self.received)
        yield CounterMetricFamily(
            "pns4ones_hub_replayed",
            "Messages this node read from the streams after an outage of its link to Redis and routed to its sessions",
            value=self.replayed,
        )
        yield GaugeMetricFamily("pns4ones_hub_nodes", "Other nodes this node sees in the hub's presence", value=len(self.mirror))
