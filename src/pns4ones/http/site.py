"""
The twisted.web side shared by the HTTP listeners (send API, admin panel,
metrics): a ``Site`` that bounds request bodies (413 before buffering), times
out clients that dribble a request (408), writes no per-request access log and
answers JSON errors; and the channel it builds.

Invariants:

* A request body never exceeds ``max_body_size`` in memory: a declared length
  over it is refused before the body, a chunked one at the byte that crosses it.
* On a channel that times its requests, a request's clock starts at its first
  byte and stops at its last.  A channel built for a front connection
  (:meth:`ApiSite.cold_channel`) is not timed: the front connection received the
  request whole, within ``request_timeout``, before handing it over.
* Every channel with requests in progress is in ``ApiSite.channels``: the
  graceful drain and the restart handoff see them through ``ApiSite``'s
  methods (``in_progress``, ``busy``, ``close_after_answers``, ``drain``).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Generator, Iterable
from typing import Any, Protocol, cast

from twisted.internet import reactor as _default_reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IDelayedCall, IReactorTime, ISSLTransport
from twisted.internet.protocol import connectionDone
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.resource import IResource

from .. import proxies

JSON = b"application/json"


def json_body(request: server.Request, status: int, doc: object) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON)
    request.setHeader(b"Cache-Control", b"no-store")
    body = json.dumps(doc, ensure_ascii=False).encode("utf-8")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def canned(status: int, phrase: bytes, doc: dict[str, object]) -> bytes:
    """A whole JSON response that closes the connection (written straight to the transport)."""
    body = json.dumps(doc).encode()
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (status, phrase, len(body))
        + body
    )


class BoundedRequest(server.Request):
    """A request whose body may not exceed the site's ``max_body_size``."""

    _received = 0
    forwarded_proto: str | None = None

    @property
    def _site(self) -> ApiSite:
        return cast(ApiChannel, self.channel).site

    def isSecure(self) -> bool:
        if self.forwarded_proto is not None:
            return self.forwarded_proto == "https"
        return bool(super().isSecure())

    def process(self) -> None:
        if self.path == b"*" and self.method != b"OPTIONS":  # (twisted.web answers it 405 with no body: say why)
            self.site = self._site
            self.setHeader(b"Allow", b"OPTIONS")
            self.write(json_body(self, 405, {"error": "method_not_allowed", "reason": "the target * is for OPTIONS only"}))
            self.finish()
            return
        super().process()

    def gotLength(self, length: int | None) -> None:
        # Called once all headers are in, before the body: the place to learn who really sent it.
        site = self._site
        if site.trusted_proxies:
            proxies.apply(self, site.trusted_proxies)
        if length is not None and length > site.max_body_size:
            self._too_large(length)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self._site.max_body_size:
            self._too_large(self._received)
            return
        super().handleContentChunk(data)

    def _too_large(self, size: int) -> None:
        answer_too_large(self._site, self.channel, size, getattr(self.getClientAddress(), "host", "?"))
        self.content = io.BytesIO()


def answer_too_large(site: ApiSite, channel: Any, size: int, peer: str) -> None:
    """413 for a request body over ``max_body_size``, then a lingering close."""
    site.logger.warn(
        "request body of {size} bytes from {peer} exceeds max_body_size={limit}: 413",
        size=size,
        peer=peer,
        limit=site.max_body_size,
    )
    lingering_close(
        channel,
        canned(413, b"Payload Too Large", {"error": "payload_too_large", "reason": f"request body over {site.max_body_size} bytes"}),
    )


class Timer(Protocol):
    """A pending call (``IDelayedCall``)."""

    def active(self) -> bool: ...
    def cancel(self) -> None: ...


class Clock(Protocol):
    """The reactor's time (``IReactorTime``), or a test's ``Clock``."""

    def seconds(self) -> float: ...
    def callLater(self, delay: float, callable: Callable[..., object], *args: object, **kwargs: object) -> IDelayedCall: ...


class Transport(Protocol):
    """What the HTTP code uses of a stream transport (TCP, TLS, or a test's ``StringTransport``)."""

    def write(self, data: bytes) -> None: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def getPeer(self) -> IPv4Address | IPv6Address | Any: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...
    def registerProducer(self, producer: object, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...


def linger(transport: Transport, clock: Clock, seconds: float = 5.0) -> Timer | None:
    """
    Close without losing what was written: shut our side, and abort after
    ``seconds`` if the peer has not closed by then (the caller discards what it
    still sends meanwhile; closing at once with unread data would reset the
    connection and destroy the answer).  Returns the abort timer to cancel when
    the connection is lost (None when it closed at once).
    """
    if ISSLTransport.providedBy(transport):
        # TLS has no half-close: a close_notify after the answer, then wait for the peer.
        transport.loseConnection()
    else:
        try:
            transport.loseWriteConnection()  # type: ignore[attr-defined]  # (TCP has it, other transports may not)
        except (AttributeError, NotImplementedError):
            transport.loseConnection()
            return None
    return clock.callLater(seconds, transport.abortConnection)


def lingering_close(channel: Any, response: bytes, seconds: float = 5.0) -> None:
    """Answer a twisted.web channel early with ``response`` and close it without losing the answer (see :func:`linger`)."""
    transport = channel.transport
    channel.dataReceived = lambda data: None  # ignore the rest of the request
    transport.write(response)
    timer = linger(transport, channel.site.clock, seconds)
    if timer is None:
        return
    original_lost = channel.connectionLost

    def lost(reason: Any) -> None:
        if timer.active():
            timer.cancel()
        original_lost(reason)

    channel.connectionLost = lost
    channel.setTimeout(None)


class ColdRequests(Protocol):
    """What a channel serving a front connection's cold requests tells it (:class:`pns4ones.http.connection.FrontConnection`)."""

    def cold_done(self) -> None:
        """twisted.web has finished answering the request handed to it."""


class ApiChannel(http.HTTPChannel):
    """
    twisted.web's channel, with ``request_timeout`` (408 for a request not
    complete in time) and the restart's ``Connection: close``; when built by
    :meth:`ApiSite.cold_channel`, it tells the front connection each time it has
    finished an answer.
    """

    site: ApiSite
    request_timeout = 30.0
    #: Whether requests are timed here (False: a front connection timed them).
    timed = True
    #: The front connection whose cold requests this channel answers, if any.
    front: ColdRequests | None = None
    _deadline: IDelayedCall | None = None
    clock: Clock = _default_reactor

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm()

    def _arm(self) -> None:
        if self.timed and (self._deadline is None or not self._deadline.active()):
            self._deadline = self.clock.callLater(self.request_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def allContentReceived(self) -> None:
        self._disarm()
        super().allContentReceived()

    def checkPersistence(self, request: http.Request, version: bytes) -> bool:
        if self.site.closing:  # a restart is under way: senders reconnect to the next process
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return bool(super().checkPersistence(request, version))

    def dataReceived(self, data: bytes) -> None:
        self._arm()  # a new request on a kept-alive connection starts its clock
        super().dataReceived(data)

    def requestDone(self, request: http.Request) -> None:
        super().requestDone(request)
        if self.front is not None:
            self.front.cold_done()

    def take_over(self) -> None:
        """The connection is this channel's from now on (an upgrade): it times its requests and idles out itself."""
        self.front = None
        self.timed = True
        self.setTimeout(self.site.timeOut)

    def _expired(self) -> None:
        self._deadline = None
        lingering_close(
            self, canned(408, b"Request Timeout", {"error": "request_timeout", "reason": "the request was not received in time"})
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone()
        super().connectionLost(reason)

    def gone(self) -> None:
        """
        The connection is over: forget it.  Also called by a WebSocket session
        when its connection is lost, because twisted.web's WebSocket resource
        replaces the channel's ``connectionLost`` with its own (the channel and
        its request would otherwise stay in ``site.channels`` for good).
        """
        self._disarm()
        self.site.channels.discard(self)


class ApiSite(server.Site):
    """A quiet, bounded ``Site``."""

    logger = Logger()
    requestFactory = BoundedRequest
    protocol = ApiChannel  # type: ignore[assignment]  # (twisted.web's default is a factory function)
    #: A restart is under way: every answer from now on says ``Connection: close``.
    closing = False

    def __init__(
        self,
        resource: IResource,
        max_body_size: int,
        request_timeout: float,
        clock: Clock | None = None,
        trusted_proxies: Iterable[proxies.Network] = (),
        **kwargs: Any,
    ) -> None:
        # The API reads JSON; parsing form bodies (twisted.web builds an email
        # message per request to read Content-Type) would cost ~10% of a send.
        kwargs.setdefault("parsePOSTFormSubmission", False)
        if clock is not None:
            kwargs.setdefault("reactor", clock)  # (twisted.web's own timers: the log date, idle timeouts)
        super().__init__(resource, **kwargs)
        self.trusted_proxies = tuple(trusted_proxies)
        self.max_body_size = max_body_size
        self.request_timeout = request_timeout
        self.clock: Clock = clock or _default_reactor
        self.displayTracebacks = False
        # Idle keep-alive connections are closed after a while.
        self.timeOut = max(request_timeout * 4, 120)
        #: Every connection of this site (twisted.web channels and front connections).
        self.channels: set[Any] = set()

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.request_timeout = self.request_timeout
        channel.clock = self.clock
        self.channels.add(channel)
        return channel

    def cold_channel(self, front: ColdRequests, transport: Transport) -> ApiChannel:
        """A channel on ``front``'s transport for the requests it hands over whole: not timed, no idle timeout (the front connection does both)."""
        channel: ApiChannel = self.buildProtocol(transport.getPeer())
        channel.front = front
        channel.timed = False
        channel.timeOut = None
        channel.makeConnection(transport)
        return channel

    # -- for the graceful stop and the restart handoff ---------------------------------------

    def in_progress(self) -> bool:
        """Whether a request is being received or answered on any connection."""
        return any(ch.requests for ch in list(self.channels))

    def busy(self) -> bool:
        """
        Whether a request is being received or answered on a connection still
        open.  A channel whose connection is gone does not count: one upgraded
        to a WebSocket keeps its upgrade request for good (twisted.web replaces
        its ``connectionLost``).
        """
        return any(ch.requests and ch.transport is not None and ch.transport.connected for ch in list(self.channels))

    def close_after_answers(self) -> None:
        """Connections with requests in progress close once those are answered (each answer not yet begun says ``Connection: close``)."""
        for channel in list(self.channels):
            for request in channel.requests:
                if not request.startedWriting:
                    request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            if channel.requests:  # (on an idle channel this would drop the next request unanswered)
                channel.persistent = False

    def drain(self, clock: IReactorTime, timeout: float) -> Deferred[None]:
        """
        Graceful stop (listeners already closed): let requests in progress
        finish, for at most ``timeout`` seconds, then close every connection.
        """
        deadline = clock.seconds() + timeout

        @inlineCallbacks
        def wait() -> Generator[Deferred[Any], Any, None]:
            while self.in_progress() and clock.seconds() < deadline:
                yield deferLater(clock, 0.05, lambda: None)
            for ch in list(self.channels):
                if ch.transport is not None:
                    ch.transport.loseConnection()

        return wait()

    #: Called with the path and status of each answer (the metrics' HTTP counter), instead of an access log line.
    on_request: Callable[[bytes, int], object] = staticmethod(lambda path, status: None)

    def log(self, request: http.Request) -> None:
        """No access log line per request (it would cost more than the send)."""
        self.on_request(request.path, request.code)
