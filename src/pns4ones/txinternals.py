"""
Everything in pns4ones that relies on Twisted's private state, in one place.

Twisted does not promise these attributes; an upgrade may rename or remove
them.  ``tests/test_txinternals.py`` pins each one against the installed
Twisted, so that such an upgrade fails that test loudly instead of silently
breaking a fast path or a restart handoff.  No other module reads or writes
an underscore attribute of a Twisted object.

Attributes relied on (``twisted.internet.tcp.Connection``, via
``abstract.FileDescriptor``):

* ``dataBuffer``, ``offset``: bytes queued for writing and how much of them is sent;
* ``_tempDataBuffer``: chunks written since the last flush into ``dataBuffer``;
* ``socket``, ``connected``, ``disconnecting``: public but undocumented.

And of ``twisted.web``'s WebSocket wire protocol (see :func:`guard_websocket`):
its message buffers and its wsproto connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

#: The private attributes of a TCP transport this module reads (pinned by the tests).
TCP_ATTRIBUTES = ("dataBuffer", "offset", "_tempDataBuffer", "socket", "connected", "disconnecting")


def send_now(transport: Any, data: bytes) -> bool:
    """
    Fan-out fast path: when nothing is queued on a plain TCP transport, hand
    ``data`` straight to the kernel (one ``send()``), instead of queueing it and
    registering for writability, which costs two epoll changes and a later
    ``doWrite`` per subscriber.  Whatever the kernel does not take goes through
    ``transport.write()`` as usual, keeping order and flow control.  Measured:
    fan-out to 1,000 subscribers went from about 18,000 to about 92,000
    deliveries per second.  Returns False when the transport is not one this
    applies to (TLS, memory transports, something queued); the caller then
    writes normally.
    """
    sock = getattr(transport, "socket", None)
    if (
        sock is None
        or transport._tempDataBuffer
        or len(transport.dataBuffer) != transport.offset
        or not transport.connected
        or transport.disconnecting
    ):
        return False
    try:
        sent = sock.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        return False  # let the transport notice and report the error
    if sent < len(data):
        transport.write(data[sent:])
    return True


# -- twisted.web.websocket ------------------------------------------------------------------
#
# ``twisted.web._websocket_impl._WebSocketWireProtocol`` (what a
# ``WebSocketProtocol``'s ``negotiationStarted`` receives as its transport):
#
# * ``_textBuffer``, ``_bytesBuffer``: message reassembly buffers, unbounded in
#   the library (``Buffer.add`` appends, ``Buffer.done`` takes the whole message);
# * ``_wsconn``: the wsproto ``Connection``; the wire protocol calls its
#   ``receive_data()``, ``events()``, ``send()`` and ``state``, and answers
#   every ``Ping`` event itself (``transport.write(_wsconn.send(ping.response()))``),
#   with no way for the application to refuse or count it.

#: The private attributes of twisted.web's WebSocket wire protocol this module replaces (pinned by the tests).
WS_WIRE_ATTRIBUTES = ("_textBuffer", "_bytesBuffer", "_wsconn")


class _FilteredConnection:
    """A wsproto ``Connection`` whose ``events()`` drops what ``keep`` refuses."""

    __slots__ = ("_inner", "_keep")

    def __init__(self, inner: Any, keep: Callable[[Any], bool]) -> None:
        self._inner = inner
        self._keep = keep

    @property
    def state(self) -> Any:
        return self._inner.state

    def receive_data(self, data: bytes | None) -> None:
        self._inner.receive_data(data)

    def send(self, event: Any) -> bytes:
        return bytes(self._inner.send(event))

    def events(self) -> Iterator[Any]:
        keep = self._keep
        for event in self._inner.events():
            if keep(event):
                yield event


def guard_websocket(wire: Any, text_buffer: Any, bytes_buffer: Any, keep: Callable[[Any], bool]) -> None:
    """
    Bound and filter what twisted.web's WebSocket wire protocol ``wire`` does
    with a peer's frames: reassemble messages in ``text_buffer`` and
    ``bytes_buffer`` (objects with ``add`` and ``done``, which can refuse to
    grow), and hand it only the wsproto events ``keep(event)`` accepts, so
    that the caller can rate-limit pings (a refused ``Ping`` gets no pong)
    and ignore everything once it has closed the connection.
    """
    wire._textBuffer = text_buffer
    wire._bytesBuffer = bytes_buffer
    wire._wsconn = _FilteredConnection(wire._wsconn, keep)
