"""
Subscriptions without the add-in: WebSocket (``/subscribe/ws``) and Server-Sent
Events (``/subscribe/sse``) on the send API listener, both authenticated by a
ticket from ``POST /tickets`` (see :mod:`pns4ones.tickets`).

Both are :class:`pns4ones.hub.Session` objects in the same hub as add-in
connections, and join and leave the same way (``Core.subscribe`` /
``Core.unsubscribe``).  Each message is the add-in's JSON with an ``"id"``
spliced in (built once per message, :meth:`pns4ones.hub.Outbound.web_json`).
A subscription starts with its user's kept (TTL) messages, oldest first and
without ``"id"`` (they are not in the recovery window; on SSE they carry no
``id:`` line, so the last event id stays), then the replay after its resume
point, then ``ready``, then live messages.  Control events carry an
``"event"`` member, which messages never have:

* ``{"event": "ready", "id": N}``: subscribed; N is where to resume from;
* ``{"event": "missed", "id": F, "since": S}``: the resume point S is older than
  the recovery window (or unknown): messages may have been missed;
* ``{"event": "end", "reason": "..."}``: the server ends the subscription.

Slow readers: the HTTP channel tells us (push producer) when the socket's
buffer is full; what is queued beyond that is bounded by ``send_buffer_limit``,
past which the subscriber is cut off, as for the add-in.

Invariants: a session is in ``WebSubscriptions.sessions`` from its start
(``Core.subscribe``) until ``finished`` (``Core.unsubscribe``), joining or
live; ``ready`` is written once, after the catch-up and before any live
message.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar, cast, runtime_checkable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource as _resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.websocket import WebSocketResource, WebSocketTransport
from wsproto.events import CloseConnection, Event, Ping
from zope.interface import implementer

from .. import crypto, tickets
from ..config import Config
from ..core import EXPIRED_TOKEN_MEMORY, AuthError, Core
from ..http.resources import RenderAgain, render_when
from ..http.site import ApiChannel, json_body
from ..hub import Catchup, Clock, Outbound, next_session_id
from ..jsondoc import JSONObject
from ..logs import RateLimited, session_fields
from ..messages import MAX_FIELD, MessageError, decode_json_body, lone_surrogate, object_member, string_member
from ..ratelimit import RateLimiter
from ..store import Application
from ..txinternals import WebSocketWire, guard_websocket, websocket_wire
from ..wire import ClientKey

#: Largest inbound WebSocket message (pongs aside); past it: close 1009.
MAX_INBOUND = 4096
#: Pings from a WebSocket peer answered per second, and the burst allowed; past it: close 1008.
#: (Browsers send none; client libraries one every 10-30 s.)
PING_RATE = 5.0
PING_BURST = 20.0
#: Seconds a WebSocket peer has to finish the closing handshake before the connection is aborted.
CLOSE_TIMEOUT = 5.0
#: Most groups a ticket may carry.
MAX_GROUPS = 100
#: SSE reconnection delay hint, milliseconds.
SSE_RETRY_MS = 3000
#: A resume point (``since=``, ``Last-Event-ID``): a message id, ASCII digits.
_MESSAGE_ID = re.compile(r"[0-9]{1,18}")


class SubscribeError(Exception):
    def __init__(self, status: int, error: str, reason: str, **extra: object) -> None:
        super().__init__(reason)
        self.status = status
        self.doc: JSONObject = {"error": error, "reason": reason, **extra}


def _control(event: str, **fields: object) -> bytes:
    return json.dumps({"event": event, **fields}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class WebSubscriptions:
    """Tickets, admission (origin, ticket, resume point) and the live web sessions."""

    log = Logger()

    def __init__(self, core: Core, config: Config, clock: Clock) -> None:
        self.core = core
        self.config = config
        self.clock = clock
        self.sessions: set[_WebSession] = set()
        self._limited = RateLimited(clock, 10.0)
        core.on_change(self._revalidate)

    # -- tickets --------------------------------------------------------------------------

    def issue(self, app: Application, token: str, body: bytes) -> JSONObject:
        """``POST /tickets``: a ticket for the user named in ``body``; MessageError if malformed."""
        doc = object_member(decode_json_body(body), "body", True)
        assert doc is not None
        ib_id = string_member(doc, "ibid", "IbId", True)
        user_id = string_member(doc, "userid", "UserId", True)
        for name, value in (("IbId", ib_id), ("UserId", user_id)):
            if len(value) > MAX_FIELD:
                raise MessageError(name, f"is longer than {MAX_FIELD} characters")
            if lone_surrogate(value):
                raise MessageError(name, "is not Unicode text (it holds a lone surrogate)")
        groups = doc.get("usergroups")
        if groups is None:
            groups = []
        if not isinstance(groups, list) or not all(isinstance(g, str) and len(g) <= MAX_FIELD and not lone_surrogate(g) for g in groups):
            raise MessageError("UserGroups", f"must be a list of strings (Unicode text) of at most {MAX_FIELD} characters")
        if len(groups) > MAX_GROUPS:
            raise MessageError("UserGroups", f"has more than {MAX_GROUPS} groups")
        groups = list(dict.fromkeys(g for g in groups if g))
        ttl = doc.get("ttl")
        if ttl is None:
            ttl = self.config.ticket_ttl
        # Finite (NaN and 1e999 never get here: decode_json_body refuses them; an int may be huge).
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or (isinstance(ttl, float) and not math.isfinite(ttl)) or ttl <= 0:
            raise MessageError("TTL", "must be a positive number of seconds")
        ttl = max(1, int(min(ttl, self.config.ticket_max_ttl)))
        expires_at = int(self.clock.seconds()) + ttl
        ticket = tickets.Ticket(app.id, ib_id, user_id, tuple(groups), expires_at, crypto.token_digest(token))
        self.log.info(
            "issued a subscription ticket: app={app_id} ib={ib_id} user={user_id} ttl={ttl}",
            app_id=app.id,
            ib_id=ib_id,
            user_id=user_id,
            ttl=ttl,
            event="ticket",
        )
        return {"ticket": tickets.issue(app.server_key, ticket), "expires_in": ttl, "expires_at": expires_at}

    def _server_key(self, app_id: str) -> str | None:
        app = self.core.apps.get(app_id)
        return app.server_key if app is not None else None

    def _alive(self, session: _WebSession) -> bool:
        app = self.core.apps.get(session.app_id)
        if app is None or app.server_key != session.server_key:
            return False
        if self.core.token_expiry(session.ticket.token_digest, session.app_id) is not None:
            return True
        # Gone: revoked (reset_token), unless merely purged long after it expired.
        return session.token_expires + EXPIRED_TOKEN_MEMORY - 60 < self.clock.seconds()

    # -- admission ------------------------------------------------------------------------

    def admit(self, request: Request) -> tuple[tickets.Ticket, str, float]:
        """The request's ticket, the server key it was checked with and its token's expiry; or SubscribeError."""
        origin = request.getHeader(b"origin") or ""
        origin = origin.decode("latin-1") if isinstance(origin, bytes) else origin
        if origin and not self.origin_allowed(origin):
            self.warn(
                "origin",
                "refused a subscription from {peer}: Origin {origin} is not in allowed_origins",
                peer=_peer(request),
                origin=origin,
            )
            raise SubscribeError(403, "origin_not_allowed", f"Origin {origin} is not allowed (allowed_origins)")
        limit = self.config.max_subscriptions
        if limit and len(self.sessions) >= limit:
            self.warn("limit", "max_subscriptions={limit} web subscriptions reached: refusing {peer}", limit=limit, peer=_peer(request))
            raise SubscribeError(503, "too_many_subscriptions", f"this server takes at most {limit} web subscriptions (max_subscriptions)")
        text = ""
        header = (request.getHeader(b"authorization") or b"").decode("latin-1").strip()
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            text = value.strip()
        elif request.args.get(b"ticket"):
            text = request.args[b"ticket"][0].decode("utf-8", "replace")
        try:
            ticket = tickets.verify(text, self._server_key, self.clock.seconds())
        except tickets.TicketError as e:
            self.warn("ticket", "refused a subscription from {peer}: {reason}", peer=_peer(request), reason=e.reason)
            raise SubscribeError(e.status, "unauthorized" if e.status == 401 else "ticket_expired", e.reason) from None
        server_key = self._server_key(ticket.app_id) or ""
        try:
            looked_up = self.core.resolve_digest(ticket.token_digest)
        except AuthError:
            looked_up = None
        if isinstance(looked_up, Deferred):  # a ticket of another node: rendered again once the store answered
            raise RenderAgain(looked_up)
        token_expires = self.core.token_expiry(ticket.token_digest, ticket.app_id)
        if token_expires is None:
            self.warn("ticket", "refused a subscription from {peer}: {reason}", peer=_peer(request), reason="ticket revoked")
            raise SubscribeError(401, "unauthorized", "ticket revoked (the application's tokens were reset): ask for a new one")
        return ticket, server_key, token_expires

    def origin_allowed(self, origin: str) -> bool:
        allowed = self.config.allowed_origins
        return "*" in allowed or origin.lower().rstrip("/") in allowed

    @staticmethod
    def resume_point(request: Request, header: bool) -> int | None:
        raw = request.getHeader(b"last-event-id") if header else None
        if raw is None and request.args.get(b"since"):
            raw = request.args[b"since"][0]
        if raw is None:
            return None
        text = raw.decode("latin-1")
        # ASCII digits only (str.isdigit also takes "²" and other digits int() refuses), at most 18 of them.
        if not _MESSAGE_ID.fullmatch(text.strip()):
            raise SubscribeError(400, "bad_request", f"resume id {text[:40]!r} is not a message id", field="since")
        return int(text.strip())

    # -- sessions -------------------------------------------------------------------------

    def start(self, session: _WebSession, since: int | None) -> None:
        """Join through the core: kept messages, the replay after ``since``, then live ones (see ``_WebSession.release``)."""
        self.sessions.add(session)
        self.core.subscribe(session, since).addCallback(self._live, session)

    def _live(self, _: None, session: _WebSession) -> None:
        if session.ended:
            return
        self.log.info(
            "subscription registered: peer={peer} app={app_id} ib={ib_id} user={user_id} group={group} transport={transport}",
            **session_fields(session),
            group=",".join(session.groups),
            transport=session.transport_name,
            event="registered",
        )

    def finished(self, session: _WebSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.core.unsubscribe(session)
            self.log.info(
                "subscription ended: peer={peer} app={app_id} ib={ib_id} user={user_id} transport={transport}",
                **session_fields(session),
                transport=session.transport_name,
                event="ended",
            )

    def _revalidate(self) -> None:
        """After a store change: end sessions whose ticket was revoked."""
        for session in list(self.sessions):
            if not self._alive(session):
                session.end("ticket revoked (application removed, server key rotated or tokens reset)")

    def slow_reader(self, session: _WebSession) -> None:
        self.warn(
            "slow",
            "subscriber {peer} (app={app_id} ib={ib_id} user={user_id} transport={transport}) is not reading: over {limit} bytes queued, cut off",
            **session_fields(session),
            transport=session.transport_name,
            limit=self.config.send_buffer_limit,
            event="slow-reader",
        )
        session.abort()

    def warn(self, key: str, fmt: str, **fields: object) -> None:
        def emit(suppressed: int) -> None:
            more = f" ({suppressed} more like it in the last interval)" if suppressed else ""
            self.log.warn(fmt + more, **fields)

        self._limited(key, emit)

    def end_all(self, reason: str) -> None:
        for session in list(self.sessions):
            session.end(reason)

    def resource(self) -> _resource.Resource:
        root = _SubscribeRoot()
        root.putChild(b"ws", _WSResource(self))
        root.putChild(b"sse", _SSEResource(self))
        return root


def _peer(request: Request) -> str:
    return str(getattr(request.getClientAddress(), "host", "?"))


@runtime_checkable
class _Abortable(Protocol):
    def abortConnection(self) -> None: ...


def _abort_connection(request: Request) -> None:
    """Drop the request's connection now (TCP and TLS transports have ``abortConnection``, which ``ITransport`` does not declare)."""
    transport = request.channel.transport
    if not isinstance(transport, _Abortable):
        raise TypeError(f"cannot abort the connection of {transport!r}")
    transport.abortConnection()


class _SubscribeRoot(_resource.Resource):
    """``/subscribe``: its children ``ws`` and ``sse``; itself and any other child a JSON 404 (not twisted.web's HTML)."""

    def getChild(self, path: bytes, request: Request) -> _resource.Resource:
        return self

    def render(self, request: Request) -> bytes:
        where = request.path.decode("utf-8", "replace")
        return json_body(
            request, 404, {"error": "not_found", "reason": f"no such resource: {where} (subscribe at /subscribe/ws or /subscribe/sse)"}
        )


@implementer(IPushProducer)
class _WebSession:
    """
    What both web transports share: identity from the ticket, flow control, and
    the :class:`pns4ones.hub.Session` lifecycle: held while joining, then the
    catch-up as events (``missed``, the kept messages, the replay, ``ready``)
    before the live messages.
    """

    transport_name = ""
    ended = False
    #: Aborted (slow reader, silent peer): nothing more is written.
    cut = False
    #: Always this node's.
    node: str | None = None
    #: Messages written (control events aside).
    delivered = 0
    _paused = False
    _backlog = 0
    _timer: IDelayedCall | None = None
    #: Live messages held while the subscription joins.
    _held: list[Outbound] | None = None
    _held_bytes = 0

    def __init__(self, subs: WebSubscriptions, admitted: tuple[tickets.Ticket, str, float], request: Request) -> None:
        ticket, self.server_key, self.token_expires = admitted
        self.subs = subs
        self.ticket = ticket
        self.request = request
        self.session_id = next_session_id(self.transport_name)
        self.peer = _peer(request)
        self.connected_at = subs.clock.seconds()
        self.app_id = ticket.app_id
        self.ib_id = ticket.ib_id
        self.user_id = ticket.user_id
        self.groups = ticket.groups
        self.group = ticket.groups[0] if ticket.groups else ""

    @property
    def keys(self) -> ClientKey | None:
        """Web sessions need no client key: always the current one, so its rotation does not end them."""
        app = self.subs.core.apps.get(self.app_id)
        return app.client_key if app is not None else None

    def deliver(self, message: Outbound) -> bool:
        if self.ended:
            return False
        if self._held is not None:
            self._held_bytes += len(message.plaintext)
            if self._held_bytes > self.subs.config.send_buffer_limit:
                self.subs.slow_reader(self)
                return False
            self._held.append(message)
            return True
        if not self._write(message):
            return False
        self.delivered += 1
        return True

    def _write(self, message: Outbound) -> bool:
        raise NotImplementedError

    def write_control(self, data: bytes) -> None:
        raise NotImplementedError

    def end(self, reason: str) -> None:
        raise NotImplementedError

    def hold(self) -> None:
        self._held = []
        self._held_bytes = 0

    def release(self, catchup: Catchup) -> None:
        """``missed`` (if the resume point is older than the window), kept messages, the replay, ``ready``, then what was held."""
        held = self._held or []
        self._held = None
        if self.ended:
            return
        if catchup.missed is not None:
            self.write_control(_control("missed", id=catchup.missed, since=catchup.since))
        for message in catchup.messages():
            if not self.deliver(message):
                return
        self.write_control(_control("ready", id=catchup.resume_id))
        for message in held:
            if not self.deliver(message):
                return

    def going_away(self, reason: str) -> None:
        """A restart: the ``end`` event with the reason, close 1001 (WebSocket); the client resumes with its last id."""
        self.end(reason)

    def _queue(self, size: int) -> bool:
        """Account for ``size`` bytes about to be written; False if the reader is cut off."""
        if self._paused:
            self._backlog += size
            if self._backlog > self.subs.config.send_buffer_limit:
                self.subs.slow_reader(self)
                return False
        return True

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _gone(self) -> None:
        self.ended = True
        self._cancel_timer()
        self.subs.finished(self)

    def abort(self) -> None:
        self.ended = True
        self.cut = True
        self._cancel_timer()
        self.subs.finished(self)
        _abort_connection(self.request)

    # IPushProducer: the socket's buffer is full / drained.
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._backlog = 0

    def stopProducing(self) -> None:
        pass


# -- WebSocket -----------------------------------------------------------------------------


#: What a reassembly buffer holds: text or binary message fragments.
S = TypeVar("S", str, bytes | bytearray)


class _BoundedBuffer(Generic[S]):
    """The WebSocket message reassembly buffer, bounded (the library has no limit)."""

    __slots__ = ("data", "limit", "on_overflow")

    def __init__(self, empty: S, limit: int, on_overflow: Callable[[], None]) -> None:
        self.data: S = empty
        self.limit = limit
        self.on_overflow = on_overflow

    def add(self, new: S) -> None:
        if len(self.data) + len(new) > self.limit:
            self.data = self.data[0:0]
            self.on_overflow()
            return
        self.data += new

    def done(self) -> S:
        result = self.data
        self.data = self.data[0:0]
        return result


class _Channel(Protocol):
    """Where the meter writes: the HTTP channel, or the transport under the WebSocket."""

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...


class _Meter:
    """
    What the WebSocket wire protocol writes to (in place of the HTTP channel):
    every frame, messages and control frames alike (pings, the library's pong
    answers, closes), goes through :meth:`_WebSession._queue`, so a peer that
    does not read is cut off past ``send_buffer_limit`` whatever it sends.
    """

    __slots__ = ("channel", "session")

    def __init__(self, session: WebSocketSession, channel: _Channel) -> None:
        self.session = session
        self.channel = channel

    def write(self, data: bytes) -> None:
        session = self.session
        if session.cut or not session._queue(len(data)):
            return
        self.channel.write(data)

    def loseConnection(self) -> None:
        self.channel.loseConnection()


class WebSocketSession(_WebSession):
    """
    One ``/subscribe/ws`` connection (a twisted.web.websocket protocol).

    Bounded whatever the peer sends: inbound messages at :data:`MAX_INBOUND`
    (1009); every outbound byte, pongs included, counts in ``send_buffer_limit``
    while the socket is full (:class:`_Meter`); pings are answered at most
    :data:`PING_RATE` a second with bursts of :data:`PING_BURST`, past which the
    connection is closed with 1008; our own pings carry a random payload that
    the pong must echo, so a peer that never reads cannot pass for alive; a
    closing handshake the peer does not finish within :data:`CLOSE_TIMEOUT`
    ends in an abort.  After the close, nothing the peer sends is acted on.
    """

    transport_name = "ws"
    log = Logger()
    ws: WebSocketWire
    _awaiting_pong = False
    _ping_payload = b""
    _too_big = False
    _pings: RateLimiter | None = None
    _closing: IDelayedCall | None = None

    def __init__(self, subs: WebSubscriptions, admitted: tuple[tickets.Ticket, str, float], request: Request, since: int | None) -> None:
        super().__init__(subs, admitted, request)
        self.since = since

    def negotiationStarted(self, transport: WebSocketTransport) -> None:
        self.ws = wire = websocket_wire(transport)
        # Write through the HTTP channel, which unregisters itself as the socket's
        # producer first when closing: a TLS connection would otherwise wait for
        # that forever before sending its close_notify (and the client its close
        # timeout); and through the meter, which counts every byte.
        channel: _Channel = self.request.channel if wire.transport is self.request.channel.transport else wire.transport
        wire.transport = _Meter(self, channel)  # type: ignore[assignment]  # (the wire only writes and closes: the meter has both)
        # The library reassembles messages without a bound and answers every ping.
        text_buffer: _BoundedBuffer[str] = _BoundedBuffer("", MAX_INBOUND, self._oversized)
        bytes_buffer: _BoundedBuffer[bytes | bytearray] = _BoundedBuffer(b"", MAX_INBOUND, self._oversized)
        guard_websocket(wire, text_buffer, bytes_buffer, self._inbound)

    def negotiationFinished(self) -> None:
        self.request.registerProducer(self, True)
        self.subs.start(self, self.since)
        if not self.ended:
            self._timer = self.subs.clock.callLater(self.subs.config.ws_ping_interval, self._ping)

    # -- keepalive --------------------------------------------------------------------------

    def _ping(self) -> None:
        self._awaiting_pong = True
        self._ping_payload = secrets.token_bytes(8)
        self.ws.ping(self._ping_payload)
        self._timer = self.subs.clock.callLater(self.subs.config.ws_ping_timeout, self._pong_timed_out)

    def _pong_timed_out(self) -> None:
        self._timer = None
        self.subs.warn(
            "ping",
            "WebSocket subscriber {peer} (app={app_id} user={user_id}) did not answer a ping within {timeout} s: closed",
            peer=self.peer,
            app_id=self.app_id,
            user_id=self.user_id,
            timeout=self.subs.config.ws_ping_timeout,
        )
        self.abort()

    def pongReceived(self, payload: bytes) -> None:
        # Only the answer to our last ping counts: an unsolicited pong proves nothing.
        if self._awaiting_pong and not self.ended and payload == self._ping_payload:
            self._awaiting_pong = False
            self._cancel_timer()
            self._timer = self.subs.clock.callLater(self.subs.config.ws_ping_interval, self._ping)

    # -- inbound ------------------------------------------------------------------------------

    def _inbound(self, event: Event) -> bool:
        """Whether the wire protocol may act on ``event`` (a refused ping gets no pong)."""
        if self.ended:
            return False
        if isinstance(event, CloseConnection):
            # The peer closes (or wsproto found its frames malformed): twisted.web answers the close and closes the
            # connection, but the session would stay until connectionLost and write to a closed wsproto connection
            # (LocalProtocolError: a send to this user failing, or a broadcast cut short). It ends now; a peer that
            # does not read the answer is aborted after CLOSE_TIMEOUT.
            self._gone()
            self._closing = self.subs.clock.callLater(CLOSE_TIMEOUT, self._close_timed_out)
            return True
        if isinstance(event, Ping):
            if self._pings is None:
                self._pings = RateLimiter(PING_RATE, PING_BURST)
            if self._pings.take("", self.subs.clock.seconds()) > 0:
                self.subs.warn(
                    "ping-flood",
                    "WebSocket subscriber {peer} (app={app_id} user={user_id}) sent pings faster than {rate} a second: closed (1008)",
                    peer=self.peer,
                    app_id=self.app_id,
                    user_id=self.user_id,
                    rate=PING_RATE,
                )
                self._close(1008, "too many pings")
                return False
        return True

    def _oversized(self) -> None:
        if self._too_big:
            return
        self._too_big = True
        self.subs.warn(
            "oversized", "WebSocket subscriber {peer} sent a message over {limit} bytes: closed (1009)", peer=self.peer, limit=MAX_INBOUND
        )
        self._close(1009, "message too big")

    def textMessageReceived(self, message: str) -> None:
        if self._too_big:
            return
        try:
            doc = json.loads(message)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and "ack" in doc:
            self.log.debug("ack {id} from {peer}", id=doc.get("ack"), peer=self.peer)
        # Anything else small is ignored: subscribers have nothing to say.

    def bytesMessageReceived(self, data: bytes | bytearray) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        if self._closing is not None and self._closing.active():
            self._closing.cancel()
        self._closing = None
        self._gone()
        cast(ApiChannel, self.request.channel).gone()  # (twisted.web's WebSocket resource took the channel's connectionLost over)

    # -- outbound (Session) ---------------------------------------------------------------------

    def _write(self, message: Outbound) -> bool:
        # The meter counts the frame's real size against send_buffer_limit (and drops it once cut).
        self.ws.sendTextMessage(message.web_text())
        return not self.cut

    def write_control(self, data: bytes) -> None:
        if not self.ended:
            self.ws.sendTextMessage(data.decode("utf-8"))

    def _close(self, code: int, reason: str) -> None:
        """The closing handshake; a peer that does not finish it (or does not read) is aborted after CLOSE_TIMEOUT."""
        if self.ended:
            return
        self._gone()
        self.ws.loseConnection(code, reason)
        self._closing = self.subs.clock.callLater(CLOSE_TIMEOUT, self._close_timed_out)

    def _close_timed_out(self) -> None:
        self._closing = None
        _abort_connection(self.request)

    def end(self, reason: str) -> None:
        """Close with 1001 (going away) or 1008 (ticket revoked) after an ``end`` event."""
        if self.ended:
            return
        self.write_control(_control("end", reason=reason))
        self._close(1008 if "revoked" in reason else 1001, reason[:100])


class _WSFactory:
    def __init__(self, subs: WebSubscriptions) -> None:
        self.subs = subs

    def buildProtocol(self, request: Request) -> WebSocketSession:
        subscription: tuple[tuple[tickets.Ticket, str, float], int | None] = request.pns_subscription  # type: ignore[attr-defined]  # (set by _WSResource.render_GET)
        admitted, since = subscription
        return WebSocketSession(self.subs, admitted, request, since)


class _WSResource(WebSocketResource):
    isLeaf = True

    def __init__(self, subs: WebSubscriptions) -> None:
        super().__init__(_WSFactory(subs))
        self.subs = subs

    def render_GET(self, request: Request) -> bytes | int:
        upgrade = (request.getHeader(b"upgrade") or b"").lower()
        if upgrade != b"websocket":
            return json_body(
                request,
                400,
                {"error": "bad_request", "reason": "this is a WebSocket endpoint: send a WebSocket upgrade request (ws:// or wss://)"},
            )
        try:
            admitted = self.subs.admit(request)
            since = self.subs.resume_point(request, header=False)
        except RenderAgain as e:
            return render_when(request, e.pending, self.render_GET)
        except SubscribeError as e:
            return json_body(request, e.status, e.doc)
        request.pns_subscription = (admitted, since)  # type: ignore[attr-defined]  # (for _WSFactory.buildProtocol, which super() calls)
        # A long-lived connection: no idle timeout of the HTTP channel.
        idle_timeout = request.channel.timeOut
        request.channel.setTimeout(None)
        body = super().render_GET(request)
        if request.code == 400:  # the handshake's headers are wrong (twisted.web answers in plain text)
            request.channel.setTimeout(idle_timeout)
            reason = "not a WebSocket handshake: Sec-WebSocket-Key and Sec-WebSocket-Version: 13 are required"
            return json_body(request, 400, {"error": "bad_request", "reason": reason})
        return body

    def render(self, request: Request) -> bytes | int:
        if request.method != b"GET":
            request.setHeader(b"Allow", b"GET")
            return json_body(request, 405, {"error": "method_not_allowed", "reason": "use GET with a WebSocket upgrade"})
        return super().render(request)


# -- Server-Sent Events ----------------------------------------------------------------------


class SSESession(_WebSession):
    """One ``/subscribe/sse`` stream."""

    transport_name = "sse"

    def begin(self, since: int | None) -> None:
        self.request.registerProducer(self, True)
        self.request.notifyFinish().addBoth(lambda _: self._gone())
        self.request.write(b"retry: %d\n: pns4ones\n\n" % SSE_RETRY_MS)
        self.subs.start(self, since)
        if not self.ended:
            self._timer = self.subs.clock.callLater(self.subs.config.sse_heartbeat, self._heartbeat)

    def _heartbeat(self) -> None:
        self._timer = None
        if self.ended:
            return
        if self._queue(3):
            self.request.write(b":\n\n")
            self._timer = self.subs.clock.callLater(self.subs.config.sse_heartbeat, self._heartbeat)

    def _write(self, message: Outbound) -> bool:
        data = message.web_json()
        if not self._queue(len(data) + 32):
            return False
        if message.id:
            self.request.write(b"id: %d\ndata: %s\n\n" % (message.id, data))
        else:  # a kept message: no id, so the stream's last event id stays where it was
            self.request.write(b"data: %s\n\n" % data)
        return True

    def write_control(self, data: bytes) -> None:
        if self.ended or not self._queue(len(data) + 32):
            return
        doc = json.loads(data)
        head = b"event: %s\n" % doc["event"].encode()
        if "id" in doc:
            head += b"id: %d\n" % doc["id"]
        self.request.write(head + b"data: " + data + b"\n\n")

    def end(self, reason: str) -> None:
        if self.ended:
            return
        self.write_control(_control("end", reason=reason))
        self._gone()
        self.request.unregisterProducer()
        self.request.finish()


class _SSEResource(_resource.Resource):
    isLeaf = True

    def __init__(self, subs: WebSubscriptions) -> None:
        super().__init__()
        self.subs = subs

    def render_GET(self, request: Request) -> bytes | int:
        origin = request.getHeader(b"origin")
        if origin and self.subs.origin_allowed(origin.decode("latin-1")):
            # EventSource from another origin needs CORS on the stream itself.
            request.setHeader(b"Access-Control-Allow-Origin", origin)
            request.setHeader(b"Vary", b"Origin")
        try:
            admitted = self.subs.admit(request)
            since = self.subs.resume_point(request, header=True)
        except RenderAgain as e:
            return render_when(request, e.pending, self.render_GET)
        except SubscribeError as e:
            return json_body(request, e.status, e.doc)
        request.channel.setTimeout(None)
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")  # nginx: do not buffer the stream
        SSESession(self.subs, admitted, request).begin(since)
        return NOT_DONE_YET

    def render(self, request: Request) -> bytes | int:
        if request.method != b"GET":
            request.setHeader(b"Allow", b"GET")
            return json_body(
                request, 405, {"error": "method_not_allowed", "reason": f"{request.method.decode('latin-1')} is not allowed here; use GET"}
            )
        return super().render(request)
