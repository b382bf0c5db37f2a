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
import os
import resource
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from twisted.internet import protocol
from twisted.internet.interfaces import IAddress, IConsumer, IDelayedCall, IPushProducer, ISystemHandle, ITCPTransport, ITransport
from twisted.internet.tcp import Server
from twisted.logger import Logger
from twisted.protocols.basic import IntNStringReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from .. import wire
from ..config import Config
from ..core import Core, RegistrationRejected
from ..hub import Catchup, Clock, Outbound, next_session_id
from ..logs import RateLimited, session_fields
from ..metrics import NULL
from ..proxies import Network
from ..txinternals import close_descriptor, send_now, set_handed_over, take_output, unparsed_input
from ..wire import ClientKey

#: Seconds an unregistered add-in connection must have waited before it is closed to make room for a
#: new one at max_unregistered(_per_address): a real add-in registers within one round trip.
EVICT_AGE = 1.0


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


def peer_host(transport: ITransport) -> str:
    return _host_of(transport.getPeer())


def _host_of(address: IAddress | None) -> str:
    host = getattr(address, "host", str(address))
    if host.startswith("::ffff:"):
        host = host[7:]
    return str(host)


def _allowed(host: str, networks: Iterable[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def descriptor_budget(reserve: int) -> tuple[int, int]:
    """The process's open-file limit and the descriptors to keep free (``reserve``, or 0 for a tenth of the limit, 50 to 1000)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = soft if soft != resource.RLIM_INFINITY and soft > 0 else 1 << 20
    if reserve <= 0:
        reserve = min(1000, max(50, limit // 10))
    return limit, min(reserve, limit // 2)


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


class IAddinTransport(ITCPTransport, IConsumer, ISystemHandle):
    """
    What an add-in connection's transport is: a TCP connection (``tcp.Server``
    provides all three).  Tests use memory transports, which have what this
    module calls but the socket (``getHandle``, whose absence it handles).
    """


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
    transport: IAddinTransport
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
        factory.connections.add(self)
        self._set_keepalive()
        self.transport.registerProducer(self, True)
        factory.awaiting_registration(self)

    def _set_keepalive(self) -> None:
        if not self.factory.listener_configured:
            try:
                handle = self.transport.getHandle()
                if isinstance(handle, socket.socket):
                    configure_socket(handle, self.factory.config)
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

    def connectionLost(self, reason: Failure | None = None) -> None:
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
        :meth:`handed_over` (and :meth:`abandon` should the handoff fail after
        it was committed) or :meth:`take_back`.  None when it is closing anyway.
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

    def abandon(self) -> None:
        """
        The handoff failed after it was committed: close this process's
        descriptor of the connection, writing nothing and without
        ``shutdown()``.  The other process owned the socket and may have written
        to it (the queued bytes, new frames), so this process no longer knows
        where the subscriber's byte stream stands: anything written now (the
        queued bytes again, the next frame) could repeat or cut a frame, which
        the add-in cannot decrypt.  The peer sees the connection end once the
        other process's descriptors are closed too (it is killed), as at any
        disconnection, and registers again when it reconnects.
        """
        self._ended = True
        self.factory.connections.discard(self)
        self.factory.registered(self)
        close_descriptor(self._tcp())

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


class AddinFactory(protocol.Factory[AddinProtocol]):
    """
    The add-in listener's connections, and its bounds before registration.

    Admission happens in :meth:`buildProtocol`, before a transport exists: a
    refused connection is closed by the listener at once (``None``), so a
    flood costs an ``accept()`` and a ``close()`` per connection, never a
    descriptor held.  In order:

    * ``service_allow`` and ``max_subscriptions``;
    * the descriptor reserve: when fewer than ``fd_reserve`` descriptors are
      free below the open-file limit, a new connection is let in only in the
      place of an unregistered one (below), so the send API, the panel,
      ``/health`` and the store keep working.  The check opens and closes
      ``/dev/null`` (it gets the lowest free descriptor) and compares the
      number with the limit: add-in connections never keep one of the top ``fd_reserve``
      descriptors (a hole below them is filled first);
    * connections that have not registered yet, per source address
      (``max_unregistered_per_address``) and in all (``max_unregistered``).

    At a bound, the oldest unregistered connection (of the address, or of
    all) is closed for the newcomer if it has waited over :data:`EVICT_AGE`
    (a real add-in registers within one round trip), else the newcomer is
    refused: connections that never register cannot lock real clients out.

    Refusals are counted (``pns4ones_addin_refused``) and logged rate-limited.
    """

    protocol = AddinProtocol
    log = Logger()
    noisy = False
    adopting = False
    metrics = NULL

    def __init__(self, core: Core, config: Config, clock: Clock, log_info: bool = True) -> None:
        self.core = core
        self.config = config
        self.clock = clock
        self.connections: set[AddinProtocol] = set()
        #: Info-level events only when they are shown (each costs several µs).
        self.log_info = log_info
        #: True once the listening socket carries the keepalive options.
        self.listener_configured = False
        # Connections that have not registered yet, oldest first, with their deadline; and by source address.
        self._pending: dict[AddinProtocol, float] = {}
        self._pending_by_host: dict[str, dict[AddinProtocol, None]] = {}
        self._sweeper: IDelayedCall | None = None
        self._limited = RateLimited(clock, 10.0)
        self._allow = config.service_allow
        self.fd_limit, self.fd_reserve = descriptor_budget(config.fd_reserve)

    # -- admission (before a transport exists) ------------------------------------------------

    def buildProtocol(self, addr: IAddress | None) -> AddinProtocol | None:
        if not self.adopting and not self._admit(_host_of(addr)):
            return None  # the listener closes the socket at once
        proto = AddinProtocol()
        proto.factory = self
        return proto

    def _admit(self, host: str) -> bool:
        if self._allow and not _allowed(host, self._allow):
            self.warn(
                "not-allowed", "add-in client {peer} is not in service_allow: closed", peer=host, event="rejected", reason="not-allowed"
            )
            self.metrics.registration_rejected("not-allowed")
            return False
        limit = self.config.max_subscriptions
        if limit and len(self.connections) >= limit:
            self.warn(
                "limit",
                "max_subscriptions={limit} reached: refusing add-in client {peer}",
                limit=limit,
                peer=host,
                event="rejected",
                reason="limit",
            )
            self.metrics.registration_rejected("limit")
            return False
        free_from = self._lowest_free_descriptor()
        if (free_from is None or free_from >= self.fd_limit - self.fd_reserve) and not (
            self._pending and self._evict(next(iter(self._pending)))
        ):
            self._refused(
                "fd-reserve",
                "add-in connection from {peer} refused: fewer than fd_reserve={reserve} of {limit} file descriptors free",
                peer=host,
                reserve=self.fd_reserve,
                limit=self.fd_limit,
            )
            return False
        waiting = self._pending_by_host.get(host)
        per_host = self.config.max_unregistered_per_address
        if waiting is not None and len(waiting) >= per_host and not self._evict(next(iter(waiting))):
            self._refused(
                "unregistered-per-address",
                "add-in connection from {peer} refused: {count} connections from it have not registered yet (max_unregistered_per_address)",
                peer=host,
                count=len(waiting),
            )
            return False
        if len(self._pending) >= self.config.max_unregistered and not self._evict(next(iter(self._pending))):
            self._refused(
                "unregistered-total",
                "add-in connection from {peer} refused: {count} connections have not registered yet (max_unregistered)",
                peer=host,
                count=len(self._pending),
            )
            return False
        return True

    def _evict(self, oldest: AddinProtocol) -> bool:
        """Close ``oldest`` (unregistered) to make room, if it has waited long enough to be no real client."""
        if self.clock.seconds() - oldest.connected_at < min(EVICT_AGE, self.config.registration_timeout):
            return False
        self._forget(oldest)
        self._refused(
            "evicted",
            "add-in client {peer} closed: no registration after {age:.1f} s, and a new connection needs its place",
            peer=oldest.peer,
            age=self.clock.seconds() - oldest.connected_at,
        )
        oldest._ended = True
        oldest.transport.abortConnection()
        return True

    def _refused(self, reason: str, fmt: str, **fields: object) -> None:
        self.metrics.addin_refused(reason)
        self.warn("refused:" + reason, fmt, event="refused", reason=reason, **fields)

    @staticmethod
    def _lowest_free_descriptor() -> int | None:
        """The number the next descriptor would get (all below it are taken), or None when none is free (a few µs)."""
        try:
            probe = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        os.close(probe)
        return probe

    # -- registration clock ---------------------------------------------------------------------

    def awaiting_registration(self, proto: AddinProtocol, timeout: float | None = None) -> None:
        """Start the registration clock, ``registration_timeout`` or ``timeout`` (one periodic sweep, not a timer per client)."""
        self._pending[proto] = self.clock.seconds() + (self.config.registration_timeout if timeout is None else timeout)
        self._pending_by_host.setdefault(proto.peer, {})[proto] = None
        if self._sweeper is None or not self._sweeper.active():
            self._sweeper = self.clock.callLater(min(1.0, self.config.registration_timeout), self._sweep)

    def registered(self, proto: AddinProtocol) -> float | None:
        """Stop its registration clock; the deadline it had, if any."""
        return self._forget(proto)

    def _forget(self, proto: AddinProtocol) -> float | None:
        deadline = self._pending.pop(proto, None)
        if deadline is None:
            return None
        waiting = self._pending_by_host.get(proto.peer)
        if waiting is not None:
            waiting.pop(proto, None)
            if not waiting:
                del self._pending_by_host[proto.peer]
        return deadline

    @property
    def unregistered(self) -> int:
        """Connections that have not registered yet."""
        return len(self._pending)

    def _sweep(self) -> None:
        now = self.clock.seconds()
        for proto, deadline in list(self._pending.items()):
            if deadline > now:
                break  # in insertion order, so the rest are younger
            self._forget(proto)
            proto.registration_timed_out()
        self._sweeper = None
        if self._pending:
            first = next(iter(self._pending.values()))
            self._sweeper = self.clock.callLater(max(0.05, min(1.0, first - now)), self._sweep)

    def stop(self) -> None:
        if self._sweeper is not None and self._sweeper.active():
            self._sweeper.cancel()
        self._sweeper = None

    def warn(self, key: str, fmt: str, **fields: object) -> None:
        def emit(suppressed: int) -> None:
            more = f" ({suppressed} more like it in the last interval)" if suppressed else ""
            self.log.warn(fmt + more, **fields)

        self._limited(key, emit)

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
