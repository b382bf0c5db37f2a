"""
Fuzzing (hypothesis) of the WebSocket subscriptions' frame handling, in
process through the real path: the front connection, the hand-over to
twisted.web, twisted.web's WebSocket resource and wire protocol, and our
session (``transports/web.py``).  Random streams of well-formed and hostile
frames (fragmented messages with control frames between the fragments,
oversized messages, unmasked frames, bad opcodes, reserved bits, lying
lengths, fragmented or oversized control frames, invalid UTF-8, close codes
of every kind, ping floods, garbage), cut at random points, with the clock
moving and messages sent to the subscriber meanwhile.

Invariants: nothing raises (not the frames, not a send to the user, not the
timers); what the server writes is a readable WebSocket stream; pongs within
the ping rate; a message over the inbound limit closes with 1009; a protocol
error closes the connection; a subscriber that did nothing wrong receives the
messages sent to it; once the connection is gone nothing of it is left in the
hub, and a new subscriber is served as usual.

Also one test on the real server for the defect the fuzzing found: a peer's
close frame left its session in the hub until the connection was gone, and a
send to its user failed with a 500 meanwhile.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any

import httpx
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase
from wsproto import Connection, ConnectionType
from wsproto.events import CloseConnection

from pns4ones.transports.web import CLOSE_TIMEOUT, MAX_INBOUND, PING_BURST, PING_RATE

from .fuzz_harness import FUZZ, Node, WebSocketPeer, examples, frame
from .support import ServerProcess, wait_for

TEXT, BINARY, CLOSE, PING, PONG, CONTINUATION = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0


@dataclass(frozen=True)
class Action:
    """One step of a peer: bytes to send (``bad``: a protocol error), or time passing, or a message sent to the peer's user."""

    kind: str  # "bytes", "wait", "send"
    data: bytes = b""
    bad: bool = False
    big: bool = False  # a message over MAX_INBOUND
    closes: bool = False  # a well-formed close frame
    pings: int = 0
    seconds: float = 0.0
    garbage: bool = False  # anything: the stream's frames may be out of step from here on


texts = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


@st.composite
def message(draw: Any) -> Action:
    """A text or binary message, whole or in fragments with control frames between them, maybe over the inbound limit."""
    binary = draw(st.booleans())
    big = draw(st.integers(0, 9)) == 0
    payload = b"x" * draw(st.integers(MAX_INBOUND + 1, MAX_INBOUND * 3)) if big else draw(texts).encode()
    if binary and not big:
        payload = draw(st.binary(max_size=60))
    cuts = sorted(set(draw(st.lists(st.integers(0, len(payload)), max_size=4))))
    parts = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)])]
    out = b""
    pings = 0
    for i, part in enumerate(parts):
        out += frame(CONTINUATION if i else BINARY if binary else TEXT, part, fin=i == len(parts) - 1)
        if i < len(parts) - 1 and draw(st.booleans()):  # a control frame between fragments is allowed
            control = draw(st.sampled_from([PING, PONG]))
            pings += control == PING
            out += frame(control, draw(st.binary(max_size=20)))
    return Action("bytes", out, big=big, pings=pings)


#: Frames a server must refuse (wsproto: close 1002 or 1007).
HOSTILE = {
    "unmasked": frame(TEXT, b"hi", mask=None),
    "bad opcode 3": frame(0x3, b"x"),
    "bad opcode 0xB": frame(0xB, b""),
    "reserved bit": frame(TEXT, b"x", rsv=4),
    "fragmented ping": frame(PING, b"x", fin=False),
    "ping over 125": frame(PING, b"p" * 126),
    "close over 125": frame(CLOSE, b"\x03\xe8" + b"r" * 130),
    "continuation first": frame(CONTINUATION, b"x"),
    "text inside text": frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"),
    "invalid UTF-8": frame(TEXT, b"\xff\xfe"),
    "cut UTF-8": frame(TEXT, "ж".encode()[:1]),
    "close 1005": frame(CLOSE, b"\x03\xed"),
    "close 999": frame(CLOSE, b"\x03\xe7"),
    "close 5000": frame(CLOSE, b"\x13\x88"),
    "close one byte": frame(CLOSE, b"\x03"),
    "close reason not UTF-8": frame(CLOSE, b"\x03\xe8\xff"),
    "64-bit length top bit": frame(BINARY, b"x", length=1 << 63),
}


@st.composite
def action(draw: Any) -> Action:
    kind = draw(st.sampled_from(["message", "message", "ping", "pong", "hostile", "close", "flood", "garbage", "wait", "send"]))
    if kind == "message":
        return draw(message())
    if kind in ("ping", "pong"):
        return Action("bytes", frame(PING if kind == "ping" else PONG, draw(st.binary(max_size=125))), pings=kind == "ping")
    if kind == "hostile":
        return Action("bytes", HOSTILE[draw(st.sampled_from(sorted(HOSTILE)))], bad=True)
    if kind == "close":
        code = draw(st.sampled_from([1000, 1001, 1008, 1011, 3000, 4999]))
        return Action("bytes", frame(CLOSE, code.to_bytes(2, "big") + draw(texts).encode()[:100]), closes=True)
    if kind == "flood":
        count = draw(st.integers(1, 60))
        return Action("bytes", frame(PING, b"f") * count, pings=count)
    if kind == "garbage":  # (not necessarily an error at once: it may be the start of a frame)
        return Action("bytes", draw(st.binary(min_size=1, max_size=40)), garbage=True)
    if kind == "wait":
        return Action("wait", seconds=draw(st.sampled_from([0.1, 1.0, 4.0, 6.0, 11.0])))
    return Action("send")


def run(node: Node, actions: list[Action], cuts: list[int]) -> tuple[WebSocketPeer, dict[str, Any]]:
    """The peer does ``actions`` (bytes cut at ``cuts``); what happened, for the invariants."""
    peer = WebSocketPeer(node).open()
    assert peer.accepted
    seen: dict[str, Any] = {"garbage": False, "bad": False, "big": False, "closed": False, "pings": 0, "sent": [], "elapsed": 0.0}
    for step in actions:
        if step.kind == "wait":
            node.clock.advance(step.seconds)
            seen["elapsed"] += step.seconds
        elif step.kind == "send":
            topic = f"m{len(seen['sent'])}"
            if node.send("u1", topic):
                seen["sent"].append(topic)
        else:
            if peer.transport.disconnecting or seen["garbage"]:
                continue  # (after garbage, what follows is not the frame it was meant to be)
            seen["garbage"] |= step.garbage
            seen["bad"] |= step.bad
            seen["big"] |= step.big
            seen["closed"] |= step.closes
            seen["pings"] += step.pings
            at = 0
            for cut in [*sorted({c % (len(step.data) + 1) for c in cuts}), len(step.data)]:
                if cut > at:
                    peer.feed(step.data[at:cut])
                    at = cut
        peer.read()
    return peer, seen


class WebSocketFrameFuzz(SynchronousTestCase):
    """The WebSocket session in process, fed random and hostile frame streams."""

    @settings(FUZZ, max_examples=examples(250))
    @given(st.lists(action(), min_size=1, max_size=8), st.lists(st.integers(0, 20_000), max_size=3))
    def test_frames(self, actions: list[Action], cuts: list[int]) -> None:
        """Any frames, cut anywhere, with time passing and sends meanwhile: nothing raises, protocol errors close, a good peer gets its messages, nothing is left behind."""
        node = Node()
        peer, seen = run(node, actions, cuts)
        # Pongs within the rate (a flood past the burst is closed with 1008, not answered).
        self.assertLessEqual(peer.pongs(), PING_BURST + PING_RATE * seen["elapsed"] + 1)
        self.assertLessEqual(peer.pongs(), seen["pings"])
        if seen["big"] and not peer.transport.disconnecting:
            self.fail("a message over the inbound limit did not close the connection")
        if seen["big"] and 1009 not in peer.close_codes():
            self.assertTrue(peer.close_codes() or peer.transport.disconnected, "closed, but not with 1009 nor aborted")
        # A protocol error closes the connection, at once or (a peer that does not finish the handshake) after CLOSE_TIMEOUT.
        node.clock.advance(CLOSE_TIMEOUT + 0.1)
        peer.read()
        if seen["bad"] or seen["closed"]:
            self.assertTrue(peer.transport.disconnecting, "a protocol error or a close frame left the connection open")
            self.assertEqual(node.send("u1", "after the close"), 0)
        if not peer.transport.disconnecting:  # nothing wrong was done: every message sent arrived, and the next one does
            self.assertEqual(node.send("u1", "last"), 1)
            peer.read()
            texts = "".join(peer.texts())
            for topic in [*seen["sent"], "last"]:
                self.assertIn(f'"topic": "{topic}"', texts)
        else:  # a closed connection gets nothing (and sending to it raises nothing)
            node.send("u1", "to a closed connection")
        peer.lose()
        node.check_clean()
        fresh = WebSocketPeer(node, user="u2").open()
        self.assertEqual(node.send("u2", "fresh"), 1)
        fresh.read()
        self.assertIn('"topic": "fresh"', "".join(fresh.texts()))
        node.stop()

    @settings(FUZZ, max_examples=examples(150))
    @given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=4))
    def test_any_bytes_after_the_handshake(self, data: bytes, cuts: list[int]) -> None:
        """Any bytes after the handshake, cut anywhere: nothing raises, the server writes only WebSocket frames, and sends to the user never fail."""
        node = Node()
        peer = WebSocketPeer(node).open()
        at = 0
        for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
            if cut > at:
                peer.feed(data[at:cut])
                at = cut
                node.send("u1", "meanwhile")
                peer.read()
        node.clock.advance(CLOSE_TIMEOUT + 0.1)
        peer.read()
        peer.lose()
        node.check_clean()
        node.stop()


class WebSocketDefectTests(SynchronousTestCase):
    """The defects the fuzzing above found: the peer's close frame, and the channel of a WebSocket connection once it is gone."""

    def test_closed_connection_leaves_no_channel(self) -> None:
        """A WebSocket connection, once gone, leaves nothing in the site (its channel and request stayed: memory, and every graceful stop waited 5 s)."""
        for engine in ("front", "twisted"):
            node = Node(engine=engine)
            peers = [WebSocketPeer(node, user=f"u{i}").open() for i in range(3)]
            self.assertTrue(node.site.in_progress(), engine)
            for peer in peers:
                peer.lose()
            self.assertEqual(node.site.channels, set(), engine)
            self.assertFalse(node.site.in_progress(), engine)
            node.stop()

    def test_send_after_the_peers_close_in_process(self) -> None:
        """After the peer's close frame, before the connection is gone: a send to its user reaches nobody and raises nothing; the session left the hub."""
        node = Node()
        peer = WebSocketPeer(node).open()
        other = WebSocketPeer(node, user="u1").open()
        peer.feed(peer.send(CloseConnection(1000)))
        self.assertEqual(node.send("u1", "after the close"), 1)  # (the other subscriber of the same user only)
        peer.read()
        self.assertEqual(peer.close_codes(), [1000])
        self.assertTrue(peer.transport.disconnecting)
        other.read()
        self.assertIn('"topic": "after the close"', "".join(other.texts()))
        self.assertEqual(len(node.subscriptions.sessions), 1)
        node.clock.advance(CLOSE_TIMEOUT + 0.1)
        self.assertTrue(peer.transport.disconnected, "a peer that did not read the close answer was not aborted")

    def test_send_after_the_peers_close_real_server(self) -> None:
        """A peer that sends a close frame and never reads (its socket full): sends to its user and to everyone answer 200 (they answered 500)."""
        server = ServerProcess(args=["--send_buffer_limit", "64M", "--max_body_size", "8M"])
        self.addCleanup(server.cleanup)
        app = server.create_app("Close")
        server.start()
        http = httpx.Client(timeout=10)
        self.addCleanup(http.close)
        token = http.get(f"{server.url}/auth", params={"server_key": app["server_key"]}).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        ticket = http.post(f"{server.url}/tickets", json={"IbId": "ib", "UserId": "u1"}, headers=auth).json()["ticket"]
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.addCleanup(sock.close)
        sock.connect(("127.0.0.1", server.api_port))
        sock.sendall(
            f"GET /subscribe/ws?ticket={ticket} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

        def send(kind: str, size: int = 0) -> httpx.Response:
            recipient = {"Type": kind, "IbId": "ib", "UserId": "u1"}
            return http.post(
                f"{server.url}/sendmessage", json={"Recipient": recipient, "Message": {"Data": {"x": "y" * size}}}, headers=auth
            )

        wait_for(lambda: send("user").json()["sessions"] == 1, what="the subscription")
        send("user", 6_000_000)  # (more than the socket buffers take: the rest waits in the server, and so will the close's answer)
        sock.sendall(Connection(ConnectionType.CLIENT).send(CloseConnection(1000)))
        time.sleep(0.3)
        for kind in ("user", "all", "user"):
            response = send(kind)
            self.assertEqual(response.status_code, 200, response.text)
            self.assertEqual(response.json()["sessions"], 0)
        log = server.log()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled Error", log)
