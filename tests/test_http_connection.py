"""
The front connection (pns4ones.http.connection) in process, byte by byte: its
state table, every request split at every position, each bound at the byte it
arrives (with the memory it took given back), trailers, versions, timeouts,
pipelining across hot and cold routes, Deferred answers, upgrades and flow
control.  The real-process tests are in test_send_path.py.
"""

from __future__ import annotations

import json
import re
import tracemalloc
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import RESPONSES

from pns4ones import proxies
from pns4ones.http import connection as fc
from pns4ones.http.calls import Answer, Call
from pns4ones.http.connection import FrontConnection, StateError, encode_answer
from pns4ones.http.handlers import sent_answer
from pns4ones.hub import Delivery

from .http_support import OTHER_TOKEN, TOKEN, Setup, front_connection, responses


def send(token: str = TOKEN, user: str = "u1", topic: str = "t", extra: str = "", version: str = "1.1") -> bytes:
    body = json.dumps({"Recipient": {"Type": "user", "IbId": "ib1", "UserId": user}, "Message": {"Topic": topic}}).encode()
    return (
        f"POST /sendmessage HTTP/{version}\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


def chunked(token: str = TOKEN, topic: str = "c", trailer: bytes = b"", extension: bytes = b"") -> bytes:
    body = json.dumps({"Recipient": {"Type": "user", "IbId": "ib1", "UserId": "u1"}, "Message": {"Topic": topic}}).encode()
    head = f"POST /sendmessage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    return head + b"%x%s\r\n%s\r\n%x\r\n%s\r\n0\r\n%s\r\n" % (10, extension, body[:10], len(body) - 10, body[10:], trailer)


def get(path: str, extra: str = "", version: str = "1.1") -> bytes:
    return f"GET {path} HTTP/{version}\r\nHost: x\r\n{extra}\r\n".encode()


def without_dates(data: bytes) -> bytes:
    """Answers without their Date lines, and with every message id (``"id"``, ``X-Pns-Id``) as N: each set-up's hub numbers from its start time."""
    data = b"\r\n".join(line for line in data.split(b"\r\n") if not line.startswith(b"Date: "))
    return re.sub(rb'("id": |X-Pns-Id: )[0-9]{16}', rb"\1NNNNNNNNNNNNNNNN", data)


class StateTableTests(SynchronousTestCase):
    def test_every_state_has_its_transitions_and_closed_ends(self) -> None:
        """Every state is in the table, every target is a state, and CLOSED has no way out."""
        states = set(fc.TRANSITIONS)
        self.assertEqual(states, {fc.IDLE, fc.HEAD, fc.BODY, fc.UPGRADING, fc.SWITCHED, fc.CLOSING, fc.CLOSED})
        for targets in fc.TRANSITIONS.values():
            self.assertLessEqual(targets, states)
        self.assertEqual(fc.TRANSITIONS[fc.CLOSED], frozenset())
        self.assertTrue(all(fc.CLOSED in fc.TRANSITIONS[s] for s in states - {fc.CLOSED}))

    def test_a_transition_not_in_the_table_is_refused(self) -> None:
        """_to() refuses IDLE -> BODY and CLOSED -> anything: a bug surfaces as StateError, never as a silent state."""
        setup = Setup()
        proto, _ = setup.connect()
        conn = front_connection(proto)
        self.assertRaises(StateError, conn._to, fc.BODY)
        conn.connectionLost()
        self.assertEqual(conn.state, fc.CLOSED)
        self.assertRaises(StateError, conn._to, fc.IDLE)

    def test_states_along_one_request(self) -> None:
        """IDLE, HEAD while the head arrives, BODY while the body does, IDLE again once answered."""
        setup = Setup()
        proto, transport = setup.connect()
        conn = front_connection(proto)
        request = send()
        head_end = request.index(b"\r\n\r\n") + 4
        seen = [conn.state]
        for part in (request[:5], request[5 : head_end - 1], request[head_end - 1 : head_end + 3], request[head_end + 3 :]):
            conn.dataReceived(part)
            seen.append(conn.state)
        self.assertEqual(seen, [fc.IDLE, fc.HEAD, fc.HEAD, fc.BODY, fc.IDLE])
        self.assertEqual([r.status for r in responses(transport.value())], [200])


class SplitTests(SynchronousTestCase):
    """The same bytes, however they are cut, give the same answers and deliveries."""

    def check_every_split(self, stream: bytes, statuses: list[int], delivered: int) -> None:
        whole = Setup()
        out, _, _ = whole.run([stream])
        self.assertEqual([r.status for r in responses(out)], statuses, out)
        self.assertEqual(len(whole.recorder.plaintexts()), delivered)
        for cut in range(1, len(stream)):
            setup = Setup()
            split, _, _ = setup.run([stream[:cut], stream[cut:]])
            self.assertEqual(without_dates(split), without_dates(out), f"split at {cut}: {stream[:cut]!r} | {stream[cut:]!r}")
            self.assertEqual(setup.recorder.plaintexts(), whole.recorder.plaintexts(), f"split at {cut}")

    def test_send_with_content_length(self) -> None:
        """POST /sendmessage with Content-Length split at every byte: one 200, one delivery."""
        self.check_every_split(send(), [200], 1)

    def test_chunked_send_with_extension_and_trailer(self) -> None:
        """A chunked send with a chunk extension and a trailer field split at every byte: one 200, one delivery."""
        self.check_every_split(chunked(extension=b";a=b", trailer=b"X-Trailer: 1\r\n"), [200], 1)

    def test_expect_continue(self) -> None:
        """Expect: 100-continue split at every byte: 100 Continue, then 200."""
        self.check_every_split(send(extra="Expect: 100-continue\r\n"), [100, 200], 1)

    def test_pipelined_hot_and_cold(self) -> None:
        """A send, GET /presence (twisted.web), GET /auth and a 404 pipelined, split at every byte: the same four answers in order."""
        stream = send() + get("/presence/ib1/u1", f"Authorization: Bearer {TOKEN}\r\n") + get("/auth?server_key=" + "s" * 64) + get("/nope")
        self.check_every_split(stream, [200, 200, 200, 404], 1)

    def test_byte_by_byte(self) -> None:
        """Pipelined requests fed one byte at a time: the same answers as fed at once."""
        stream = send(topic="a") + chunked(topic="b") + get("/health") + send(topic="c", extra="Connection: close\r\n")
        whole, _, _ = Setup().run([stream])
        setup = Setup()
        out, closing, _ = setup.run([stream[i : i + 1] for i in range(len(stream))])
        self.assertEqual(without_dates(out), without_dates(whole))
        self.assertEqual([r.status for r in responses(out)], [200, 200, 200, 200])
        self.assertEqual(setup.recorder.plaintexts(), [b'{"topic": "a"}', b'{"topic": "b"}', b'{"topic": "c"}'])
        self.assertTrue(closing)


class BoundTests(SynchronousTestCase):
    """Each part of a request is bounded at the byte it arrives; past a bound the answer, a close, and the memory back."""

    def flood(
        self, prefix: bytes, total: int = 4 * 1024 * 1024, chunk: bytes = b"a" * 65536
    ) -> tuple[list[Any], bool, int, FrontConnection]:
        """Feed ``prefix`` then ``chunk`` up to ``total`` bytes: (responses, closing, peak bytes allocated meanwhile, the connection)."""
        setup = Setup()
        proto, transport = setup.connect()
        conn = front_connection(proto)
        tracemalloc.start()
        try:
            conn.dataReceived(prefix)
            fed = 0
            while fed < total:
                conn.dataReceived(chunk)
                fed += len(chunk)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        return responses(transport.value()), bool(transport.disconnecting), peak, conn

    def assert_refused(self, prefix: bytes, status: int, error: str) -> None:
        answers, closing, peak, conn = self.flood(prefix)
        self.assertEqual([(r.status, json.loads(r.body)["error"]) for r in answers], [(status, error)])
        self.assertTrue(closing)
        self.assertEqual(conn.state, fc.CLOSING)
        self.assertLess(peak, 1024 * 1024, "the flooded bytes were kept")
        self.assertTrue(conn.transport.disconnected, "a client refused for its head went on sending, and was not reset")  # type: ignore[union-attr]

    def test_refused_head_resets_after_its_discard_bound(self) -> None:
        """After a 431 the client may send LINGER_DISCARD more bytes (discarded), then the connection is reset; not before."""
        setup = Setup()
        proto, transport = setup.connect()
        proto.dataReceived(b"GET /health HTTP/1.1\r\nX: " + b"v" * (fc.MAX_LINE + 1))
        self.assertEqual([r.status for r in responses(transport.value())], [431])
        proto.dataReceived(b"a" * fc.LINGER_DISCARD)
        self.assertFalse(transport.disconnected)
        proto.dataReceived(b"a")
        self.assertTrue(transport.disconnected)

    def test_refused_body_is_not_reset(self) -> None:
        """After a 413 the sender, maybe uploading in good faith, is not reset however much it sends: only the linger's time ends it."""
        setup = Setup()
        proto, transport = setup.connect()
        proto.dataReceived(b"POST /sendmessage HTTP/1.1\r\nContent-Length: 100000000\r\n\r\n")
        self.assertEqual([r.status for r in responses(transport.value())], [413])
        for _ in range(64):
            proto.dataReceived(b"x" * 65536)
        self.assertFalse(transport.disconnected)

    def test_never_ending_header_value(self) -> None:
        """A header value without CRLF: 431 within 64 KiB, closed, the rest discarded (under 1 MiB allocated for 4 MiB sent)."""
        self.assert_refused(b"POST /sendmessage HTTP/1.1\r\nHost: x\r\nX-Long: ", 431, "headers_too_large")

    def test_never_ending_header_name(self) -> None:
        """A header name without a colon: 431, closed, discarded."""
        self.assert_refused(b"POST /sendmessage HTTP/1.1\r\nHost: x\r\nX-", 431, "headers_too_large")

    def test_never_ending_trailer(self) -> None:
        """A chunked request's trailer field that never ends: 400, closed, discarded."""
        self.assert_refused(b"POST /sendmessage HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-T: ", 400, "bad_request")

    def test_never_ending_chunk_extension(self) -> None:
        """A chunk extension that never ends: 400, closed, discarded."""
        self.assert_refused(b"POST /sendmessage HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2;ext=", 400, "bad_request")

    def test_never_ending_target(self) -> None:
        """A request target that never ends: 414, closed, discarded."""
        self.assert_refused(b"GET /", 414, "uri_too_long")

    def test_field_bounds_at_the_byte(self) -> None:
        """A header field over 8 KiB is refused once 8 KiB of it arrived, before the head is complete; one of exactly 8 KiB passes."""
        setup = Setup()
        proto, transport = setup.connect()
        conn = front_connection(proto)
        conn.dataReceived(b"GET /health HTTP/1.1\r\nX-Big: ")
        conn.dataReceived(b"a" * (fc.MAX_LINE - 7))
        self.assertEqual(transport.value(), b"")
        conn.dataReceived(b"a" * 2)
        self.assertEqual([r.status for r in responses(transport.value())], [431])
        name = b"X-Ok: "
        out, _, _ = Setup().run([b"GET /health HTTP/1.1\r\n" + name + b"a" * (fc.MAX_LINE - len(name) + 2) + b"\r\n\r\n"])
        self.assertEqual([r.status for r in responses(out)], [200])

    def test_head_bound_counts_every_field(self) -> None:
        """Many small header fields over 64 KiB together: 431; under it (and under 100 fields) they pass."""
        many = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(70))
        out, closing, _ = Setup().run([b"GET /health HTTP/1.1\r\n" + many + b"\r\n"])
        self.assertEqual([r.status for r in responses(out)], [431])
        self.assertTrue(closing)
        few = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 600) for i in range(99))
        out, _, _ = Setup().run([b"GET /health HTTP/1.1\r\n" + few + b"\r\n"])
        self.assertEqual([r.status for r in responses(out)], [200])

    def test_too_many_fields(self) -> None:
        """The 101st header field: 431."""
        out, _, _ = Setup().run([b"GET /health HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n"])
        self.assertEqual([(r.status, json.loads(r.body)["reason"]) for r in responses(out)], [(431, "more than 100 header fields")])

    def test_target_bound(self) -> None:
        """A target over 8 KiB: 414 (even complete, in one read)."""
        out, _, _ = Setup().run([get("/" + "a" * fc.MAX_LINE)])
        self.assertEqual([r.status for r in responses(out)], [414])

    def test_body_bounds(self) -> None:
        """A declared body over max_body_size: 413 before the body; a chunked one at the byte that crosses it."""
        out, closing, _ = Setup().run([b"POST /sendmessage HTTP/1.1\r\nContent-Length: 8193\r\n\r\n"])
        self.assertEqual([r.status for r in responses(out)], [413])
        self.assertTrue(closing)
        setup = Setup()
        proto, transport = setup.connect()
        proto.dataReceived(b"POST /sendmessage HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2000\r\n" + b"x" * 8192 + b"\r\n")
        self.assertEqual(transport.value(), b"")
        proto.dataReceived(b"1\r\nx")
        self.assertEqual([r.status for r in responses(transport.value())], [413])

    def test_pipelined_head_is_charged_from_its_start(self) -> None:
        """A head behind a request in one read is bounded too: a 60 KiB head passes, a never-ending one is refused."""
        big = b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 6000) for i in range(10)) + b"\r\n"
        out, _, _ = Setup().run([send() + big[:20000], big[20000:]])
        self.assertEqual([r.status for r in responses(out)], [200, 200])
        answers, _, peak, _ = self.flood(send() + b"GET /health HTTP/1.1\r\nX: ")
        self.assertEqual([r.status for r in answers], [200, 431])
        self.assertLess(peak, 1024 * 1024)


class SemanticsTests(SynchronousTestCase):
    def test_trailer_fields_are_dropped(self) -> None:
        """A trailer's Authorization never replaces the header's: bad header + good trailer is 401, good + bad is 200."""
        setup = Setup()
        out, _, _ = setup.run([chunked(token="bad", trailer=f"Authorization: Bearer {TOKEN}\r\n".encode())])
        self.assertEqual([r.status for r in responses(out)], [401])
        self.assertEqual(setup.recorder.plaintexts(), [])
        out, _, _ = setup.run([chunked(trailer=b"Authorization: Bearer bad\r\n")])
        self.assertEqual([r.status for r in responses(out)], [200])
        self.assertEqual(len(setup.recorder.plaintexts()), 1)

    def test_trailer_never_names_the_sender(self) -> None:
        """From a trusted proxy, X-Forwarded-For in a header names the sender; in a trailer it is ignored."""
        setup = Setup(trusted=(proxies.ipaddress.ip_network("127.0.0.2/32"),))
        seen: list[str] = []
        route = setup.front.routes[(b"POST", b"/sendmessage")]

        def spy(call: Call) -> Any:
            seen.append(call.peer)
            return route(call)

        setup.front.routes[(b"POST", b"/sendmessage")] = spy
        setup.run([chunked(trailer=b"X-Forwarded-For: 203.0.113.7\r\n")], host="127.0.0.2")
        setup.run([send(extra="X-Forwarded-For: 198.51.100.1\r\n")], host="127.0.0.2")
        setup.run([send(extra="X-Forwarded-For: 198.51.100.1\r\n")], host="127.0.0.3")
        self.assertEqual(seen, ["127.0.0.2", "198.51.100.1", "127.0.0.3"])

    def test_versions(self) -> None:
        """HTTP/2.0 and HTTP/0.9 over HTTP/1: 505 and close, nothing delivered; HTTP/1.2: 400; HTTP/1.0: answered in 1.0, then closed."""
        for version, status in (("2.0", 505), ("0.9", 505), ("1.2", 400)):
            setup = Setup()
            out, closing, _ = setup.run([send(version=version)])
            self.assertEqual([r.status for r in responses(out)], [status], version)
            self.assertTrue(closing)
            self.assertEqual(setup.recorder.plaintexts(), [])
        out, closing, _ = Setup().run([send(version="1.0") + send()])
        self.assertTrue(out.startswith(b"HTTP/1.0 200 OK\r\n"))
        self.assertEqual(len(responses(out)), 1)
        self.assertTrue(closing)

    def test_versions_with_keep_alive_fields(self) -> None:
        """HTTP/2.0 with Connection or Proxy-Connection: keep-alive is 505; HTTP/1.0 with either is answered in 1.0, then closed."""
        for field in ("Connection", "Proxy-Connection"):
            setup = Setup()
            out, closing, _ = setup.run([send(version="2.0", extra=f"{field}: keep-alive\r\n")])
            self.assertEqual([r.status for r in responses(out)], [505], field)
            self.assertTrue(closing)
            self.assertEqual(setup.recorder.plaintexts(), [])
            out, closing, _ = Setup().run([send(version="1.0", extra=f"{field}: keep-alive\r\n") + send()])
            self.assertTrue(out.startswith(b"HTTP/1.0 200 OK\r\n"), field)
            self.assertEqual(len(responses(out)), 1)
            self.assertTrue(closing)

    def test_header_names_in_any_case(self) -> None:
        """The fields the connection reads, in any spelling (lower, Title, UPPER, mixed): the token, the length and Connection: close are read the same."""
        for auth, length, connection in (
            ("authorization", "content-length", "connection"),
            ("AUTHORIZATION", "CONTENT-LENGTH", "CONNECTION"),
            ("AuThOrIzAtIoN", "cOnTeNt-LeNgTh", "cOnNeCtIoN"),
        ):
            stream = send(extra=f"{connection}: close\r\n").replace(b"Authorization:", auth.encode() + b":")
            stream = stream.replace(b"Content-Length:", length.encode() + b":") + send(topic="after")
            setup = Setup()
            out, closing, _ = setup.run([stream])
            self.assertEqual([(r.status, r.header(b"connection")) for r in responses(out)], [(200, b"close")], auth)
            self.assertTrue(closing, auth)
            self.assertEqual(setup.recorder.plaintexts(), [b'{"topic": "t"}'], auth)

    def test_malformed_framing(self) -> None:
        """Bare LF, obs-fold, duplicate Content-Length, Content-Length with chunked, an unknown coding: refused and closed."""
        cases = {
            b"GET /health HTTP/1.1\nHost: x\n\n": 400,
            b"GET /health HTTP/1.1\r\nX: a\r\n b\r\n\r\n": 400,
            b"POST /sendmessage HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}": 400,
            b"POST /sendmessage HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n": 400,
            b"POST /sendmessage HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n": 501,
            b"\x16\x03\x01\x02\x00\x01\x00": 400,
        }
        for stream, status in cases.items():
            setup = Setup()
            out, closing, _ = setup.run([stream])
            self.assertEqual([r.status for r in responses(out)], [status], stream)
            self.assertTrue(closing, stream)

    def test_connection_close_ends_reading(self) -> None:
        """Connection: close: the answer says so, the connection closes, and a request sent after it is not answered."""
        setup = Setup()
        out, closing, _ = setup.run([send(extra="Connection: close\r\n") + send(topic="after")])
        answers = responses(out)
        self.assertEqual([(r.status, r.header(b"connection")) for r in answers], [(200, b"close")])
        self.assertTrue(closing)
        self.assertEqual(setup.recorder.plaintexts(), [b'{"topic": "t"}'])

    def test_restart_closing_says_connection_close(self) -> None:
        """While a restart is under way (site.closing), an answer says Connection: close and the connection closes after it."""
        setup = Setup()
        setup.site.closing = True
        out, closing, _ = setup.run([send(version="1.0"), send()])
        self.assertEqual([r.header(b"connection") for r in responses(out)], [b"close"])
        self.assertTrue(closing)


class TimingTests(SynchronousTestCase):
    def test_request_timeout_from_the_first_byte_on_a_cold_route(self) -> None:
        """A PUT /groups (twisted.web's) dribbled over 20 s of a 30 s request_timeout gets 408 at 30 s after its first byte."""
        setup = Setup()
        proto, transport = setup.connect()
        head = f"PUT /groups/ib1/g HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 20\r\n\r\n".encode()
        for i in range(len(head)):
            proto.dataReceived(head[i : i + 1])
            setup.clock.advance(20.0 / len(head))
        proto.dataReceived(b'{"UserIds"')
        setup.clock.advance(9.0)
        self.assertEqual(transport.value(), b"")
        setup.clock.advance(1.5)
        self.assertEqual([r.status for r in responses(transport.value())], [408])
        self.assertTrue(transport.disconnecting)

    def test_silent_connection_and_idle_keep_alive(self) -> None:
        """A connection that sends nothing gets 408; one idle between requests is closed quietly after site.timeOut."""
        setup = Setup(request_timeout=10)
        proto, transport = setup.connect()
        setup.clock.advance(11)
        self.assertEqual([r.status for r in responses(transport.value())], [408])
        proto, transport = setup.connect()
        proto.dataReceived(send())
        setup.clock.advance(setup.site.timeOut - 2)
        self.assertFalse(transport.disconnecting)
        setup.clock.advance(5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual([r.status for r in responses(transport.value())], [200])

    def test_idle_is_counted_from_the_last_request(self) -> None:
        """With the sweep running each second: a kept-alive connection stays open while requests come within site.timeOut, and closes about site.timeOut after the last."""
        setup = Setup(request_timeout=10)
        proto, transport = setup.connect()
        idle = int(setup.site.timeOut)
        for _ in range(3):
            proto.dataReceived(send())
            for _ in range(idle - 2):
                setup.clock.advance(1)
            self.assertFalse(transport.disconnecting)
        for _ in range(5):
            setup.clock.advance(1)
        self.assertTrue(transport.disconnecting)
        self.assertEqual([r.status for r in responses(transport.value())], [200, 200, 200])


class AnswerOrderTests(SynchronousTestCase):
    def test_late_answer_holds_back_those_behind_it(self) -> None:
        """A send whose token the store is still looking up holds back the hot and cold answers pipelined behind it."""
        setup = Setup()
        setup.store.gate = Deferred()
        proto, transport = setup.connect()
        proto.dataReceived(send(token=OTHER_TOKEN, topic="late") + send(topic="second") + get("/health") + send(topic="third"))
        self.assertEqual(transport.value(), b"")
        self.assertEqual(len(front_connection(proto).requests), 4)
        self.assertEqual(setup.recorder.plaintexts(), [b'{"topic": "second"}', b'{"topic": "third"}'])
        setup.store.gate.callback(None)
        self.assertEqual([r.status for r in responses(transport.value())], [200, 200, 200, 200])
        self.assertEqual(setup.recorder.plaintexts()[-1], b'{"topic": "late"}')
        self.assertEqual(front_connection(proto).requests, [])

    def test_many_pending_answers_pause_reading(self) -> None:
        """64 answers awaited: the connection stops reading; once they are answered it reads again."""
        setup = Setup()
        setup.store.gate = Deferred()
        proto, transport = setup.connect()
        proto.dataReceived(send(token=OTHER_TOKEN) * fc.MAX_PENDING)
        self.assertEqual(transport.producerState, "paused")
        setup.store.gate.callback(None)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(len(responses(transport.value())), fc.MAX_PENDING)

    def test_full_socket_buffer_pauses_reading(self) -> None:
        """The transport's buffer full (pauseProducing from it): reading stops until it drains."""
        setup = Setup()
        proto, transport = setup.connect()
        self.assertIs(transport.producer, proto)
        proto.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        proto.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_upgrade_hands_the_connection_to_twisted_web(self) -> None:
        """An Upgrade request goes to twisted.web with the bytes after it; the connection is twisted.web's from then on."""
        setup = Setup()
        proto, transport = setup.connect()
        conn = front_connection(proto)
        proto.dataReceived(send() + get("/health", "Connection: Upgrade\r\nUpgrade: something\r\n") + send(topic="after"))
        self.assertEqual(conn.state, fc.SWITCHED)
        answers = responses(transport.value())
        self.assertEqual([r.status for r in answers], [200, 200, 200])
        self.assertIsNone(answers[0].header(b"server"))
        self.assertEqual(answers[2].header(b"server")[:10], b"TwistedWeb")  # type: ignore[index]
        self.assertEqual(setup.recorder.plaintexts(), [b'{"topic": "t"}', b'{"topic": "after"}'])
        self.assertNotIn(conn, setup.site.channels)


class EncodingTests(SynchronousTestCase):
    def test_answer_bytes(self) -> None:
        """An Answer is written as status line, Connection (when closing 1.1), Date, its fields in order, Content-Length, body."""
        data = encode_answer(Answer(429, ((b"Retry-After", b"1"), (b"Content-Type", b"application/json")), b"{}"), b"HTTP/1.1", True, False)
        lines = data.split(b"\r\n")
        self.assertEqual(lines[0], b"HTTP/1.1 429 " + RESPONSES.get(429, b"Unknown Status"))  # (twisted.web's phrase, byte for byte)
        self.assertEqual(lines[1], b"Connection: close")
        self.assertTrue(lines[2].startswith(b"Date: "))
        self.assertEqual(lines[3:], [b"Retry-After: 1", b"Content-Type: application/json", b"Content-Length: 2", b"", b"{}"])
        self.assertNotIn(b"Connection", encode_answer(Answer(200, (), b""), b"HTTP/1.0", True, False))
        self.assertIn(b"Connection: close", encode_answer(Answer(200, (), b""), b"HTTP/1.0", True, True))

    def test_sent_answer_fields_are_its_headers(self) -> None:
        """/sendmessage's answer: json.dumps's body, its headers in order, and its fields pre-encoded, exactly those headers' wire form, kept or not."""
        for delivery in (Delivery(1, 1, False, 0, 1700000000000123), Delivery(0, 0, True, 2, 17), Delivery(3, 2, True, 0, 5)):
            answer = sent_answer(delivery)
            self.assertIsNotNone(answer.fields)
            expected = [
                (b"X-Pns-Sessions", b"%d" % delivery.sessions),
                (b"X-Pns-Users", b"%d" % delivery.users),
                (b"X-Pns-Id", b"%d" % delivery.message_id),
                *([(b"X-Pns-Stored", b"true")] if delivery.stored else []),
                (b"Content-Type", b"application/json"),
                (b"Cache-Control", b"no-store"),
            ]
            self.assertEqual(list(answer.headers), expected)
            self.assertEqual(answer.fields, b"".join(b"%s: %s\r\n" % field for field in expected))
            doc = {"sessions": delivery.sessions, "users": delivery.users, "stored": delivery.stored}
            if delivery.dropped:
                doc["dropped"] = delivery.dropped
            self.assertEqual(answer.body, json.dumps({**doc, "id": delivery.message_id}).encode())
            plain = Answer(answer.status, answer.headers, answer.body)
            self.assertEqual(encode_answer(answer, b"HTTP/1.1", False, False), encode_answer(plain, b"HTTP/1.1", False, False))

    def test_front_connection_is_not_a_request(self) -> None:
        """The handlers see a Call: plain values, no request object; the Answer comes back as a value."""
        setup = Setup()
        calls: list[Call] = []
        route = setup.front.routes[(b"POST", b"/sendmessage")]

        def spy(call: Call) -> Any:
            calls.append(call)
            result = route(call)
            self.assertIsInstance(result, Answer)
            return result

        setup.front.routes[(b"POST", b"/sendmessage")] = spy
        setup.run([b"POST /sendmessage?ttl=5 HTTP/1.1\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\nContent-Length: 2\r\n\r\n{}"])
        (call,) = calls
        self.assertEqual(
            (call.method, call.path, call.query, call.body, call.peer, call.secure),
            (b"POST", b"/sendmessage", b"ttl=5", b"{}", "127.0.0.1", False),
        )
        self.assertEqual(call.bearer_token(), TOKEN)
        self.assertIsInstance(front_connection(setup.connect()[0]), FrontConnection)

    def test_bearer_token_in_any_spelling(self) -> None:
        """Call.bearer_token: the token after a case-insensitive "Bearer" and spaces, stripped; "" for any other scheme or none."""
        cases = {
            b"Bearer abc": "abc",
            b"Bearer   abc  ": "abc",
            b"Bearer abc\xa0": "abc",
            b"Bearer \x85": "",
            b"Bearer ": "",
            b"Bearer": "",
            b"bearer abc": "abc",
            b"BEARER abc def": "abc def",
            b"  Bearer abc": "abc",
            b"Bearer\tabc": "",
            b"Basic abc": "",
            b"": "",
        }
        for authorization, token in cases.items():
            call = Call(b"POST", b"/sendmessage", b"", authorization, b"", "127.0.0.1", False)
            self.assertEqual(call.bearer_token(), token, authorization)


class RestartTests(SynchronousTestCase):
    def test_answer_awaited_when_a_restart_begins_closes(self) -> None:
        """A send still awaited when the restart handoff sets closing: its answer says Connection: close and the connection closes after it."""
        setup = Setup()
        setup.store.gate = Deferred()
        proto, transport = setup.connect()
        proto.dataReceived(send(token=OTHER_TOKEN))
        self.assertTrue(setup.site.in_progress())
        setup.site.closing = True
        setup.site.close_after_answers()
        setup.store.gate.callback(None)
        self.assertEqual([(r.status, r.header(b"connection")) for r in responses(transport.value())], [(200, b"close")])
        self.assertTrue(transport.disconnecting)
        self.assertFalse(setup.site.in_progress())

    def test_busy_counts_requests_on_open_connections_only(self) -> None:
        """ApiSite.busy (the handoff's wait): a request in progress counts while its connection is open, not once it is gone unheard (a WebSocket upgrade)."""
        setup = Setup()
        setup.store.gate = Deferred()
        proto, transport = setup.connect()
        self.assertFalse(setup.site.busy())
        proto.dataReceived(send(token=OTHER_TOKEN))
        self.assertTrue(setup.site.busy())
        transport.connected = False  # (twisted.web's WebSocket resource takes the connection over: the channel never hears it end)
        self.assertFalse(setup.site.busy())
        self.assertTrue(setup.site.in_progress())
