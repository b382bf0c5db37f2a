"""
Pins the private Twisted state that :mod:`pns4ones.txinternals` relies on, so a
Twisted upgrade that changes it fails here, by name, instead of breaking a fast
path or a restart handoff in production: each attribute exists, and each
function does what its caller counts on, over real loopback sockets.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer, protocol, reactor, tcp
from twisted.internet.task import deferLater
from twisted.internet.testing import StringTransport
from twisted.protocols.basic import IntNStringReceiver
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pns4ones import txinternals

#: Bytes written to a peer that does not read: far more than loopback's kernel buffers hold at first.
BIG = 4 * 1024 * 1024


class _Keep(protocol.Protocol):
    def connectionMade(self) -> None:
        self.factory.made.callback(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.lost.callback(None)  # type: ignore[attr-defined]


@defer.inlineCallbacks
def until(condition: Callable[[], bool], timeout: float = 10.0) -> Generator[Any, Any, None]:
    """Let the reactor run until ``condition()`` holds."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        yield deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("timed out")


class TcpTransportTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Generator[Any, Any, None]:
        factory = protocol.ServerFactory()
        factory.protocol = _Keep
        factory.made = defer.Deferred()  # type: ignore[attr-defined]
        factory.lost = self.lost = defer.Deferred()  # type: ignore[attr-defined]
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.client = socket.socket()
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: writes back up at once
        self.client.connect(("127.0.0.1", self.port.getHost().port))
        self.client.settimeout(5)
        self.proto = yield factory.made
        self.transport = self.proto.transport

    def tearDown(self) -> defer.Deferred[None]:
        self.client.close()
        if not self.lost.called:
            self.transport.abortConnection()
        return defer.maybeDeferred(self.port.stopListening)

    def read_exactly(self, count: int) -> bytes:
        out = bytearray()
        while len(out) < count:
            chunk = self.client.recv(min(count - len(out), 1 << 16))
            if not chunk:
                break
            out += chunk
        return bytes(out)

    def test_attributes_exist(self) -> None:
        """Every private attribute txinternals uses is on the installed Twisted's TCP transport and port, with the type it expects."""
        self.assertIsInstance(self.transport, tcp.Connection)
        for name in txinternals.TCP_ATTRIBUTES:
            self.assertTrue(hasattr(self.transport, name), f"twisted.internet.tcp.Connection has no {name!r}: update pns4ones.txinternals")
        for name in txinternals.PORT_ATTRIBUTES:
            self.assertTrue(hasattr(self.port, name), f"twisted.internet.tcp.Port has no {name!r}: update pns4ones.txinternals")
        self.assertIsInstance(self.transport.dataBuffer, bytes)
        self.assertIsInstance(self.transport._tempDataBuffer, list)
        self.assertIsInstance(self.transport._tempDataLen, int)
        self.assertIsInstance(self.transport.offset, int)
        self.assertIs(self.transport._shouldShutdown, True)
        self.assertIs(self.port._shouldShutdown, True)

    def test_send_now_writes_at_once_when_idle(self) -> None:
        """With nothing queued, send_now hands the bytes to the kernel in the same call (the peer can read them before the reactor runs)."""
        self.assertTrue(txinternals.send_now(self.transport, b"hello"))
        self.assertEqual(self.client.recv(5), b"hello")

    def test_send_now_keeps_order_behind_queued_bytes(self) -> None:
        """With bytes queued by transport.write, send_now declines, so the caller queues behind them."""
        self.transport.write(b"first")
        self.assertFalse(txinternals.send_now(self.transport, b"second"))

    @defer.inlineCallbacks
    def test_take_output_takes_exactly_what_the_kernel_has_not(self) -> Generator[Any, Any, None]:
        """Bytes the kernel took, then take_output's bytes, make the written stream exactly, also when taken mid-flush with newer writes behind."""
        data = os.urandom(BIG)
        half = BIG // 2
        self.transport.write(data[:half])
        # The reactor flushes part of it (dataBuffer with an offset, or a partial send), then more is written behind.
        yield until(lambda: len(self.transport.dataBuffer) > 0 and not self.transport._tempDataBuffer)
        self.transport.write(data[half:])
        self.assertTrue(self.transport._tempDataBuffer, "the second write waits in _tempDataBuffer")
        taken = txinternals.take_output(self.transport)
        self.assertGreater(len(taken), half, "most of it was still queued in the process")
        self.assertEqual(
            (self.transport.dataBuffer, self.transport.offset, self.transport._tempDataBuffer, self.transport._tempDataLen), (b"", 0, [], 0)
        )
        sent = self.read_exactly(BIG - len(taken))
        self.assertEqual(sent + taken, data)
        self.client.setblocking(False)
        self.assertRaises(BlockingIOError, self.client.recv, 1)  # and nothing more: writing stopped

    @defer.inlineCallbacks
    def test_handed_over_connection_closes_without_shutdown(self) -> Generator[Any, Any, None]:
        """A connection marked handed over closes only this descriptor: the peer gets no end of stream and reads what the other holder writes."""
        other = socket.socket(fileno=os.dup(self.transport.fileno()))  # what the new process holds
        self.addCleanup(other.close)
        txinternals.set_handed_over(self.transport, True)
        self.transport.loseConnection()
        yield self.lost
        other.sendall(b"still here")
        self.assertEqual(self.read_exactly(10), b"still here")

    @defer.inlineCallbacks
    def test_connection_not_handed_over_shuts_down(self) -> Generator[Any, Any, None]:
        """Without set_handed_over (or after undoing it), closing shuts the connection down for every holder: the peer sees end of stream."""
        other = socket.socket(fileno=os.dup(self.transport.fileno()))
        self.addCleanup(other.close)
        txinternals.set_handed_over(self.transport, True)
        txinternals.set_handed_over(self.transport, False)
        self.transport.loseConnection()
        yield self.lost
        self.assertEqual(self.client.recv(1), b"")

    @defer.inlineCallbacks
    def test_close_descriptor_writes_nothing_and_leaves_the_other_holder(self) -> Generator[Any, Any, None]:
        """close_descriptor drops queued bytes, closes at once without shutdown (the other holder still writes), tells the protocol; the peer sees end of stream once the other holder closes too."""
        other = socket.socket(fileno=os.dup(self.transport.fileno()))  # what the (killed) new process held
        self.transport.write(b"never sent")
        txinternals.close_descriptor(self.transport)
        self.assertTrue(self.lost.called, "connectionLost at once")
        other.sendall(b"still here")
        self.assertEqual(self.read_exactly(10), b"still here")
        other.close()
        self.assertEqual(self.client.recv(1), b"", "an orderly end of stream (no reset) once the last descriptor is closed")
        yield deferLater(reactor, 0, lambda: None)

    @defer.inlineCallbacks
    def test_handed_over_listener_keeps_listening(self) -> Generator[Any, Any, None]:
        """A listening port marked handed over stops listening here only: the other holder still accepts connections."""
        other = socket.socket(fileno=os.dup(self.port.fileno()))
        self.addCleanup(other.close)
        txinternals.set_handed_over(self.port, True)
        yield self.port.stopListening()
        with socket.create_connection(("127.0.0.1", other.getsockname()[1]), timeout=5):
            other.settimeout(5)
            accepted, _ = other.accept()
            accepted.close()


class _Frames(IntNStringReceiver):
    structFormat = "<H"
    prefixLength = 2

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, bytes]] = []

    def stringReceived(self, string: bytes) -> None:
        self.seen.append((string, txinternals.unparsed_input(self)))


def frame(payload: bytes) -> bytes:
    return struct.pack("<H", len(payload)) + payload


class ReceiverTests(SynchronousTestCase):
    def test_attributes_exist(self) -> None:
        """IntNStringReceiver keeps its unparsed bytes where txinternals reads them."""
        receiver = _Frames()
        for name in txinternals.RECEIVER_ATTRIBUTES:
            self.assertTrue(hasattr(receiver, name), f"IntNStringReceiver has no {name!r}: update pns4ones.txinternals")

    def test_unparsed_input_is_the_next_frames_start(self) -> None:
        """After whole frames and part of the next, unparsed_input is that part, prefix included; during a frame's callback, what follows it."""
        receiver = _Frames()
        receiver.makeConnection(StringTransport())
        rest = frame(b"third")[:4]
        receiver.dataReceived(frame(b"first") + frame(b"second") + rest)
        self.assertEqual(
            receiver.seen, [(b"first", frame(b"second") + rest), (b"second", rest)], "in the callback: the bytes after the frame"
        )
        self.assertEqual(txinternals.unparsed_input(receiver), rest)
        receiver.dataReceived(frame(b"third")[4:])
        self.assertEqual(txinternals.unparsed_input(receiver), b"")
        self.assertEqual([s for s, _ in receiver.seen], [b"first", b"second", b"third"])


class _FakeConnection:
    """A DB-API connection whose server has gone: rollback and close raise."""

    def __init__(self) -> None:
        self.closed = False
        self.close_calls = 0

    def cursor(self) -> Any:
        return self

    def execute(self, *args: Any) -> None:
        raise ConnectionError("server closed the connection")

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        self.closed = True
        raise ConnectionError("cannot roll back: no connection")

    def close(self) -> None:
        self.close_calls += 1
        raise ConnectionError("already gone")


class _FakeDriver:
    """The DB-API module adbapi imports by name (registered in sys.modules for the test)."""

    apilevel = "2.0"
    threadsafety = 1
    paramstyle = "qmark"

    def __init__(self) -> None:
        self.made: list[_FakeConnection] = []

    def connect(self, *args: Any, **kwargs: Any) -> _FakeConnection:
        self.made.append(_FakeConnection())
        return self.made[-1]


class _Pool(txinternals.QuietPool):
    def broken(self, conn: Any) -> bool:
        return bool(conn.closed)


class AdbapiTests(TestCase):
    def setUp(self) -> None:
        import sys

        self.driver = _FakeDriver()
        sys.modules["pns4ones_fake_dbapi"] = self.driver  # type: ignore[assignment]
        self.addCleanup(sys.modules.pop, "pns4ones_fake_dbapi")
        self.pool = _Pool("pns4ones_fake_dbapi", cp_min=1, cp_max=1, cp_reconnect=True)
        self.addCleanup(self.pool.close)

    def test_attributes_exist(self) -> None:
        """adbapi keeps a connection's DB-API connection and pool where QuietConnection reads them, and closes through _close."""
        from twisted.enterprise import adbapi

        conn = adbapi.Connection(self.pool)
        for name in txinternals.ADBAPI_CONNECTION_ATTRIBUTES:
            self.assertTrue(hasattr(conn, name), f"adbapi.Connection has no {name!r}: update pns4ones.txinternals")
        self.assertIs(conn._pool, self.pool)
        self.assertIs(conn._connection, self.driver.made[0])
        for name in txinternals.ADBAPI_POOL_METHODS:
            self.assertTrue(
                callable(getattr(adbapi.ConnectionPool, name, None)), f"adbapi.ConnectionPool has no {name}(): update pns4ones.txinternals"
            )

    @defer.inlineCallbacks
    def test_a_failed_rollback_drops_the_broken_connection_quietly(self) -> Generator[Any, Any, None]:
        """The interaction's own error reaches the caller (not the rollback's), the broken connection is closed through _close without a logged error, and the next interaction gets a new one."""

        def fails(cursor: Any) -> None:
            cursor.execute("SELECT 1")

        yield self.assertFailure(self.pool.runInteraction(fails), ConnectionError)
        self.assertEqual(self.driver.made[0].close_calls, 1, "closed once, its error swallowed")
        yield self.assertFailure(self.pool.runInteraction(fails), ConnectionError)
        self.assertEqual(len(self.driver.made), 2, "a new connection for the next interaction")
        self.assertEqual(self.flushLoggedErrors(), [])


class LeanDispatchTests(SynchronousTestCase):
    def test_epoll_attributes_exist(self) -> None:
        """The epoll reactor still has the private attributes lean_dispatch uses, and its doPoll still wraps events in callWithLogger."""
        import inspect

        from twisted.internet import epollreactor

        for name in txinternals.EPOLL_ATTRIBUTES:
            self.assertTrue(hasattr(epollreactor.EPollReactor, name) or name in ("_poller", "_selectables"), name)
        fresh = epollreactor.EPollReactor()
        try:
            for name in txinternals.EPOLL_ATTRIBUTES:
                self.assertTrue(hasattr(fresh, name), f"EPollReactor has no {name!r}: update pns4ones.txinternals.lean_dispatch")
            self.assertIsInstance(fresh._selectables, dict)
            source = inspect.getsource(epollreactor.EPollReactor.doPoll)
            self.assertIn("self._poller.poll(timeout, len(self._selectables))", source)
            self.assertIn("log.callWithLogger(selectable, _drdw, selectable, fd, event)", source)
        finally:
            fresh._poller.close()

    def test_other_reactors_unchanged(self) -> None:
        """lean_dispatch leaves anything but the epoll reactor alone."""
        from twisted.internet.testing import MemoryReactorClock

        memory = MemoryReactorClock()
        self.assertFalse(txinternals.lean_dispatch(memory))
        self.assertNotIn("doIteration", vars(memory))


def _lean_reactor_script(body: str) -> str:
    return (
        "import socket, sys\n"
        "from twisted.internet import epollreactor\n"
        "epollreactor.install()\n"
        "from twisted.internet import protocol, reactor\n"
        "from pns4ones import txinternals\n"
        "assert txinternals.lean_dispatch(reactor)\n" + body
    )


class LeanDispatchProcessTests(SynchronousTestCase):
    """lean_dispatch in a real epoll reactor (a child process: the test reactor is not touched)."""

    def run_script(self, body: str) -> str:
        import subprocess
        import sys

        done = subprocess.run([sys.executable, "-c", _lean_reactor_script(body)], capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout + done.stderr

    def test_reads_writes_and_losses(self) -> None:
        """Through the lean loop: data is read, large writes drain through doWrite, a lost connection is reported."""
        out = self.run_script(
            "class Echo(protocol.Protocol):\n"
            "    def dataReceived(self, data):\n"
            "        self.transport.write(data * 20000)\n"
            "    def connectionLost(self, reason):\n"
            "        print('lost', reason.type.__name__)\n"
            "        reactor.stop()\n"
            "port = reactor.listenTCP(0, protocol.Factory.forProtocol(Echo), interface='127.0.0.1')\n"
            "def client():\n"
            "    s = socket.create_connection(('127.0.0.1', port.getHost().port))\n"
            "    s.sendall(b'0123456789abcdef' * 4)\n"
            "    got = 0\n"
            "    while got < 64 * 20000:\n"
            "        got += len(s.recv(1 << 20))\n"
            "    print('received', got)\n"
            "    s.close()\n"
            "reactor.callInThread(client)\n"
            "reactor.callLater(30, reactor.stop)\n"
            "reactor.run()\n"
        )
        self.assertIn("received 1280000", out)
        self.assertIn("lost ConnectionDone", out)

    def test_a_protocol_error_is_logged_and_the_connection_dropped(self) -> None:
        """An exception in dataReceived is logged (Unhandled Error with its traceback) and the connection closed, as without the lean loop."""
        out = self.run_script(
            "from twisted.python import log\n"
            "log.startLogging(sys.stdout)\n"
            "class Bad(protocol.Protocol):\n"
            "    def dataReceived(self, data):\n"
            "        raise ValueError('boom')\n"
            "    def connectionLost(self, reason):\n"
            "        print('lost', reason.type.__name__)\n"
            "        reactor.stop()\n"
            "port = reactor.listenTCP(0, protocol.Factory.forProtocol(Bad), interface='127.0.0.1')\n"
            "def client():\n"
            "    s = socket.create_connection(('127.0.0.1', port.getHost().port))\n"
            "    s.sendall(b'x')\n"
            "    s.recv(10)\n"
            "reactor.callInThread(client)\n"
            "reactor.callLater(30, reactor.stop)\n"
            "reactor.run()\n"
        )
        self.assertIn("ValueError: boom", out)
        self.assertIn("lost ValueError", out)

    def cork_case(self, writes: str, expect: int | None = None) -> str:
        """
        One connection through the lean loop: its first bytes make the server
        run ``writes`` (Python statements over ``t``, its transport) inside that
        poll's dispatch, and print what the client could read before the poll
        ended ("during: ...") and what it read after ("after: ..."): ``expect``
        bytes, or up to the end of the stream (None), reading in a thread while
        the reactor runs.
        """
        return self.run_script(
            "import time\n"
            "from pns4ones.txinternals import send_now, take_output, CORK_LIMIT\n"
            "client = None\n"
            "class Server(protocol.Protocol):\n"
            "    def dataReceived(self, data):\n"
            "        t = self.transport\n" + "".join(f"        {line}\n" for line in writes.splitlines()) + "        time.sleep(0.05)\n"
            "        try:\n"
            "            seen = len(client.recv(1 << 20, socket.MSG_DONTWAIT | socket.MSG_PEEK))\n"
            "        except BlockingIOError:\n"
            "            seen = 0\n"
            "        print('during:', seen)\n"
            "        reactor.callInThread(finish)\n"
            "def finish():\n"
            "    client.settimeout(2)\n"
            "    got = b''\n"
            "    try:\n"
            f"        while {expect!r} is None or len(got) < {expect!r}:\n"
            "            part = client.recv(1 << 20)\n"
            "            if not part:\n"
            "                break\n"
            "            got += part\n"
            "    except socket.timeout:\n"
            "        pass\n"
            "    print('after:', got[:40], len(got))\n"
            "    reactor.callFromThread(reactor.stop)\n"
            "port = reactor.listenTCP(0, protocol.Factory.forProtocol(Server), interface='127.0.0.1')\n"
            "client = socket.create_connection(('127.0.0.1', port.getHost().port))\n"
            "client.sendall(b'go')\n"
            "reactor.callLater(30, reactor.stop)\n"
            "reactor.run()\n"
        )

    def test_writes_of_one_poll_leave_after_its_last_event(self) -> None:
        """send_now during a poll's events holds the bytes (the peer sees nothing yet) and sends them, in order, once the events are done."""
        out = self.cork_case(
            "print('taken', send_now(t, b'one,'), send_now(t, b'two,'))\nt.write(b'three,')\nsend_now(t, b'four')", expect=18
        )
        self.assertIn("taken True True", out)
        self.assertIn("during: 0", out)
        self.assertIn("after: b'one,two,three,four' 18", out)

    def test_a_close_after_held_writes_sends_them_first(self) -> None:
        """loseConnection after send_now in the same poll: the held bytes go out, then the end of stream."""
        out = self.cork_case("send_now(t, b'answer')\nt.loseConnection()")
        self.assertIn("after: b'answer' 6", out)

    def test_a_handoff_takes_held_bytes(self) -> None:
        """take_output during the poll takes what send_now held; nothing more is sent after the events."""
        out = self.cork_case("send_now(t, b'frame')\nprint('taken', take_output(t))\nt.startReading()", expect=1)
        self.assertIn("taken b'frame'", out)
        self.assertIn("after: b'' 0", out)

    def test_a_large_fan_out_leaves_in_runs(self) -> None:
        """Past CORK_TRANSPORTS held transports, the next write first sends what the others hold: the first run is out before the poll ends."""
        out = self.run_script(
            "import time\n"
            "from pns4ones.txinternals import send_now, CORK_TRANSPORTS\n"
            "servers, clients = [], []\n"
            "def peek(c):\n"
            "    try:\n"
            "        return len(c.recv(100, socket.MSG_DONTWAIT | socket.MSG_PEEK))\n"
            "    except BlockingIOError:\n"
            "        return 0\n"
            "class Server(protocol.Protocol):\n"
            "    def connectionMade(self):\n"
            "        servers.append(self.transport)\n"
            "    def dataReceived(self, data):\n"
            "        for t in servers[:-1]:\n"
            "            send_now(t, b'frame')\n"
            "        time.sleep(0.05)\n"
            "        seen = [peek(c) for c in clients[:-1]]\n"
            "        print('during:', seen.count(5), 'of', len(seen), 'run', CORK_TRANSPORTS)\n"
            "        reactor.callLater(0.1, finish)\n"
            "def finish():\n"
            "    print('after:', [peek(c) for c in clients[:-1]].count(5))\n"
            "    reactor.stop()\n"
            "port = reactor.listenTCP(0, protocol.Factory.forProtocol(Server), interface='127.0.0.1')\n"
            "def connect():\n"
            "    if len(clients) == CORK_TRANSPORTS + 11:\n"
            "        return reactor.callLater(0.2, clients[-1].sendall, b'go')\n"
            "    clients.append(socket.create_connection(('127.0.0.1', port.getHost().port)))\n"
            "    reactor.callLater(0, connect)\n"
            "connect()\n"
            "reactor.callLater(30, reactor.stop)\n"
            "reactor.run()\n"
        )
        self.assertIn("during: 64 of 74 run 64", out)
        self.assertIn("after: 74", out)

    def test_a_large_held_write_falls_back_to_the_queue(self) -> None:
        """Past CORK_LIMIT send_now declines (the caller queues with flow control) and everything still arrives in order."""
        out = self.cork_case(
            "big = b'x' * CORK_LIMIT\n"
            "print('first', send_now(t, b'<' + big))\n"
            "print('second', send_now(t, b'tail>'))\n"
            "t.write(b'tail>')\n"
            "t.write(b'y' * (4 << 20))",
            expect=1 + (1 << 16) + 5 + (4 << 20),
        )
        self.assertIn("first True", out)
        self.assertIn("second False", out)
        self.assertIn(f"after: b'<{'x' * 39}' {1 + (1 << 16) + 5 + (4 << 20)}", out)


class _Recorder:
    """The smallest WebSocketProtocol: guards its wire and records what it is given."""

    def __init__(self, keep: Any) -> None:
        self.keep = keep
        self.texts: list[str] = []

    def negotiationStarted(self, transport: Any) -> None:
        txinternals.guard_websocket(transport, _Capped(""), _Capped(b""), self.keep)

    def negotiationFinished(self) -> None:
        pass

    def textMessageReceived(self, message: str) -> None:
        self.texts.append(message)

    def bytesMessageReceived(self, data: bytes) -> None:
        pass

    def pongReceived(self, payload: bytes) -> None:
        pass

    def connectionLost(self, reason: Any) -> None:
        pass


class _Capped:
    """A reassembly buffer that keeps at most 4 units."""

    def __init__(self, empty: Any) -> None:
        self.data = empty

    def add(self, new: Any) -> None:
        self.data = (self.data + new)[:4]

    def done(self) -> Any:
        data, self.data = self.data, self.data[0:0]
        return data


class WebSocketWireTests(TestCase):
    def wire(self, keep: Any) -> tuple[Any, Any, _Recorder]:
        from twisted.internet.testing import StringTransport
        from twisted.web import _websocket_impl
        from wsproto import Connection, ConnectionType

        recorder = _Recorder(keep)
        wire = _websocket_impl._WebSocketWireProtocol(Connection(ConnectionType.SERVER), _websocket_impl.serverBootstrap, recorder)
        transport = StringTransport()
        wire.makeConnection(transport)
        return wire, transport, recorder

    def test_attributes_exist(self) -> None:
        """The WebSocket wire protocol still has the private attributes guard_websocket replaces."""
        wire, _, _ = self.wire(lambda event: True)
        for name in txinternals.WS_WIRE_ATTRIBUTES:
            self.assertTrue(hasattr(wire, name), f"twisted's WebSocket wire protocol has no {name!r}: update pns4ones.txinternals")

    def test_guard_filters_pings_and_bounds_messages(self) -> None:
        """A ping the filter refuses gets no pong (the library answers the others itself); messages go through the given buffers."""
        from wsproto import Connection, ConnectionType
        from wsproto.events import Ping, TextMessage

        seen: list[Any] = []

        def keep(event: Any) -> bool:
            seen.append(event)
            return not (isinstance(event, Ping) and event.payload == b"no")

        wire, transport, recorder = self.wire(keep)
        client = Connection(ConnectionType.CLIENT)
        wire.dataReceived(client.send(Ping(b"yes")) + client.send(Ping(b"no")) + client.send(TextMessage("abcdefgh")))
        client.receive_data(transport.value())
        answered = [e.payload for e in client.events()]
        self.assertEqual(answered, [b"yes"])
        self.assertEqual(len(seen), 3)
        self.assertEqual(recorder.texts, ["abcd"])
