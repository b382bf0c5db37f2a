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
"""

from __future__ import annotations

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
