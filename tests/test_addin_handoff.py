"""
An add-in connection moved between two factories in one process, as a restart
handoff moves it between two processes: ``AddinProtocol.export_state``,
``handed_over``, ``take_back`` and ``adopt`` over real loopback sockets, time
driven by ``Clock``s.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Generator
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.task import Clock, deferLater
from twisted.trial.unittest import TestCase

from pns4ones import config, txinternals, wire
from pns4ones.core import Core
from pns4ones.hub import Outbound
from pns4ones.hub.local import LocalHub
from pns4ones.messages import Message, Recipient
from pns4ones.store import Application, Snapshot
from pns4ones.store.memory import MemoryStore
from pns4ones.transports.addin import AddinFactory, AddinProtocol, AddinState

KEY = wire.ClientKey.generate()
APP = Application("app", "Test", "s" * 64, KEY, 0.0)
TIMEOUT = 10.0


@defer.inlineCallbacks
def until(condition: Callable[[], object], timeout: float = 10.0) -> Generator[Any, Any, None]:
    """Let the reactor run until ``condition()`` holds."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        yield deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("timed out")


class Node:
    """One side of a handoff: a core with its hub, an add-in factory and a clock of its own."""

    def __init__(self, app: Application = APP) -> None:
        self.clock = Clock()
        self.core = Core(MemoryStore(clock=self.clock), LocalHub(clock=self.clock), self.clock)
        self.core.apply_snapshot(Snapshot((app,), ()))
        cfg = config.build(
            {"config": "/dev/null", "data_dir": "/nonexistent", "registration_timeout": str(TIMEOUT), "send_buffer_limit": "64M"}
        )
        self.factory = AddinFactory(self.core, cfg, self.clock, log_info=False)

    def send(self, n: int, size: int = 0) -> int:
        data = {"n": str(n), "pad": "x" * size}
        return self.core.hub.route("app", Recipient("user", "ib", user_id="u1"), Outbound(Message(data=data))).sessions

    def proto(self) -> AddinProtocol:
        [proto] = self.factory.connections
        return proto


class MoveTests(TestCase):
    @defer.inlineCallbacks
    def setUp(self) -> Generator[Any, Any, None]:
        self.old, self.new = Node(), Node()
        self.port = reactor.listenTCP(0, self.old.factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.client = socket.socket()
        self.client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.client.connect(("127.0.0.1", self.port.getHost().port))
        self.client.settimeout(5)
        self.addCleanup(self.client.close)
        yield until(lambda: self.old.factory.connections)
        self.frame = wire.encode_registration(KEY, "app", "ib", "u1")
        self.decoder = wire.FrameDecoder(KEY)

    def tearDown(self) -> None:
        for node in (self.old, self.new):
            node.factory.stop()
            for proto in list(node.factory.connections):
                proto.transport.abortConnection()

    def move(self) -> tuple[AddinState, bytes, AddinProtocol]:
        """Export from the old node, adopt the same socket in the new one (as the new process does with the descriptor)."""
        proto = self.old.proto()
        exported = proto.export_state()
        assert exported is not None
        state, pending = exported
        proto.handed_over()
        self.assertEqual(self.old.factory.connections, set())
        self.new.factory.adopting = True
        try:
            transport = reactor.adoptStreamConnection(proto.transport.fileno(), socket.AF_INET, self.new.factory)
        finally:
            self.new.factory.adopting = False
        proto.transport.socket.close()  # the old process exits: only the new one holds the socket now
        moved = transport.protocol
        self.assertIsInstance(moved, AddinProtocol)
        return state, pending, moved

    def closed_by_server(self) -> bool:
        """The server ended the connection (end of stream or reset)."""
        try:
            return self.client.recv(10) == b""
        except ConnectionResetError:
            return True

    @defer.inlineCallbacks
    def read(self, count: int) -> Generator[Any, Any, list[dict[str, Any]]]:
        """The next ``count`` messages the client decodes (the reactor keeps writing meanwhile)."""
        out: list[dict[str, Any]] = []
        self.client.setblocking(False)

        def more() -> bool:
            try:
                while len(out) < count:
                    data = self.client.recv(1 << 16)
                    self.assertTrue(data, "the server closed the connection")
                    out.extend(json.loads(p) for p in self.decoder.feed(data))
            except BlockingIOError:
                pass
            return len(out) >= count

        yield until(more)
        self.client.setblocking(True)
        return out

    @defer.inlineCallbacks
    def test_half_a_registration_moves_and_completes(self) -> Generator[Any, Any, None]:
        """Half a registration frame and the time left travel: the rest of the frame registers the connection with the new node."""
        half = self.frame[: len(self.frame) // 2]
        self.client.sendall(half)
        yield until(lambda: txinternals.unparsed_input(self.old.proto()) == half)
        self.old.clock.advance(3)
        state, pending, moved = self.move()
        self.assertEqual((state.key, state.inbound, state.registration_left, pending), ("", half, TIMEOUT - 3, b""))
        self.old.clock.pump([1] * 20)  # the old node's registration clock no longer has it
        self.assertTrue(moved.adopt(state, pending))
        self.client.sendall(self.frame[len(half) :])
        yield until(lambda: len(self.new.core.hub) == 1)
        self.assertEqual(self.new.send(1), 1)
        self.assertEqual((yield self.read(1)), [{"data": {"n": "1", "pad": ""}}])

    @defer.inlineCallbacks
    def test_the_registration_deadline_travels(self) -> Generator[Any, Any, None]:
        """A connection that never finishes registering is cut when the time it had left runs out on the new node, not a full timeout later."""
        self.client.sendall(self.frame[:5])
        yield until(lambda: txinternals.unparsed_input(self.old.proto()) == self.frame[:5])
        self.old.clock.advance(6)
        state, pending, moved = self.move()
        self.assertTrue(moved.adopt(state, pending))
        self.new.clock.pump([0.5] * 7)  # 3.5 s of the 4 left
        self.assertFalse(moved.transport.disconnecting)
        self.new.clock.pump([0.5] * 3)
        yield until(lambda: not self.new.factory.connections)
        self.assertTrue(self.closed_by_server())

    @defer.inlineCallbacks
    def test_bytes_queued_for_a_stalled_subscriber_move_whole(self) -> Generator[Any, Any, None]:
        """Frames queued for a subscriber that stopped reading are written by the new node first, then its own: each once, in order, intact."""
        self.client.sendall(self.frame)
        yield until(lambda: len(self.old.core.hub) == 1)
        sent = 400  # 8 MB: past what the kernel buffers for a loopback connection (about 4 MB)
        for n in range(sent):
            self.assertEqual(self.old.send(n, 20_000), 1)
            if n % 20 == 0:
                yield deferLater(reactor, 0, lambda: None)  # the reactor hands what it can to the kernel
        yield deferLater(reactor, 0.05, lambda: None)
        state, pending, moved = self.move()
        self.assertGreater(len(pending), 1_000_000, "the test needs frames waiting in the process")
        self.assertNotEqual(state.key, "")
        self.assertTrue(moved.adopt(state, pending))
        self.assertEqual(len(self.new.core.hub), 1)
        for n in range(sent, sent + 3):
            self.assertEqual(self.new.send(n, 20_000), 1)
        received = yield self.read(sent + 3)
        self.assertEqual([int(m["data"]["n"]) for m in received], list(range(sent + 3)))

    @defer.inlineCallbacks
    def test_take_back_serves_as_before(self) -> Generator[Any, Any, None]:
        """A handoff that fails gives the connection back: its queued bytes first, then new messages, and its registration clock again."""
        self.client.sendall(self.frame)
        yield until(lambda: len(self.old.core.hub) == 1)
        proto = self.old.proto()
        self.old.send(0)
        exported = proto.export_state()
        assert exported is not None
        self.assertEqual(len(self.old.core.hub), 0, "off the hub while frozen")
        proto.take_back(*exported)
        self.assertEqual(self.old.send(1), 1)
        received = yield self.read(2)
        self.assertEqual([m["data"]["n"] for m in received], ["0", "1"])

    @defer.inlineCallbacks
    def test_abandon_after_the_commit_writes_nothing(self) -> Generator[Any, Any, None]:
        """A handoff that fails after the commit: the old side closes its descriptor without writing; the peer reads what the new side wrote, then end of stream once the new side is gone."""
        self.client.sendall(self.frame)
        yield until(lambda: len(self.old.core.hub) == 1)
        proto = self.old.proto()
        self.old.send(0)
        exported = proto.export_state()
        assert exported is not None
        state, pending = exported
        proto.handed_over()
        self.new.factory.adopting = True
        try:
            transport = reactor.adoptStreamConnection(proto.transport.fileno(), socket.AF_INET, self.new.factory)
        finally:
            self.new.factory.adopting = False
        moved = transport.protocol
        self.assertTrue(moved.adopt(state, pending))
        self.assertEqual(self.new.send(1), 1)
        received = yield self.read(2)
        self.assertEqual([m["data"]["n"] for m in received], ["0", "1"])
        proto.abandon()
        self.assertEqual((self.old.factory.connections, len(self.old.core.hub)), (set(), 0))
        self.assertEqual(self.old.send(2), 0)
        self.assertEqual(self.new.send(3), 1, "the new side still owns the connection")
        self.assertEqual([m["data"]["n"] for m in (yield self.read(1))], ["3"])
        txinternals.close_descriptor(moved.transport)  # the new process is killed: no shutdown() either
        self.assertTrue(self.closed_by_server())

    @defer.inlineCallbacks
    def test_a_changed_client_key_ends_the_moved_subscription(self) -> Generator[Any, Any, None]:
        """A subscription whose client key was rotated before the new node adopted it is ended there, not fed frames it cannot decrypt."""
        self.client.sendall(self.frame)
        yield until(lambda: len(self.old.core.hub) == 1)
        self.new.core.apply_snapshot(Snapshot((Application("app", "Test", "s" * 64, wire.ClientKey.generate(), 0.0),), ()))
        state, pending, moved = self.move()
        self.assertFalse(moved.adopt(state, pending))
        self.assertEqual(len(self.new.core.hub), 0)
        yield until(lambda: not self.new.factory.connections)
        self.assertTrue(self.closed_by_server())
