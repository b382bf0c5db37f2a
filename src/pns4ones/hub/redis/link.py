"""
The link to Redis: two connections (commands; subscriber), each reconnected
with backoff, and the link's state, which the hub hears about through
:class:`LinkEvents`.

States: ``connecting`` (never up yet) -> ``up`` (both connections usable) <->
``down`` (one was lost; reconnecting).  Each change is logged once: a failed
attempt is said once until the link is up again.

Invariants:

* ``commands`` and ``subscriber`` are the usable connections or None; the
  state is ``up`` exactly when both are set and the link is not closing.
* A connection that owes replies and has said nothing for
  :data:`REPLY_TIMEOUT` seconds is aborted (a stopped Redis, a dead path):
  one timestamp per connection, checked once a second, not a timer per command.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

import txredisapi
from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    ITCPTransport,
    ITransport,
)
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from twisted.python.failure import Failure

from ...txinternals import send_now
from ..interface import Clock
from .stream import Reply
from .url import RedisURL

#: Seconds Redis has to answer a command before the connection counts as lost.
REPLY_TIMEOUT = 3.0
#: Reconnection backoff, seconds.
INITIAL_DELAY = 0.5
MAX_DELAY = 5.0


class RedisConnection(Protocol):
    """
    What the hub does with one connection to Redis (txredisapi's protocol
    classes, which publish no types).  A command on a connection that has just
    been lost raises ``txredisapi.ConnectionError`` at once: call it through
    ``maybeDeferred``.
    """

    @property
    def transport(self) -> ITCPTransport: ...
    def overdue(self, now: float) -> bool:
        """It owes replies and has said nothing for :data:`REPLY_TIMEOUT` seconds."""

    def eval(self, script: str, keys: Sequence[str], args: Sequence[str | bytes | int]) -> Deferred[Reply]: ...
    def execute_command(self, *args: str | bytes | int) -> Deferred[Reply]: ...
    def subscribe(self, channels: str) -> Deferred[Reply]: ...
    def unsubscribe(self, channels: str) -> Deferred[Reply]: ...


class LinkEvents(Protocol):
    """What the hub hears from its link."""

    def connection_up(self, role: str, conn: RedisConnection) -> None:
        """A connection (``commands`` or ``subscriber``) is usable (the subscriber: subscribe now)."""

    def connection_down(self, role: str) -> None:
        """A connection was lost."""

    def link_up(self, reconnected: bool) -> None:
        """Both connections are usable; ``reconnected``: after an outage (not the first time)."""

    def link_down(self) -> None:
        """The link was up and a connection was lost."""

    def message(self, channel: str, data: str) -> None:
        """A pub/sub message."""


class _DirectWrites:
    """The connection's transport, writing straight to the socket when nothing is queued (see :func:`pns4ones.txinternals.send_now`)."""

    __slots__ = ("_transport",)

    def __init__(self, transport: Connection) -> None:
        self._transport = transport

    def write(self, data: bytes) -> None:
        if not send_now(self._transport, data):
            self._transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


class _Watched(txredisapi.RedisProtocol):
    """
    Direct writes, readiness, and the reply deadline of one connection: the
    base of both kinds (before txredisapi's subscriber protocol in the
    subscriber's method order).
    """

    factory: _Factory
    waiting_since = 0.0
    #: AUTH and SELECT done: the connection can be used.
    usable = False

    def makeConnection(self, transport: ITransport) -> None:
        # plain TCP only: a TLS wrapper must see every byte
        super().makeConnection(_DirectWrites(transport) if isinstance(transport, Connection) else transport)
        self.whenConnected().addCallback(self._usable)

    def _usable(self, _: object) -> None:
        self.usable = True

    def execute_command(self, *args: str | bytes | int, **kwargs: bool) -> Deferred[Reply]:
        if not self.replyQueue.waiting:
            self.waiting_since = self.factory.link.clock.seconds()
        d: Deferred[Reply] = super().execute_command(*args, **kwargs)
        return d

    def replyReceived(self, reply: Reply) -> None:
        self.waiting_since = self.factory.link.clock.seconds()
        super().replyReceived(reply)

    def connectionLost(self, why: Failure) -> None:
        if not self.usable:
            # never usable: TLS handshake, authentication or SELECT failed
            self.factory.link.attempt_failed(self.factory.role, why.getErrorMessage())
        super().connectionLost(why)

    def overdue(self, now: float) -> bool:
        return bool(self.replyQueue.waiting) and now - self.waiting_since > REPLY_TIMEOUT


class _Commands(_Watched):
    pass


class _Subscriber(_Watched, txredisapi.SubscriberProtocol):
    def messageReceived(self, pattern: str | None, channel: str, message: str) -> None:
        self.factory.link.events.message(channel, message)


class _Factory(txredisapi.RedisFactory):
    """One connection, reconnected with backoff; tells the link when it is usable and when lost."""

    protocol = _Commands

    initialDelay = INITIAL_DELAY
    maxDelay = MAX_DELAY

    def __init__(self, link: Link, role: str, url: RedisURL) -> None:
        super().__init__(
            url.describe(), url.db, 1, isLazy=True, password=url.password, replyTimeout=None, convertNumbers=False, username=url.username
        )
        self.link = link
        self.role = role
        self.deferred.addErrback(self._refused)

    def _refused(self, failure: Failure) -> None:
        self.link.refused(self.role, failure.getErrorMessage())

    def stopTrying(self) -> Deferred[None]:
        """
        txredisapi gives up for good when AUTH or SELECT fails, also when the
        connection merely dropped meanwhile (Redis restarting, loading): keep
        retrying with backoff instead; :meth:`Link.close` disconnects.
        """
        return succeed(None)

    def addConnection(self, conn: _Watched) -> None:
        super().addConnection(conn)
        if conn.connected and not self.disconnectCalled:
            self.link.connected(self.role, conn)

    def delConnection(self, conn: _Watched) -> None:
        super().delConnection(conn)
        self.link.lost(self.role, conn)


class _SubscriberFactory(_Factory):
    protocol = _Subscriber


class _Endpoint:
    """The Redis endpoint, telling the link when a connection attempt fails."""

    def __init__(self, endpoint: IStreamClientEndpoint, link: Link, role: str) -> None:
        self.endpoint = endpoint
        self.link = link
        self.role = role

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        def failed(failure: Failure) -> Failure:
            self.link.attempt_failed(self.role, failure.getErrorMessage())
            return failure

        return self.endpoint.connect(factory).addErrback(failed)


class Link:
    """The hub's two connections to Redis and their state."""

    log = Logger()

    def __init__(self, url: RedisURL, clock: Clock, events: LinkEvents) -> None:
        self.url = url
        self.clock = clock
        self.events = events
        self._creator: IOpenSSLClientConnectionCreator | None = url.tls_creator() if url.tls else None
        self.commands: RedisConnection | None = None
        self.subscriber: RedisConnection | None = None
        self.state = "connecting"
        self.down_since = 0.0
        self._failure_logged = False
        self._closing = False
        self._factories: list[_Factory] = []
        self._sweep: task.LoopingCall | None = None

    @property
    def up(self) -> bool:
        return self.state == "up"

    def start(self) -> None:
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

        endpoint: IStreamClientEndpoint = HostnameEndpoint(self.clock, self.url.host, self.url.port, timeout=REPLY_TIMEOUT)
        if self._creator is not None:
            endpoint = wrapClientTLS(self._creator, endpoint)
        for role, factory_class in (("commands", _Factory), ("subscriber", _SubscriberFactory)):
            factory = factory_class(self, role, self.url)
            self._factories.append(factory)
            factory.startConnecting(_Endpoint(endpoint, self, role))
        self._sweep = task.LoopingCall(self.abort_overdue)
        self._sweep.clock = self.clock  # type: ignore[assignment]  # (typed as IReactorTime)
        self._sweep.start(1.0, now=False)

    def close(self) -> Deferred[None]:
        """Disconnect both connections (no reconnection); fires when they are closed."""
        self._closing = True
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        factories, self._factories = self._factories, []
        d = gatherResults([f.disconnect() for f in factories], consumeErrors=True)
        return d.addCallback(lambda _: None)

    def connections(self) -> Iterator[RedisConnection]:
        for conn in (self.commands, self.subscriber):
            if conn is not None:
                yield conn

    def abort_overdue(self) -> None:
        """Drop a connection Redis stopped answering on (it reconnects)."""
        now = self.clock.seconds()
        for conn in list(self.connections()):
            if conn.overdue(now):
                self.log.warn(
                    "hub: Redis at {url} has not answered for {timeout} s: reconnecting", url=self.url.describe(), timeout=REPLY_TIMEOUT
                )
                conn.transport.abortConnection()

    # -- from the factories ---------------------------------------------------------------

    def refused(self, role: str, reason: str) -> None:
        self.log.error(
            "hub: Redis at {url} refused the {role} connection: {reason}; retrying", url=self.url.describe(), role=role, reason=reason
        )
        self._failure_logged = True

    def attempt_failed(self, role: str, reason: str) -> None:
        """A connection attempt failed: said once until the link is up again."""
        if self._failure_logged:
            return
        self._failure_logged = True
        self.log.error(
            "hub: cannot connect to Redis at {url}: {reason}; retrying with backoff (up to {delay:g} s apart)",
            url=self.url.describe(),
            reason=reason,
            delay=MAX_DELAY,
        )

    def connected(self, role: str, conn: RedisConnection) -> None:
        if role == "commands":
            self.commands = conn
        else:
            self.subscriber = conn
        self.events.connection_up(role, conn)
        if self.commands is not None and self.subscriber is not None and self.state != "up" and not self._closing:
            previous = self.state
            self.state = "up"
            self._failure_logged = False
            if previous == "down":
                self.log.info(
                    "hub: reconnected to Redis at {url} after {seconds:.1f} s",
                    url=self.url.describe(),
                    seconds=self.clock.seconds() - self.down_since,
                )
            else:
                self.log.info("hub: connected to Redis at {url}", url=self.url.describe())
            self.events.link_up(previous == "down")

    def lost(self, role: str, conn: RedisConnection) -> None:
        if role == "commands":
            if conn is not self.commands:
                return
            self.commands = None
        else:
            if conn is not self.subscriber:
                return
            self.subscriber = None
        self.events.connection_down(role)
        if self.state == "up" and not self._closing:
            self.state = "down"
            self._failure_logged = True  # the failed attempts of this outage are not news
            self.down_since = self.clock.seconds()
            self.log.error(
                "hub: lost the connection to Redis at {url}: sends answer 503 until it is back; reconnecting", url=self.url.describe()
            )
            self.events.link_down()
