"""
The native add-in's subscription protocol over TCP: a thin adapter around
:mod:`pns4ones.wire` and :class:`pns4ones.core.Core`.

* Inbound framing: ``IntNStringReceiver`` with a ``<H`` prefix and a bound.
* A connection must register within ``registration_timeout``; a later complete
  frame is a re-registration (as the original did).
* Outbound: the transport tells us (producer/consumer) when its buffer is full;
  what is queued beyond that is bounded by ``send_buffer_limit``, past which the
  slow reader is cut off, so it never holds up anybody else.
* TCP keepalive with short timings finds peers that vanished (sleeping laptops).

Invariants: a connection joins the hub only through ``Core.subscribe`` after
an accepted registration and leaves through ``Core.unsubscribe`` (a new
registration, ``end``, a lost connection, a cut-off reader, a rejected
frame); ``keys`` is set exactly while it is subscribed.  While it joins,
``deliver`` queues in ``_held``, bounded like the transport's buffer.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from twisted.internet import protocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.tcp import Server
from twisted.logger import Logger
from twisted.protocols.basic import IntNStringReceiver
from zope.interface import implementer

from .. import wire
from ..config import Config
from ..core import Core, RegistrationRejected
from ..hub import Catchup, Outbound, next_session_id
from ..logs import RateLimited, session_fields
from ..metrics import NULL
from ..txinternals import send_now, set_handed_over, take_output, unparsed_input
from ..wire import ClientKey


def configure_socket(sock: socket.socket, cfg: Config) -> None:
    """
    Keepalive with short timings, no Nagle delay, and a user timeout for
    unacknowledged data to a vanished peer.  Set on the listening socket, Linux
    copies these options to every accepted connection (no syscalls per client).
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, cfg.keepalive_idle)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, cfg.keepalive_interval)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, cfg.keepalive_count)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 1000 * (cfg.keepalive_idle + cfg.keepalive_interval * cfg.keepalive_count))


def peer_host(transport: Any) -> str:
    peer = transport.getPeer()
    host = getattr(peer, "host", str(peer))
    if host.startswith("::ffff:"):
        host = host[7:]
    return host


def key_fingerprint(key: ClientKey) -> str:
    """Which client key a subscription registered with, without the secret (a restart handoff checks it is still valid)."""
    return hashlib.sha256(b"pns4ones-key-id" + key.key + key.iv).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class AddinState:
    """
    One add-in connection as it moves to another process (a restart handoff):
    its subscription, or as much of its registration as it has sent.
    """

    peer: str
    #: Registered: the subscription and which client key it registered with (:func:`key_fingerprint`); all "" while registering.
    app_id: str = ""
    ib_id: str = ""
    user_id: str = ""
    group: str = ""
    key: str = ""
    #: Bytes received and not yet parsed: the start of a (re-)registration frame.
    inbound: bytes = b""
    #: Registering: seconds left until its registration deadline (None once registered).
    registration_left: float | None = None


@implementer(IPushProducer)
class AddinProtocol(IntNStringReceiver):
    """
    One add-in connection; a :class:`pns4ones.hub.Session` once registered: it
    joins with ``Core.subscribe`` after each accepted registration and leaves
    with ``Core.unsubscribe`` (re-registration, end, connection lost, cut off).
    """

    structFormat = "<H"
    prefixLength = 2
    transport_name = "tcp"
    log = Logger()

    factory: AddinFactory
    app_id = ib_id = user_id = group = ""
    keys: ClientKey | None = None
    peer = ""
    session_id = ""
    #: Always this node's (a handed-over connection is this process's once adopted).
    node: str | None = None
    #: Messages written (or queued) to the connection.
    delivered = 0
    _paused = False
    _backlog = 0
    _ended = False
    #: Live messages held while the subscription joins (kept messages come first).
    _held: list[Outbound] | None = None
    _held_bytes = 0
    connected_at = 0.0

    @property
    def groups(self) -> tuple[str, ...]:
        """The add-in registers with one group at most."""
        return (self.group,) if self.group else ()

    def connectionMade(self) -> None:
        factory = self.factory
        self.session_id = next_session_id(self.transport_name)
        self.peer = peer_host(self.transport)
        self.connected_at = factory.clock.seconds()
        self.MAX_LENGTH = factory.config.max_registration_size
        if factory.adopting:  # handed over by the previous process (socket options kept): handoff.py restores the rest
            factory.connections.add(self)
            self.transport.registerProducer(self, True)
            return
        if not factory.admit(self):
            self.transport.abortConnection()
            return
        factory.connections.add(self)
        self._set_keepalive()
        self.transport.registerProducer(self, True)
        factory.awaiting_registration(self)

    def _set_keepalive(self) -> None:
        if not self.factory.listener_configured:
            try:
                configure_socket(self.transport.getHandle(), self.factory.config)
            except (AttributeError, OSError):
                pass  # not a real TCP socket (tests over memory transports)

    def registration_timed_out(self) -> None:
        self.factory.warn(
            "registration-timeout",
            "add-in client {peer} sent no registration within {timeout} s: closed",
            peer=self.peer,
            timeout=self.factory.config.registration_timeout,
        )
        self.factory.metrics.cut("idle")
        self.transport.abortConnection()

    # -- inbound -----------------------------------------------------------------------

    def lengthLimitExceeded(self, length: int) -> None:
        self.factory.reject(self, "oversized", f"registration frame of {length} bytes exceeds {self.MAX_LENGTH}")

    def stringReceived(self, payload: bytes) -> None:
        if self._ended:
            return
        try:
            registration = wire.parse_registration(payload)
        except wire.WireError as e:
            self.factory.reject(self, e.reason, e.detail)
            return
        core = self.factory.core
        if self.keys is not None:  # a re-registration replaces the previous one
            core.unsubscribe(self)
            self.keys = None
        self.app_id, self.ib_id = registration.app_id, registration.ib_id
        self.user_id, self.group = registration.user_id, registration.group
        try:
            app = core.register(registration)
        except RegistrationRejected as e:
            self.factory.reject(self, e.reason, e.detail)
            return
        self.keys = app.client_key
        core.subscribe(self)
        self.factory.registered(self)
        self.factory.metrics.registration_accepted()
        if self.factory.log_info:
            self.log.info(
                "subscription registered: peer={peer} app={app_id} ib={ib_id} user={user_id} group={group} transport=tcp",
                **session_fields(self),
                group=self.group,
                event="registered",
            )

    def connectionLost(self, reason: Any = None) -> None:
        self._ended = True
        self.factory.connections.discard(self)
        self.factory.registered(self)
        if self.keys is not None:
            self.factory.core.unsubscribe(self)
            if self.factory.log_info:
                self.log.info(
                    "subscription ended: peer={peer} app={app_id} ib={ib_id} user={user_id} group={group} transport=tcp",
                    **session_fields(self),
                    group=self.group,
                    event="ended",
                )
            self.keys = None

    # -- outbound (Session) ---------------------------------------------------------------

    def deliver(self, message: Outbound) -> bool:
        keys = self.keys
        if keys is None or self._ended:
            return False
        frame = message.addin_frame(keys)
        if self._held is not None:
            self._held_bytes += len(frame)
            if self._held_bytes > self.factory.config.send_buffer_limit:
                self.factory.slow_reader(self)
                return False
            self._held.append(message)
            return True
        self.delivered += 1
        if self._paused:
            self._backlog += len(frame)
            if self._backlog > self.factory.config.send_buffer_limit:
                self.factory.slow_reader(self)
                return False
        elif send_now(self.transport, frame):
            return True
        self.transport.write(frame)
        return True

    def hold(self) -> None:
        """Buffer live messages until :meth:`release` (kept messages come first)."""
        self._held = []
        self._held_bytes = 0

    def release(self, catchup: Catchup) -> None:
        """Write the catch-up (kept messages, oldest first; the add-in never resumes, so no replay), then what was held."""
        held = self._held or []
        self._held = None
        for message in catchup.messages():
            if not self.deliver(message):
                return
        for message in held:
            if not self.deliver(message):
                return

    def end(self, reason: str) -> None:
        """Close after writing what is queued (key rotated, removed, shutdown)."""
        if self._ended:
            return
        self._ended = True
        if self.keys is not None:
            self.factory.core.unsubscribe(self)
        self.transport.loseConnection()

    def going_away(self, reason: str) -> None:
        """The process stops serving it: the add-in has nothing to be told (it reconnects on its own), so this ends it."""
        self.end(reason)

    # -- restart handoff -------------------------------------------------------------------

    @property
    def reading_kept(self) -> bool:
        """Kept messages are being read for this subscription (a handoff waits until they are written)."""
        return self._held is not None

    def export_state(self) -> tuple[AddinState, bytes] | None:
        """
        Freeze this connection for a restart handoff and say what it is: it stops
        reading and writing, leaves the hub and the registration clock, and gives
        up the bytes queued for it and not sent yet (``pending``: whole frames and
        the tail of one alike; the new owner writes them first).  Then either
        :meth:`handed_over` or :meth:`take_back`.  None when it is closing anyway.
        """
        transport = self.transport
        if self._ended or not isinstance(transport, Server) or transport.disconnecting or not transport.connected:
            return None
        factory = self.factory
        deadline = factory.registered(self)
        pending = take_output(transport)
        if self.keys is not None:
            factory.core.unsubscribe(self)
        left = None if deadline is None else max(0.0, deadline - factory.clock.seconds())
        key = key_fingerprint(self.keys) if self.keys is not None else ""
        inbound = unparsed_input(self)
        return AddinState(self.peer, self.app_id, self.ib_id, self.user_id, self.group, key, inbound, left), pending

    def _tcp(self) -> Server:
        """The TCP connection (export_state returned a state: it is one)."""
        transport = self.transport
        if not isinstance(transport, Server):
            raise TypeError(f"not a TCP connection: {transport!r}")
        return transport

    def handed_over(self) -> None:
        """Another process owns the socket now: forget it here, and never shut it down (this process exits without touching it)."""
        self._ended = True
        set_handed_over(self._tcp(), True)
        self.factory.connections.discard(self)

    def take_back(self, state: AddinState, pending: bytes) -> None:
        """The handoff failed: serve this connection again as before :meth:`export_state`, its queued bytes first."""
        transport = self._tcp()
        set_handed_over(transport, False)
        self._ended = False
        factory = self.factory
        factory.connections.add(self)
        transport.startReading()
        if pending:
            transport.write(pending)
        if self.keys is not None:
            factory.core.adopt(self)
        elif state.registration_left is not None:
            factory.awaiting_registration(self, state.registration_left)

    def adopt(self, state: AddinState, pending: bytes) -> bool:
        """
        Continue a connection another process handed over: write what it had
        queued first, then attach its subscription again (ended instead when its
        application was removed or its client key changed meanwhile: False), or
        let it finish registering with what it had sent and the time it had left.
        """
        if pending:
            self._tcp().write(pending)
        self.peer = state.peer or self.peer
        factory = self.factory
        if state.key:
            self.app_id, self.ib_id, self.user_id, self.group = state.app_id, state.ib_id, state.user_id, state.group
            app = factory.core.apps.get(state.app_id)
            if app is None or key_fingerprint(app.client_key) != state.key:
                self.end("application removed or client key changed")
                return False
            self.keys = app.client_key
            factory.core.adopt(self)
        else:
            factory.awaiting_registration(self, state.registration_left)
        if state.inbound:
            self.dataReceived(state.inbound)
        return True

    # IPushProducer: the transport's buffer is full / drained.
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._backlog = 0

    def stopProducing(self) -> None:
        pass


class AddinFactory(protocol.Factory):
    protocol = AddinProtocol
    log = Logger()
    noisy = False
    adopting = False
    metrics = NULL

    def __init__(self, core: Core, config: Config, clock: Any, log_info: bool = True) -> None:
        self.core = core
        self.config = config
        self.clock = clock
        self.connections: set[AddinProtocol] = set()
        #: Info-level events only when they are shown (each costs several µs).
        self.log_info = log_info
        #: True once the listening socket carries the keepalive options.
        self.listener_configured = False
        # Connections that have not registered yet, oldest first, with their deadline.
        self._pending: dict[AddinProtocol, float] = {}
        self._sweeper: Any = None
        self._limited = RateLimited(clock, 10.0)
        self._allow = config.service_allow

    def awaiting_registration(self, proto: AddinProtocol, timeout: float | None = None) -> None:
        """Start the registration clock, ``registration_timeout`` or ``timeout`` (one periodic sweep, not a timer per client)."""
        self._pending[proto] = self.clock.seconds() + (self.config.registration_timeout if timeout is None else timeout)
        if self._sweeper is None or not self._sweeper.active():
            self._sweeper = self.clock.callLater(min(1.0, self.config.registration_timeout), self._sweep)

    def registered(self, proto: AddinProtocol) -> float | None:
        """Stop its registration clock; the deadline it had, if any."""
        return self._pending.pop(proto, None)

    def _sweep(self) -> None:
        now = self.clock.seconds()
        for proto, deadline in list(self._pending.items()):
            if deadline > now:
                break  # in insertion order, so the rest are younger
            del self._pending[proto]
            proto.registration_timed_out()
        self._sweeper = None
        if self._pending:
            first = next(iter(self._pending.values()))
            self._sweeper = self.clock.callLater(max(0.05, min(1.0, first - now)), self._sweep)

    def stop(self) -> None:
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None

    def warn(self, key: str, fmt: str, **fields: Any) -> None:
        def emit(suppressed: int) -> None:
            more = f" ({suppressed} more like it in the last interval)" if suppressed else ""
            self.log.warn(fmt + more, **fields)

        self._limited(key, emit)

    def admit(self, proto: AddinProtocol) -> bool:
        if self._allow:
            try:
                ip = ipaddress.ip_address(proto.peer)
            except ValueError:
                ip = None
            if ip is None or not any(ip in net for net in self._allow):
                self.warn(
                    "not-allowed",
                    "add-in client {peer} is not in service_allow: closed",
                    peer=proto.peer,
                    event="rejected",
                    reason="not-allowed",
                )
                self.metrics.registration_rejected("not-allowed")
                return False
        limit = self.config.max_subscriptions
        if limit and len(self.connections) >= limit:
            self.warn(
                "limit",
                "max_subscriptions={limit} reached: refusing add-in client {peer}",
                limit=limit,
                peer=proto.peer,
                event="rejected",
                reason="limit",
            )
            self.metrics.registration_rejected("limit")
            return False
        return True

    def reject(self, proto: AddinProtocol, reason: str, detail: str) -> None:
        self.warn(
            "reject:" + reason,
            "rejected add-in registration from {peer}: {detail}",
            peer=proto.peer,
            detail=detail,
            reason=reason,
            event="rejected",
            app_id=proto.app_id,
            ib_id=proto.ib_id,
        )
        self.metrics.registration_rejected(reason)
        proto._ended = True
        if proto.keys is not None:
            self.core.unsubscribe(proto)
            proto.keys = None
        proto.transport.abortConnection()

    def slow_reader(self, proto: AddinProtocol) -> None:
        self.warn(
            "slow",
            "subscriber {peer} (app={app_id} ib={ib_id} user={user_id}) is not reading: over {limit} bytes queued, cut off",
            **session_fields(proto),
            limit=self.config.send_buffer_limit,
            event="slow-reader",
        )
        self.metrics.cut("slow-reader")
        proto._ended = True
        if proto.keys is not None:
            self.core.unsubscribe(proto)
        proto.transport.abortConnection()

    def end_all(self, reason: str) -> None:
        self.stop()
        for proto in list(self.connections):
            proto.end(reason)
