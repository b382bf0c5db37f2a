"""
twisted.web plumbing shared by the HTTP listeners: a ``Site`` that bounds
request bodies (413 before buffering), times out clients that dribble a request
(408), writes no per-request access log, and answers JSON errors.
"""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet import reactor as _default_reactor
from twisted.internet.interfaces import ISSLTransport
from twisted.logger import Logger
from twisted.web import http, server

from . import proxies

JSON = b"application/json"


def json_body(request: Any, status: int, doc: Any) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", JSON)
    request.setHeader(b"Cache-Control", b"no-store")
    body = json.dumps(doc, ensure_ascii=False).encode("utf-8")
    request.setHeader(b"Content-Length", b"%d" % len(body))
    return body


def canned(status: int, phrase: bytes, doc: dict[str, Any]) -> bytes:
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

    def isSecure(self) -> bool:
        if self.forwarded_proto is not None:
            return self.forwarded_proto == "https"
        return bool(super().isSecure())

    def gotLength(self, length: int | None) -> None:
        # Called once all headers are in, before the body: the place to learn who really sent it.
        trusted = getattr(self.channel.site, "trusted_proxies", ())
        if trusted:
            proxies.apply(self, trusted)
        limit = self.channel.site.max_body_size
        if length is not None and length > limit:
            self._too_large(length)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._received += len(data)
        if self._received > self.channel.site.max_body_size:
            self._too_large(self._received)
            return
        super().handleContentChunk(data)

    def _too_large(self, size: int) -> None:
        answer_too_large(self.channel.site, self.channel, size, getattr(self.getClientAddress(), "host", "?"))
        self.content = io.BytesIO()


def answer_too_large(site: Any, channel: Any, size: int, peer: str) -> None:
    """413 for a request body over ``max_body_size`` (both HTTP paths), then a lingering close."""
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


def lingering_close(channel: Any, response: bytes, linger: float = 5.0) -> None:
    """
    Answer early and close without losing the answer: shut our side, then read
    and discard what the client is still sending for a bounded time (closing at
    once with unread data would reset the connection and destroy the answer).
    """
    transport = channel.transport
    channel.dataReceived = lambda data: None  # ignore the rest of the request
    transport.write(response)
    if ISSLTransport.providedBy(transport):
        # TLS has no half-close: a close_notify after the answer, then wait for the peer.
        transport.loseConnection()
    else:
        try:
            transport.loseWriteConnection()
        except (AttributeError, NotImplementedError):
            transport.loseConnection()
            return
    clock = getattr(channel.site, "clock", None) or _default_reactor
    timer = clock.callLater(linger, transport.abortConnection)
    original_lost = channel.connectionLost

    def lost(reason: Any) -> None:
        if timer.active():
            timer.cancel()
        original_lost(reason)

    channel.connectionLost = lost
    channel.setTimeout(None)


class _TimedChannel(http.HTTPChannel):
    """Closes a connection whose current request is not complete in time (408)."""

    request_timeout = 30.0
    _deadline: Any = None
    clock: Any = _default_reactor

    def connectionMade(self) -> None:
        super().connectionMade()
        self._arm()

    def _arm(self) -> None:
        if self._deadline is None or not self._deadline.active():
            self._deadline = self.clock.callLater(self.request_timeout, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def allContentReceived(self) -> None:
        self._disarm()
        super().allContentReceived()

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        if getattr(self.site, "closing", False):  # a restart is under way: senders reconnect to the next process
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return False
        return super().checkPersistence(request, version)

    def dataReceived(self, data: bytes) -> None:
        self._arm()  # a new request on a kept-alive connection starts its clock
        super().dataReceived(data)

    def _expired(self) -> None:
        self._deadline = None
        lingering_close(
            self, canned(408, b"Request Timeout", {"error": "request_timeout", "reason": "the request was not received in time"})
        )

    def connectionLost(self, reason: Any) -> None:
        self._disarm()
        site = getattr(self, "site", None)
        if site is not None and hasattr(site, "channels"):
            site.channels.discard(self)
        super().connectionLost(reason)


class ApiSite(server.Site):
    """A quiet, bounded ``Site``."""

    logger = Logger()
    requestFactory = BoundedRequest
    #: A restart handoff is under way: responses say Connection: close (set by handoff.py).
    closing = False

    def __init__(
        self, resource: Any, max_body_size: int, request_timeout: float, clock: Any = None, trusted_proxies: Any = (), **kwargs: Any
    ) -> None:
        # The API reads JSON; parsing form bodies (twisted.web builds an email
        # message per request to read Content-Type) would cost ~10% of a send.
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, **kwargs)
        self.trusted_proxies = tuple(trusted_proxies)
        self.max_body_size = max_body_size
        self.request_timeout = request_timeout
        self.clock = clock or _default_reactor
        self.displayTracebacks = False
        # Idle keep-alive connections are closed after a while.
        self.timeOut = max(request_timeout * 4, 120)

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.request_timeout = self.request_timeout
        channel.clock = self.clock
        self.channels.add(channel)
        return channel

    @property
    def channels(self) -> set[Any]:
        try:
            return self._channels
        except AttributeError:
            self._channels: set[Any] = set()
            return self._channels

    def drain(self, clock: Any, timeout: float) -> Any:
        """
        Graceful stop (listeners already closed): let requests in progress
        finish, for at most ``timeout`` seconds, then close every connection.
        """
        from twisted.internet import defer, task

        deadline = clock.seconds() + timeout

        @defer.inlineCallbacks
        def wait() -> Any:
            while any(ch.requests for ch in list(self.channels)) and clock.seconds() < deadline:
                yield task.deferLater(clock, 0.05, lambda: None)
            for ch in list(self.channels):
                if ch.transport is not None:
                    ch.transport.loseConnection()

        return wait()

    protocol = _TimedChannel

    #: Called with each finished request (the metrics' HTTP counter), instead of an access log line.
    on_request: Any = staticmethod(lambda request: None)

    def log(self, request: Any) -> None:  # type: ignore[override]
        """No access log line per request (it would cost more than the send)."""
        self.on_request(request)
