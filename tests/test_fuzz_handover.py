"""
Differential fuzzing (hypothesis) of the hand-over between the front
connection and twisted.web: random pipelined streams across hot routes
(sends, /auth, /tickets, /health) and cold ones (groups with bodies, presence,
subscriptions refused, unknown paths, wrong methods), ending sometimes in a
WebSocket upgrade followed by frames, cut at random points, fed to the front
connection and to twisted.web alone (``http_engine = twisted``) over twin
nodes (the same application, token and clock).  Both must give the same
answers in the same order (status, the header fields that matter, JSON
bodies), close the same way, switch to WebSocket the same way and answer the
frames after the upgrade the same way; and leave nothing behind once the
connection is gone.  (tests/test_http_differential.py covers the request
framing; this covers what lies behind it.)
"""

from __future__ import annotations

import json
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from wsproto import Connection, ConnectionType, WSConnection
from wsproto.events import CloseConnection, Pong, Request, TextMessage

from .fuzz_harness import FUZZ, Node, examples, frame
from .http_support import Response, responses

#: The header fields compared (Server, Date and the spelling of Content-Length aside).
COMPARED = (b"x-pns-sessions", b"x-pns-users", b"x-pns-stored", b"content-type", b"connection", b"retry-after", b"allow", b"upgrade")


UPGRADED = b"HTTP/1.1 101 "


def send_body(user: str, ttl: str = "") -> bytes:
    message = {"Topic": "t", **({"TTL": json.loads(ttl)} if ttl else {})}
    return json.dumps({"Recipient": {"Type": "user", "IbId": "ib1", "UserId": user}, "Message": message}).encode()


@st.composite
def hot_or_cold(draw: Any) -> tuple[bytes, bytes, bytes]:
    """(method, target, body) of one request, hot or cold."""
    kind = draw(st.sampled_from(["send", "batch", "auth", "ticket", "health", "group", "members", "presence", "cold", "subscribe"]))
    if kind == "send":
        return b"POST", draw(st.sampled_from([b"/sendmessage", b"/sendmessage?ttl=5"])), send_body(draw(st.sampled_from(["u1", "u2"])))
    if kind == "batch":
        return b"POST", b"/sendmessages", b"[" + b",".join(send_body("u1") for _ in range(draw(st.integers(0, 3)))) + b"]"
    if kind == "auth":
        return b"GET", draw(st.sampled_from([b"/auth?server_key={key}", b"/auth?server_key=wrong", b"/auth"])), b""
    if kind == "ticket":
        return b"POST", b"/tickets", draw(st.sampled_from([b'{"IbId": "ib1", "UserId": "u1"}', b'{"IbId": "ib1"}', b"NaN", b""]))
    if kind == "health":
        return b"GET", draw(st.sampled_from([b"/health", b"/ready"])), b""
    if kind == "group":
        method = draw(st.sampled_from([b"PUT", b"GET", b"DELETE"]))
        body = (
            draw(st.sampled_from([b'{"UserIds": ["u1", "u2"]}', b'{"UserIds": []}', b"[]", b'{"UserIds": [1]}']))
            if method == b"PUT"
            else b""
        )
        return method, draw(st.sampled_from([b"/groups/ib1/g1", b"/groups/ib1/%D0%B3", b"/groups/ib1/%FF"])), body
    if kind == "members":
        if draw(st.booleans()):
            return b"POST", b"/groups/ib1/g1/members", draw(st.sampled_from([b'{"UserIds": ["u3"]}', b"{}"]))
        return b"DELETE", b"/groups/ib1/g1/members/u1", b""
    if kind == "presence":
        return b"GET", draw(st.sampled_from([b"/presence/ib1", b"/presence/ib1/u1", b"/groups/ib1"])), b""
    if kind == "subscribe":  # refused (a stream that ends: an accepted SSE stream would never end)
        return (
            b"GET",
            draw(st.sampled_from([b"/subscribe/sse?ticket=x", b"/subscribe/sse?since=1", b"/subscribe/ws", b"/subscribe/x"])),
            b"",
        )
    return draw(
        st.sampled_from(
            [(b"GET", b"/nothing", b""), (b"GET", b"/sendmessage", b""), (b"DELETE", b"/sendmessages", b""), (b"POST", b"/health", b"{}")]
        )
    )


@st.composite
def stream(draw: Any) -> tuple[list[tuple[bytes, bytes, bytes]], bool, str, list[str]]:
    """(requests, authorized, the ending: "" / "ws" / "ws-refused" / "close", WebSocket frames after an upgrade)."""
    requests = draw(st.lists(hot_or_cold(), min_size=1, max_size=6))
    ending = draw(st.sampled_from(["", "", "ws", "ws-refused", "close"]))
    frames = draw(st.lists(st.sampled_from(["ping", "text", "pong", "close", "bad"]), max_size=4)) if ending == "ws" else []
    return requests, draw(st.integers(0, 4)) > 0, ending, frames


def raw_stream(node: Node, requests: list[tuple[bytes, bytes, bytes]], authorized: bool, ending: str, frames: list[str]) -> bytes:
    out = b""
    auth = b"Authorization: Bearer %s\r\n" % node.token.encode() if authorized else b""
    for method, target, body in requests:
        target = target.replace(b"{key}", node.app.server_key.encode())
        length = b"Content-Length: %d\r\n" % len(body) if body or method in (b"POST", b"PUT") else b""
        out += b"%s %s HTTP/1.1\r\nHost: x\r\n%s%s\r\n%s" % (method, target, auth, length, body)
    if ending == "close":
        out += b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    elif ending.startswith("ws"):
        client = WSConnection(ConnectionType.CLIENT)
        ticket = node.ticket(user="u9") if ending == "ws" else "refused"
        out += client.send(Request(host="x", target=f"/subscribe/ws?ticket={ticket}"))
        for kind in frames:
            out += {
                "ping": frame(0x9, b"p"),
                "pong": frame(0xA, b"q"),
                "text": frame(0x1, b'{"ack": 1}'),
                "close": frame(0x8, b"\x03\xe8"),
                "bad": frame(0x3, b"x"),
            }[kind]
    return out


def comparable(answer: Response) -> tuple[Any, ...]:
    headers = tuple((name, answer.header(name)) for name in COMPARED)
    try:
        body: Any = json.loads(answer.body) if answer.body else None
    except ValueError:
        body = answer.body
    if isinstance(body, dict) and ("access_token" in body or "ticket" in body):
        body = sorted(body)  # (a token or ticket is opaque, and a ticket's expiry follows the clock: when it was answered)
    if isinstance(body, dict):  # (a send's message id counts from each node's start time)
        body = {**body, "id": "..."} if "id" in body else body
        if isinstance(body.get("results"), list):
            body["results"] = [{**r, "id": "..."} if isinstance(r, dict) and "id" in r else r for r in body["results"]]
    return answer.status, headers, body


def after_upgrade(data: bytes) -> list[tuple[str, Any]]:
    """The WebSocket events a client reads after the 101 (their kinds and what identifies them)."""
    rest = data.partition(b"\r\n\r\n")[2]
    conn = Connection(ConnectionType.CLIENT)
    conn.receive_data(rest)
    out: list[tuple[str, Any]] = []
    for event in conn.events():
        if isinstance(event, TextMessage):
            out.append(("text", json.loads(event.data).get("event")))
        elif isinstance(event, Pong):
            out.append(("Pong", event.payload))
        # (the server's own pings follow the clock from the upgrade on: one path may upgrade later, after slower look-ups)
        elif isinstance(event, CloseConnection):
            out.append(("close", event.code))
    return out


def feed(node: Node, data: bytes, cuts: list[int]) -> tuple[bytes, bool]:
    proto, transport = node.connect()
    at = 0
    for cut in [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]:
        if transport.disconnecting:
            break
        if cut > at:
            proto.dataReceived(data[at:cut])
            at = cut
        node.clock.advance(0.6)  # (a look-up of an unknown server key waits for the next look-up slot)
    for _ in range(12):  # (twisted.web answers pipelined requests one at a time: each may wait for a slot)
        node.clock.advance(0.5)
    written, closing = transport.value(), bool(transport.disconnecting)
    proto.connectionLost(Failure(ConnectionDone()))
    node.check_clean()
    return written, closing


class HandOverDifferential(SynchronousTestCase):
    """The front connection and twisted.web alone, on twin nodes, fed the same streams."""

    @settings(FUZZ, max_examples=examples(250))
    @given(stream(), st.lists(st.integers(0, 3000), max_size=5))
    def test_same_answers(self, drawn: tuple[list[tuple[bytes, bytes, bytes]], bool, str, list[str]], cuts: list[int]) -> None:
        """Hot and cold requests pipelined, maybe an upgrade and frames after it, cut anywhere: the same answers, closing and WebSocket answers on both paths."""
        front = Node()
        reference = front.twin("twisted")
        data = raw_stream(front, *drawn)  # (the twin takes the same ticket and token)
        ours, ours_closing = feed(front, data, cuts)
        theirs, theirs_closing = feed(reference, data, cuts)
        # (answers up to an upgrade's 101; what follows it is WebSocket, read below)
        ours_answers, theirs_answers = responses(ours.split(UPGRADED, 1)[0]), responses(theirs.split(UPGRADED, 1)[0])
        self.assertEqual([comparable(a) for a in ours_answers], [comparable(a) for a in theirs_answers], data[:2000])
        self.assertEqual(ours_closing, theirs_closing)
        self.assertEqual(UPGRADED in ours, UPGRADED in theirs)
        if UPGRADED in ours:  # (what follows the upgrade, read as a WebSocket client reads it)
            self.assertEqual(after_upgrade(ours.split(UPGRADED, 1)[1]), after_upgrade(theirs.split(UPGRADED, 1)[1]))
        front.stop()
        reference.stop()


class GoneClient(SynchronousTestCase):
    """A client that goes away while its request waits (found by the fuzzing above, cutting streams mid-request)."""

    def test_client_gone_during_a_look_up_is_no_unexpected_error(self) -> None:
        """A client gone while /auth waits for the server-key look-up: no "unexpected error" logged, the look-up and the next request go on."""
        for engine in ("front", "twisted"):
            with self.subTest(engine=engine):
                self.gone_during_look_up(Node(engine))

    def gone_during_look_up(self, node: Node) -> None:
        failures: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_failure") is not None:
                failures.append(event)

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        proto, transport = node.connect()
        proto.dataReceived(b"GET /auth?server_key=unknown HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(transport.value(), b"", "the look-up waits for its slot")
        proto.connectionLost(Failure(ConnectionDone()))
        node.clock.advance(5)
        self.assertEqual([e.get("log_format") for e in failures], [])
        other, other_transport = node.connect()
        other.dataReceived(b"GET /auth?server_key=%s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % node.app.server_key.encode())
        node.clock.advance(5)
        [answer] = responses(other_transport.value())
        self.assertEqual(answer.status, 200)
        other.connectionLost(Failure(ConnectionDone()))
        node.check_clean()
        node.stop()
