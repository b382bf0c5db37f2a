"""
Presence over the link: this node's summary out (batched changes, full
summaries, heartbeats) and the others' in, driving the pure
:class:`~.presence.OwnPresence` and :class:`~.presence.Mirror` with Redis I/O.

Keys: ``{P}node:{member}`` (a hash with a short expiry: the node's fields and
``~seq``), ``{P}nodes`` (members by expiry time), channel ``{P}presence``.

Invariants: the node says anything only once it is synced (both connections
up, the presence channel confirmed, and every channel of its sessions
confirmed, so it receives what it claims to be there for); after any loss the
next update is full.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from twisted.internet import task
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..interface import Clock
from .link import Link, RedisConnection
from .presence import BYE_SCRIPT, PRESENCE_SCRIPT, Mirror, OwnPresence
from .stream import Reply

#: Presence changes are batched this long (seconds).
PRESENCE_BATCH = 0.1


class PresenceSync:
    """One node's presence in Redis and its mirror of the others'."""

    log = Logger()

    def __init__(self, link: Link, clock: Clock, member: str, prefix: str, expiry: float, receiving: Callable[[], bool]) -> None:
        self.link = link
        self.clock = clock
        self.member = member
        self.expiry = expiry
        #: Whether the node receives every channel it has sessions on (it waits for that before it says so).
        self._receiving = receiving
        self.channel = prefix + "presence"
        self.nodes_key = prefix + "nodes"
        self.prefix = prefix
        self.own_key = prefix + "node:" + member
        self.own = OwnPresence(member)
        self.mirror = Mirror(member, clock, expiry)
        self._subscribed = False
        self._synced = False
        self._flush_call: IDelayedCall | None = None
        self._loops: list[task.LoopingCall] = []

    def start(self) -> None:
        for call, interval in ((self.expire, 1.0), (self.heartbeat, max(0.2, self.expiry / 3))):
            loop = task.LoopingCall(call)
            loop.clock = self.clock  # type: ignore[assignment]  # (typed as IReactorTime)
            loop.start(interval, now=False)
            self._loops.append(loop)

    def stop(self) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops = []
        self._cancel_flush()

    def bye(self) -> Deferred[None]:
        """Remove this node's presence; the others forget it at once. Never fails."""
        cmd = self.link.commands
        if cmd is None:
            return succeed(None)
        bye = json.dumps({"n": self.member, "bye": 1})
        d = maybeDeferred(cmd.eval, BYE_SCRIPT, [self.own_key, self.nodes_key], [self.member, self.channel, bye])
        return d.addCallbacks(lambda _: None, lambda _: None)

    # -- the link -------------------------------------------------------------------------

    def subscriber_up(self, conn: RedisConnection) -> None:
        self._subscribed = False

        def subscribed(_: object) -> None:
            if conn is self.link.subscriber:
                self._subscribed = True
                self.sync()

        maybeDeferred(conn.subscribe, self.channel).addCallbacks(subscribed, lambda _: None)

    def lost(self, role: str) -> None:
        if role == "subscriber":
            self._subscribed = False
        self._synced = False
        self.own.need_full = True
        self._cancel_flush()

    def sync(self) -> None:
        """Both connections up and the channel subscribed: publish our whole presence, read everybody's."""
        cmd = self.link.commands
        if cmd is None or self.link.subscriber is None or not self._subscribed or self._synced:
            return
        self._synced = True
        self.own.need_full = True
        self.flush(full=True)

        def members(names: Reply) -> None:
            self._load(self.mirror.known(names or ()))

        maybeDeferred(cmd.execute_command, "ZRANGE", self.nodes_key, 0, -1).addCallbacks(members, lambda _: None)

    # -- ours out -------------------------------------------------------------------------

    def changed(self) -> None:
        """Our summary changed: say so within :data:`PRESENCE_BATCH`."""
        if self._flush_call is None and self.link.up and self._synced:
            self._flush_call = self.clock.callLater(PRESENCE_BATCH, self.flush)

    def _cancel_flush(self) -> None:
        if self._flush_call is not None and self._flush_call.active():
            self._flush_call.cancel()
        self._flush_call = None

    def flush(self, full: bool = False, heartbeat: bool = False) -> Deferred[None]:
        self._flush_call = None
        cmd = self.link.commands
        if cmd is None or not self.link.up:
            self.own.failed()
            return succeed(None)
        if not self._receiving():
            # presence only once the node receives the information bases' messages
            self._flush_call = self.clock.callLater(PRESENCE_BATCH, self.flush)
            return succeed(None)
        update = self.own.update(full, heartbeat)
        if update is None:
            return succeed(None)
        args: list[str | int] = [self.member, int(self.expiry * 1000), self.channel, update.doc, "1" if update.full else "0", update.seq]
        for field, n in update.fields.items():
            args.append(field)
            args.append(n)

        def failed(failure: Failure) -> None:
            self.own.failed()
            self.log.debug("presence update failed: {error}", error=failure.getErrorMessage())

        d = maybeDeferred(cmd.eval, PRESENCE_SCRIPT, [self.own_key, self.nodes_key], args)
        return d.addCallbacks(lambda _: None, failed)

    def heartbeat(self) -> None:
        if self.link.up and self._synced:
            self.flush(heartbeat=True)

    # -- theirs in ------------------------------------------------------------------------

    def expire(self) -> None:
        for name in self.mirror.expire():
            self.log.info("hub: node {node} not heard from for {expiry} s: dropped from presence", node=name, expiry=self.expiry)

    def received(self, data: str) -> None:
        """A publication on the presence channel."""
        try:
            doc = json.loads(data)
            if doc.get("bye") and doc["n"] != self.member:
                if self.mirror.forget(doc["n"]):
                    self.log.info("hub: node {node} left (presence)", node=doc["n"])
                return
            self._load(self.mirror.received(doc))
        except (ValueError, KeyError, TypeError, AttributeError):
            return

    def _load(self, names: Iterable[str]) -> None:
        """Read other nodes' whole summaries (new to us, or we missed some of their changes)."""
        for name in names:
            cmd = self.link.commands
            if cmd is None:
                self.mirror.load_failed(name)
                continue

            def loaded(values: Reply, name: str = name) -> None:
                if isinstance(values, list):
                    values = dict(zip(values[::2], values[1::2]))
                try:
                    self._load(self.mirror.loaded(name, dict(values or {})))
                except (ValueError, TypeError):
                    self.mirror.load_failed(name)

            def failed(_: Failure, name: str = name) -> None:
                self.mirror.load_failed(name)

            maybeDeferred(cmd.execute_command, "HGETALL", self.prefix + "node:" + name).addCallbacks(loaded, failed)
