"""
The send API listener's lean HTTP/1.1 path.

twisted.web costs about 250 µs of CPU per ``POST /sendmessage`` in pure-Python
HTTP machinery (line parsing, ``Headers`` objects, ``Request`` construction,
resource traversal, timers per ``dataReceived``), five times the send itself.
:class:`LeanChannel` parses requests with ``httptools`` (llhttp, the C parser of
uvicorn) and answers the hot routes itself:

- ``POST /sendmessage``, ``POST /sendmessages``, ``GET /auth``: the SAME handlers
  as the twisted.web path (:class:`pns4ones.api.SendAPI`), given a small
  request-shaped object (:class:`LeanRequest`), so validation, JSON errors,
  status codes, headers, logs, metrics and the rate limit are one implementation;
- with the same HTTP behaviour: bounded bodies (413), the request timeout (408
  and a lingering close), keep-alive and ``Connection: close``, HTTP/1.0,
  ``Expect: 100-continue``, chunked request bodies, pipelined requests answered
  in order, ``trusted_proxies``, graceful drain and restart handoff (the channel
  is one of ``ApiSite.channels``).

Every other request (Klein routes, WebSocket/SSE, 404s, methods other than the
hot ones, and anything llhttp rejects) is SWITCHED: the connection is handed to
the site's own ``HTTPChannel`` (``site.buildProtocol``), which gets the raw bytes
of that request replayed and every later byte forwarded, and stays there; so
those requests are answered exactly as before.  A request can be switched when it
began at the start of a received chunk (or of the connection) and no answer is
pending: the normal case.  A non-hot request pipelined behind a hot one in the
same chunk cannot be replayed: it gets ``400 pipelined_request`` and the
connection closes after the answers before it (clients that pipeline, which
few do, should pipeline hot requests only).

Differences from the twisted.web answers: no ``Server:`` header.
"""

from __future__ import annotations

import io
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from httptools import HttpParserCallbackError, HttpParserError, HttpRequestParser
from twisted.internet import protocol, tcp
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.http import RESPONSES, datetimeToString, parse_qs
from twisted.web.http_headers import _nameEncoder
from zope.interface import implementer

from . import proxies
from .txinternals import send_now
from .web import answer_too_large, canned, lingering_close

#: The longest request head (request line and headers) parsed here; a longer
#: one is switched to twisted.web, which answers it as it always has.
MAX_HEAD = 64 * 1024

#: Requests answered later (a Deferred) before the channel stops reading.
MAX_PENDING = 64

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

#: Header names as twisted.web writes them (``X-PNS-Sessions`` -> ``X-Pns-Sessions``).
_canonical: dict[bytes, bytes] = {}


def canonical(name: bytes) -> bytes:
    try:
        return _canonical[name]
    except KeyError:
        value = _canonical[name] = _nameEncoder.encode(name)
        return value


class _Date:
    """``Date:`` header bytes, rebuilt once a second."""

    __slots__ = ("line", "second")

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.line = b"Date: " + datetimeToString(now) + b"\r\n"
        return self.line


_date = _Date()


class _Switch(Exception):
    """Stops the parser: the connection goes to twisted.web."""


class _Stop(Exception):
    """Stops the parser: nothing more is read on this connection."""


class _RawHeaders:
    """``request.requestHeaders`` for :func:`pns4ones.proxies.apply`."""

    __slots__ = ("request",)

    def __init__(self, request: LeanRequest) -> None:
        self.request = request

    def getRawHeaders(self, name: bytes, default: Any = None) -> Any:
        return self.request.raw_headers(name) or default


class LeanRequest:
    """
    The parts of twisted.web's ``Request`` that the send API's handlers use
    (headers, body, query arguments, peer; response code and headers).
    """

    __slots__ = (
        "_args",
        "body",
        "client",
        "clientproto",
        "code",
        "forwarded_proto",
        "headers",
        "method",
        "multi",
        "out",
        "path",
        "query",
        "uri",
    )

    #: For the restart handoff: the lean path decides ``Connection: close`` when it
    #: writes (``site.closing``), so a request never needs its headers changed.
    startedWriting = True

    def __init__(
        self,
        method: bytes,
        uri: bytes,
        clientproto: bytes,
        headers: dict[bytes, bytes],
        multi: dict[bytes, list[bytes]] | None,
        client: Any,
    ) -> None:
        self.method = method
        self.uri = uri
        path, _, query = uri.partition(b"?")
        self.path = path
        self.query = query
        self.clientproto = clientproto
        self.headers = headers
        self.multi = multi
        self.body = b""
        self.client = client
        self.code = 200
        self.out: dict[bytes, bytes] = {}
        self.forwarded_proto: str | None = None
        self._args: dict[bytes, list[bytes]] | None = None

    # -- what the handlers read -------------------------------------------------------

    def getHeader(self, name: bytes) -> bytes | None:
        return self.headers.get(name.lower())

    def raw_headers(self, name: bytes) -> list[bytes]:
        name = name.lower()
        if self.multi is not None and name in self.multi:
            return self.multi[name]
        value = self.headers.get(name)
        return [] if value is None else [value]

    @property
    def requestHeaders(self) -> _RawHeaders:
        return _RawHeaders(self)

    @property
    def content(self) -> io.BytesIO:
        return io.BytesIO(self.body)

    @property
    def args(self) -> dict[bytes, list[bytes]]:
        if self._args is None:
            self._args = parse_qs(self.query, 1) if self.query else {}
        return self._args

    def getClientAddress(self) -> Any:
        return self.client

    def isSecure(self) -> bool:
        return self.forwarded_proto == "https"

    # -- what they answer -------------------------------------------------------------

    def setResponseCode(self, code: int) -> None:
        self.code = code

    def setHeader(self, name: bytes, value: bytes) -> None:
        self.out[canonical(name)] = value

    def response(self, body: bytes, close: bool, closing: bool = False) -> bytes:
        """The whole response, in twisted.web's header order (``closing``: a restart is under way)."""
        code = self.code
        head = [b"%s %d %s\r\n" % (self.clientproto, code, RESPONSES.get(code, b"Unknown Status"))]
        if close and (closing or self.clientproto == b"HTTP/1.1"):
            head.append(b"Connection: close\r\n")
        head.append(_date.get())
        out = self.out
        if b"Content-Length" not in out:
            out[b"Content-Length"] = b"%d" % len(body)
        for name, value in out.items():
            head.append(b"%s: %s\r\n" % (name, value))
        head.append(b"\r\n")
        head.append(body)
        return b"".join(head)


class _Receiving:
    """Stands for a request still being received in ``LeanChannel.requests``."""

    startedWriting = True  # (see LeanRequest.startedWriting)


_RECEIVING = _Receiving()


class _Slot:
    """A pipelined request whose answer is not written yet (answers go out in order)."""

    __slots__ = ("close", "data", "request")

    def __init__(self, request: Any, data: bytes | None, close: bool) -> None:
        self.request = request
        self.data = data
        self.close = close


class LeanChannel(protocol.Protocol):
    """One connection of the send API listener (see the module's docstring)."""

    log = Logger()

    def __init__(self, factory: LeanFactory, addr: Any) -> None:
        self.factory = factory
        self.site = factory.site
        self.parser = HttpRequestParser(self)
        self.peer: Any = None
        self.persistent = True  # the restart handoff sets False: close after the answers in progress
        self.inner: Any = None  # the twisted.web channel after a switch
        # The request being received.
        self._method = b""
        self._url: list[bytes] = []
        self._headers: dict[bytes, bytes] = {}
        self._multi: dict[bytes, list[bytes]] | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._receiving = False
        self._hot: Callable[[Any], Any] | None = None
        self._raw: list[bytes] | None = None  # its bytes so far, while it may still be switched
        self._head_size = 0
        # Per chunk.
        self._chunk = b""
        self._fresh = True  # the next request begins at the start of the chunk being parsed
        self._out: list[bytes] = []
        self._feeding = False
        self._lose = False
        # Answers not written yet (only when one is answered later).
        self._pending: deque[_Slot] = deque()
        self._done = False  # nothing more is read (closing, switched, lost)
        self._lost = False
        self._paused = False
        self._direct = False
        self._first = True
        #: When the request in progress started (None: idle); the factory's sweep reads it.
        self.started: float | None = None
        self.idle_since = 0.0

    # -- Protocol -------------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.peer = self.transport.getPeer()
        self._direct = isinstance(self.transport, tcp.Connection)  # (not TLS: its wrapper forwards .socket)
        self.started = self.factory.clock.seconds()  # as twisted.web: a silent connection gets 408

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        if self._first:
            self._first = False
            if getattr(self.transport, "negotiatedProtocol", None) == b"h2":  # (ALPN) twisted.web speaks HTTP/2
                self._raw = [data]
                self._switch_now()
                return
        if not self._receiving:
            self._fresh = True
            if self.started is None:
                self.started = self.factory.clock.seconds()
        elif self._raw is not None:
            self._raw.append(data)
        self._chunk = data
        self._feeding = True
        try:
            self.parser.feed_data(data)
        except HttpParserCallbackError as e:
            if isinstance(e.__context__, _Switch):
                self._feeding = False
                self._switch_now()
                return
            if not isinstance(e.__context__, _Stop):
                self._feeding = False
                raise
        except HttpParserError as e:
            self._bad_request(e)
        finally:
            self._chunk = b""
        self._feeding = False
        self._flush()

    def connectionLost(self, reason: Any = protocol.connectionDone) -> None:
        self._lost = self._done = True
        self.started = None
        self.site.channels.discard(self)
        self.factory.channels.discard(self)
        self._pending.clear()
        if self.inner is not None:
            self.inner.connectionLost(reason)

    # -- for ApiSite.drain and the restart handoff ------------------------------------------

    @property
    def requests(self) -> list[Any]:
        """Requests in progress: being received, or not answered yet."""
        out: list[Any] = [slot.request or _RECEIVING for slot in self._pending]
        if self._receiving:
            out.append(_RECEIVING)
        return out

    def setTimeout(self, seconds: Any) -> None:
        """(:func:`pns4ones.web.lingering_close` calls it; the factory's sweep does the timing.)"""
        self.started = None
        self._done = True

    # -- httptools callbacks ----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._done:
            raise _Stop()
        self._receiving = True
        self._url = []
        self._headers = {}
        self._multi = None
        self._body = []
        self._size = 0
        self._hot = None
        self._head_size = 0
        if self._fresh and not self._pending:
            self._raw = [self._chunk]
        else:
            self._raw = None
        self._fresh = False
        if self.started is None:
            self.started = self.factory.clock.seconds()

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            self._head_too_large()

    def _head_too_large(self) -> None:
        if self._raw is not None:
            raise _Switch()
        self._queue(
            None,
            canned(
                431,
                b"Request Header Fields Too Large",
                {"error": "headers_too_large", "reason": f"request line and headers over {MAX_HEAD} bytes"},
            ),
            True,
        )
        raise _Stop()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD:
            self._head_too_large()
        name = name.lower()
        headers = self._headers
        if name in headers:  # repeated: getHeader answers the last one, as twisted.web does
            if self._multi is None:
                self._multi = {}
            self._multi.setdefault(name, [headers[name]]).append(value)
        headers[name] = value

    def on_headers_complete(self) -> None:
        parser = self.parser
        method = parser.get_method()
        uri = b"".join(self._url)
        hot = self.factory.hot.get((method, uri.partition(b"?")[0]))
        if hot is None or parser.should_upgrade():
            if self._raw is not None:
                raise _Switch()
            self._queue(
                None,
                canned(
                    400,
                    b"Bad Request",
                    {
                        "error": "pipelined_request",
                        "reason": "only /sendmessage, /sendmessages and /auth may be pipelined behind other requests on a connection: send this one on its own",
                    },
                ),
                True,
            )
            raise _Stop()
        self._raw = None
        self._hot = hot
        self._method = method
        headers = self._headers
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                size = 0  # llhttp has already refused a malformed length
            if size > self.site.max_body_size:
                self._too_large(size)
                raise _Stop()
        expect = headers.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue" and parser.get_http_version() == "1.1":
            self._queue(None, _CONTINUE, False)

    def on_body(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self.site.max_body_size:
            self._too_large(self._size)
            raise _Stop()
        self._body.append(data)

    def on_message_complete(self) -> None:
        self._receiving = False
        self.started = None
        self.idle_since = self.factory.clock.seconds()
        hot = self._hot
        if hot is None:  # (a request that was refused before its end)
            return
        parser = self.parser
        version = parser.get_http_version()
        request = LeanRequest(self._method, b"".join(self._url), b"HTTP/" + version.encode(), self._headers, self._multi, self.peer)
        body = self._body
        request.body = body[0] if len(body) == 1 else b"".join(body)
        trusted = self.site.trusted_proxies
        if trusted:
            proxies.apply(request, trusted)
        closing = getattr(self.site, "closing", False)  # a restart is under way: senders reconnect to the next process
        close = closing or not (self.persistent and version == "1.1" and _keep_alive(self._headers.get(b"connection")))
        slot = _Slot(request, None, close)
        answer = self.factory.api.respond(hot, request, lambda data: self._answered(slot, data))
        if answer is not None and not self._pending:  # the usual case: answered at once, nothing before it
            self._out.append(request.response(answer, close, closing))
            self._lose = self._lose or close
            self.site.log(request)
        else:
            self._pending.append(slot)
            if answer is not None:
                slot.data = request.response(answer, close, closing)
                self.site.log(request)
                self._write_ready()
            elif len(self._pending) >= MAX_PENDING and not self._paused:
                self._paused = True
                self.transport.pauseProducing()
        if close:
            self._done = True
            raise _Stop()

    # -- answers ------------------------------------------------------------------------------

    def _queue(self, request: Any, data: bytes, close: bool) -> None:
        """An answer behind those not written yet (or at once, when there are none)."""
        if self._pending:
            self._pending.append(_Slot(request, data, close))
        else:
            self._out.append(data)
            self._lose = self._lose or close
        if close:
            self._done = True
            self.started = None

    def _answered(self, slot: _Slot, data: bytes) -> None:
        if self._lost:
            return
        slot.data = slot.request.response(data, slot.close, getattr(self.site, "closing", False))
        self.site.log(slot.request)
        self._write_ready()
        if not self._feeding:
            self._flush()

    def _write_ready(self) -> None:
        pending = self._pending
        while pending and pending[0].data is not None:
            slot = pending.popleft()
            self._out.append(slot.data)
            if slot.close:
                self._lose = True
                pending.clear()
        if self._paused and len(pending) < MAX_PENDING // 2:
            self._paused = False
            self.transport.resumeProducing()

    def _flush(self) -> None:
        out = self._out
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            # Plain TCP with nothing queued: one send() now, rather than queueing
            # and two epoll changes around a later doWrite (see transports/addin.py).
            if not (self._direct and send_now(self.transport, data)):
                self.transport.write(data)
        if self._lose and not self._pending:
            self._lose = False
            self._done = True
            self.transport.loseConnection()

    # -- errors and switching -------------------------------------------------------------------

    def _bad_request(self, error: Exception) -> None:
        if self._raw is None and self._fresh and not self._pending and not self._receiving:
            self._raw = [self._chunk]  # (refused before a request began)
        if self._raw is not None:  # twisted.web answers it, as it always has
            self._switch_now()
            return
        peer = getattr(self.peer, "host", "?")
        self.log.warn("malformed HTTP request from {peer}: {error}: 400", peer=peer, error=str(error) or type(error).__name__)
        self._receiving = False
        self._queue(None, canned(400, b"Bad Request", {"error": "bad_request", "reason": f"malformed HTTP request: {error}"}), True)

    def _too_large(self, size: int) -> None:
        self._receiving = False
        self._done = True
        self._flush()  # answers before this one first
        answer_too_large(self.site, self, size, getattr(self.peer, "host", "?"))

    def expire(self) -> None:
        """The factory's sweep: the request in progress took longer than ``request_timeout``."""
        self._receiving = False
        self._flush()
        lingering_close(
            self, canned(408, b"Request Timeout", {"error": "request_timeout", "reason": "the request was not received in time"})
        )

    def _switch_now(self) -> None:
        """Hand the connection to twisted.web, replaying the current request's bytes."""
        raw = b"".join(self._raw or ())
        self._raw = None
        self._done = True
        self._receiving = False
        self.started = None
        self.site.channels.discard(self)
        self.factory.channels.discard(self)
        inner = self.site.buildProtocol(self.transport.getPeer())
        self.inner = inner
        # Looked up at each call: an upgrade to WebSocket replaces the channel's dataReceived.
        self.dataReceived = lambda data: inner.dataReceived(data)  # type: ignore[method-assign]
        inner.makeConnection(self.transport)
        if self._lost:
            return
        inner.dataReceived(raw)


def _keep_alive(connection: bytes | None) -> bool:
    """twisted.web's rule for HTTP/1.1 (``HTTPChannel.checkPersistence``)."""
    if not connection:
        return True
    return b"close" not in [t.lower() for t in connection.split(b" ")]


@implementer(IProtocolNegotiationFactory)
class LeanFactory(protocol.ServerFactory):
    """
    The send API listener's factory: :class:`LeanChannel` in front of ``site``
    (an :class:`pns4ones.web.ApiSite`), with the hot routes of ``api``.
    """

    log = Logger()
    noisy = False

    def __init__(self, site: Any, api: Any, clock: Any = None) -> None:
        self.site = site
        self.api = api
        self.clock = clock or site.clock
        self.hot = {
            (b"POST", b"/sendmessage"): api.sendmessage,
            (b"POST", b"/sendmessages"): api.sendmessages,
            (b"GET", b"/auth"): api.auth,
        }
        self.channels: set[LeanChannel] = set()
        self._sweep: LoopingCall | None = None

    def acceptableProtocols(self) -> list[bytes]:
        """ALPN over TLS: what the site speaks (HTTP/1.1; h2, switched to twisted.web, when installed)."""
        return list(self.site.acceptableProtocols())

    def buildProtocol(self, addr: Any) -> LeanChannel:
        channel = LeanChannel(self, addr)
        self.channels.add(channel)
        self.site.channels.add(channel)
        return channel

    def startFactory(self) -> None:
        self.site.doStart()
        self._sweep = LoopingCall(self.sweep)
        self._sweep.clock = self.clock
        self._sweep.start(min(1.0, self.site.request_timeout / 4), now=False)

    def stopFactory(self) -> None:
        if self._sweep is not None and self._sweep.running:
            self._sweep.stop()
        self._sweep = None
        self.site.doStop()

    def sweep(self) -> None:
        """Once per tick: 408 for requests over ``request_timeout``, close connections idle over ``site.timeOut``."""
        now = self.clock.seconds()
        limit = self.site.request_timeout
        idle = self.site.timeOut
        for channel in list(self.channels):
            if channel.started is not None:
                if now - channel.started > limit:
                    channel.expire()
            elif idle is not None and not channel._pending and not channel._done and now - channel.idle_since > idle:
                channel.log.info("closing an idle connection from {peer}", peer=str(channel.peer))
                channel._done = True
                channel.transport.loseConnection()
