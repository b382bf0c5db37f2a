"""
The send API's front connection (pns4ones.http.connection) against the real
process: the same answers as twisted.web byte for byte, HTTP details, the other
routes answered by twisted.web on the same connection, TLS, hostile input, and
the four defects of issue 18 (each fails on the lean path it replaced).
The byte-level tests in process are in test_http_connection.py.
"""

from __future__ import annotations

import json
import random
import re
import socket
import ssl
import time
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

from pns4ones_client import Subscriber

from .pki import PKI
from .support import ServerProcess, wait_for

COMMON_INI = "log_level = Information\nmax_body_size = 8K\nmax_batch = 5000\nsend_rate_limit = 2000\nrequest_timeout = 1\ntrusted_proxies = 127.0.0.2/32\n"


def read_response(f: Any) -> tuple[bytes, bytes]:
    """One response from a buffered socket file: (status line + headers, body)."""
    head = b""
    while True:
        line = f.readline()
        if not line:
            raise EOFError(f"connection closed after {head!r}")
        head += line
        if line == b"\r\n":
            break
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, f.read(length)


def normalized(head: bytes, body: bytes) -> bytes:
    """
    A response without the headers only twisted.web writes or that change by the second (Server, Date), and with
    the message ids (``"id": N`` in the body, ``X-Pns-Id: N``) as N: each server numbers its messages from its start.
    """
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith((b"server:", b"date:"))]
    return MESSAGE_ID.sub(rb"\1N", b"\r\n".join(lines) + body)


#: A message id in a send's answer (16 digits until the year 2286: the Content-Length stays the same).
MESSAGE_ID = re.compile(rb'("id": |X-Pns-Id: )[0-9]{16}\b')


def status(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


class Conn:
    """A raw keep-alive HTTP connection (bytes in, responses out)."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None, source: str = "127.0.0.1") -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.f = sock.makefile("rb")

    def send(self, data: bytes) -> Conn:
        self.sock.sendall(data)
        return self

    def response(self) -> tuple[bytes, bytes]:
        return read_response(self.f)

    def closed(self, timeout: float = 3.0) -> bool:
        """The server closed the connection (EOF or reset) within ``timeout``."""
        self.sock.settimeout(timeout)
        try:
            return self.f.read(1) == b""
        except (ConnectionResetError, ssl.SSLError):
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def request(method: str, path: str, body: bytes = b"", token: str = "", headers: str = "", version: str = "1.1") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    return f"{method} {path} HTTP/{version}\r\nHost: 127.0.0.1\r\n{auth}{length}{headers}\r\n".encode() + body


def send_doc(user: str = "u1", ib: str = "ib1", **message: Any) -> bytes:
    return json.dumps(
        {"Recipient": {"Type": "user", "IbId": ib, "UserId": user}, "Message": message or {"Topic": "t"}}, ensure_ascii=False
    ).encode()


class Servers(TestCase):
    """One lean server and one twisted.web server (http_engine = twisted), same options, same subscribers."""

    servers: dict[str, ServerProcess] = {}
    apps: dict[str, dict[str, str]] = {}
    tokens: dict[str, str] = {}
    subs: list[Subscriber] = []

    @classmethod
    def setUpClass(cls) -> None:
        cls.servers, cls.apps, cls.tokens, cls.subs = {}, {}, {}, []
        for engine in ("lean", "twisted"):
            server = ServerProcess(ini=COMMON_INI + f"http_engine = {engine}\n")
            cls.apps[engine] = server.create_app("Shop")
            server.start()
            cls.servers[engine] = server
            conn = Conn(server.api_port).send(
                request("GET", f"/auth?server_key={cls.apps[engine]['server_key']}", headers="Connection: close\r\n")
            )
            cls.tokens[engine] = json.loads(conn.response()[1])["access_token"]
            conn.close()
            app = cls.apps[engine]
            sub = Subscriber("127.0.0.1", server.service_port, app["id"], app["client_key"], "ib1", "u1", "", timeout=5).connect()
            cls.subs.append(sub)
            wait_for(lambda server=server: "subscription registered" in server.log(), what="the subscription")

    @classmethod
    def tearDownClass(cls) -> None:
        for sub in cls.subs:
            sub.close()
        for server in cls.servers.values():
            server.cleanup()

    def setUp(self) -> None:
        self.subs[0].receive_all(0.05)  # what earlier tests sent

    @property
    def lean(self) -> ServerProcess:
        return self.servers["lean"]

    def conn(self, engine: str = "lean", **kwargs: Any) -> Conn:
        c = Conn(self.servers[engine].api_port, **kwargs)
        self.addCleanup(c.close)
        return c

    def both(self, make: Any, count: int = 1) -> list[bytes]:
        """Send ``make(token)`` on a fresh connection to each server; the normalized responses must be equal."""
        answers = {}
        for engine in ("lean", "twisted"):
            c = self.conn(engine).send(make(self.tokens[engine]))
            responses = [c.response() for _ in range(count)]
            for head, body in responses:
                self.assert_ids_agree(head, body)
            answers[engine] = [normalized(*response) for response in responses]
        self.assertEqual(answers["lean"], answers["twisted"])
        return answers["lean"]

    def assert_ids_agree(self, head: bytes, body: bytes) -> None:
        """What ``normalized`` masks is a real id: X-Pns-Id is the body's "id", and a 200 send's answer has one."""
        header = re.search(rb"\r\nX-Pns-Id: ([0-9]+)\r\n", head)
        if header is not None:
            self.assertEqual(json.loads(body)["id"], int(header.group(1)))
        elif status(head) == 200 and body.startswith(b'{"sessions"'):
            self.fail(f"a send's 200 answer without X-Pns-Id: {head!r}")
        for found in MESSAGE_ID.finditer(head + body):
            self.assertGreater(int(found.group(0).rsplit(b" ", 1)[1]), 0)

    # -- the same answers as twisted.web --------------------------------------------------

    def test_send_answers_equal_twisted_web(self) -> None:
        """Sends, validation errors, auth errors and batches: the same status, headers (but Server/Date) and body."""
        cases = [
            lambda t: request("POST", "/sendmessage", send_doc("u1"), t),
            lambda t: request("POST", "/sendmessage", send_doc("nobody"), t),
            lambda t: request(
                "POST",
                "/sendmessage",
                b"\xef\xbb\xbf" + send_doc("u1", Topic=None, Notification={"Title": "«Привет»", "Important": True}),
                t,
            ),
            lambda t: request(
                "POST",
                "/sendmessage",
                json.dumps({"recipient": {"type": "ALL", "ibid": "ib1"}, "message": {"data": {"k": "v"}}}).encode(),
                t,
            ),
            lambda t: request("POST", "/sendmessage", b"{not json", t),
            lambda t: request("POST", "/sendmessage", b"", t),
            lambda t: request("POST", "/sendmessage", send_doc("u1", Data={"n": 1}), t),
            lambda t: request("POST", "/sendmessage", json.dumps({"Recipient": {"Type": "robot", "IbId": "x"}, "Message": {}}).encode(), t),
            lambda t: request("POST", "/sendmessage", send_doc("u1")),
            lambda t: request("POST", "/sendmessage", send_doc("u1"), "not-a-token"),
            lambda t: request("POST", "/sendmessage", send_doc("u1"), headers="Authorization: Basic abc\r\n"),
            lambda t: request("POST", "/sendmessage?ttl=forever", send_doc("nobody"), t),
            lambda t: request("POST", "/sendmessages", b"[" + send_doc("u1") + b', {"Recipient": 1}, ' + send_doc("u2") + b"]", t),
            lambda t: request("POST", "/sendmessages", b"{}", t),
            lambda t: request("POST", "/sendmessages", b"[]", "bad"),
            lambda t: request("GET", "/auth?server_key=wrong"),
            lambda t: request("GET", "/auth"),
            lambda t: request("POST", "/sendmessage", send_doc("u1"), t, version="1.0"),
            lambda t: request("POST", "/sendmessage", send_doc("u1"), t, headers="Connection: close\r\n"),
            lambda t: request("POST", "/sendmessage", send_doc("u1"), t, headers="Connection: keep-alive\r\n", version="1.0"),
        ]
        seen = set()
        for make in cases:
            (answer,) = self.both(make)
            seen.add(answer.split(b" ", 2)[1])
        self.assertEqual(seen, {b"200", b"400", b"401"})

    def test_auth_answer_has_the_same_shape(self) -> None:
        """GET /auth on the lean path: the same status line, headers and JSON members as twisted.web."""
        shapes = []
        for engine in ("lean", "twisted"):
            head, body = self.conn(engine).send(request("GET", f"/auth?server_key={self.apps[engine]['server_key']}")).response()
            shapes.append((normalized(head, b"").replace(b"%d" % len(body), b"N"), sorted(json.loads(body))))
        self.assertEqual(shapes[0], shapes[1])
        self.assertIn(b"HTTP/1.1 200 OK", shapes[0][0])

    def test_rate_limit_answer_equal(self) -> None:
        """Batches over send_rate_limit: the second gets 429 with Retry-After, as twisted.web answers it."""
        batch = b"[" + b",".join([b"{}"] * 1500) + b"]"
        answers = self.both(lambda t: request("POST", "/sendmessages", batch, t) * 2, count=2)
        self.assertTrue(answers[0].startswith(b"HTTP/1.1 200 OK\r\n"), answers[0][:200])
        self.assertTrue(answers[1].startswith(b"HTTP/1.1 429 "), answers[1][:200])
        self.assertIn(b"Retry-After: 1\r\n", answers[1])

    def test_head_keeps_twisted_order_and_no_server_header(self) -> None:
        """The lean answer: Date, X-Pns-* , Content-Type, Cache-Control, Content-Length in twisted.web's order; no Server header."""
        head, body = self.conn().send(request("POST", "/sendmessage", send_doc("u1"), self.tokens["lean"])).response()
        names = [line.split(b":")[0] for line in head.split(b"\r\n")[1:] if line]
        self.assertEqual(
            names, [b"Date", b"X-Pns-Sessions", b"X-Pns-Users", b"X-Pns-Id", b"Content-Type", b"Cache-Control", b"Content-Length"]
        )
        doc = json.loads(body)
        self.assertEqual(doc, {"sessions": 1, "users": 1, "stored": False, "id": doc["id"]})
        self.assertIn(b"X-Pns-Id: %d\r\n" % doc["id"], head)

    # -- HTTP details --------------------------------------------------------------------

    def test_keep_alive_sends_and_logs(self) -> None:
        """Many sends on one connection all arrive; each is logged with the peer, as on twisted.web."""
        before = self.lean.log().count("send: app=")
        c = self.conn()
        for i in range(20):
            head, _ = c.send(request("POST", "/sendmessage", send_doc("u1", Topic=f"k{i}"), self.tokens["lean"])).response()
            self.assertEqual(status(head), 200)
        for i in range(20):
            self.assertEqual(self.subs[0].receive(5), {"topic": f"k{i}"})
        wait_for(lambda: self.lean.log().count("send: app=") >= before + 20, what="20 send log lines")
        self.assertIn("peer=127.0.0.1", self.lean.log())

    def test_pipelined_requests_answered_in_order(self) -> None:
        """Hot requests pipelined in one chunk: answered in order, on one connection."""
        t = self.tokens["lean"]
        c = self.conn().send(
            request("POST", "/sendmessage", send_doc("u1", Topic="p1"), t)
            + request("POST", "/sendmessage", send_doc("nobody"), t)
            + request("GET", f"/auth?server_key={self.apps['lean']['server_key']}")
            + request("POST", "/sendmessage", b"{bad", t)
            + request("POST", "/sendmessages", b"[" + send_doc("u1", Topic="p2") + b"]", t)
        )
        answers = [c.response() for _ in range(5)]
        self.assertEqual([status(h) for h, _ in answers], [200, 200, 200, 400, 200])
        self.assertEqual(json.loads(answers[0][1])["sessions"], 1)
        self.assertEqual(json.loads(answers[1][1])["sessions"], 0)
        self.assertIn("access_token", json.loads(answers[2][1]))
        self.assertEqual(json.loads(answers[4][1])["sessions"], 1)
        self.assertEqual(self.subs[0].receive(5), {"topic": "p1"})
        self.assertEqual(self.subs[0].receive(5), {"topic": "p2"})

    def test_chunked_request_body(self) -> None:
        """A chunked request body, sent in pieces, is delivered."""
        body = send_doc("u1", Topic="chunked")
        c = self.conn()
        c.send(
            b"POST /sendmessage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + self.tokens["lean"].encode()
            + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for part in (body[:10], body[10:25], body[25:]):
            time.sleep(0.05)
            c.send(b"%x\r\n%s\r\n" % (len(part), part))
        c.send(b"0\r\n\r\n")
        head, answer = c.response()
        self.assertEqual(status(head), 200, answer)
        self.assertEqual(self.subs[0].receive(5), {"topic": "chunked"})

    def test_expect_100_continue(self) -> None:
        """Expect: 100-continue gets 100 Continue before the body is sent, then the answer."""
        body = send_doc("u1", Topic="continued")
        c = self.conn().send(
            request("POST", "/sendmessage", b"", self.tokens["lean"], headers="Expect: 100-continue\r\n").replace(
                b"Content-Length: 0", b"Content-Length: %d" % len(body)
            )
        )
        self.assertEqual(c.f.readline(), b"HTTP/1.1 100 Continue\r\n")
        self.assertEqual(c.f.readline(), b"\r\n")
        head, _ = c.send(body).response()
        self.assertEqual(status(head), 200)
        self.assertEqual(self.subs[0].receive(5), {"topic": "continued"})

    def test_body_over_limit_413(self) -> None:
        """A declared or chunked body over max_body_size: 413 JSON, then the connection closes; the server goes on."""
        c = self.conn().send(b"POST /sendmessage HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n" + b"x" * 100)
        head, body = c.response()
        self.assertEqual(status(head), 413)
        self.assertEqual(json.loads(body)["error"], "payload_too_large")
        self.assertTrue(c.closed())
        c = self.conn().send(
            b"POST /sendmessage HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"2000\r\n"
            + b"x" * 8192
            + b"\r\n"
            + b"10\r\n"
            + b"y" * 16
            + b"\r\n"
        )
        head, body = c.response()
        self.assertEqual(status(head), 413)
        self.assertTrue(c.closed())
        self.assertIn("exceeds max_body_size=8192: 413", self.lean.log())
        head, _ = self.conn().send(request("POST", "/sendmessage", send_doc("u1"), self.tokens["lean"])).response()
        self.assertEqual(status(head), 200)

    def test_slow_request_408(self) -> None:
        """A request not complete within request_timeout: 408 JSON and the connection closes; idle keep-alive is not timed."""
        c = self.conn()
        head, _ = c.send(request("POST", "/sendmessage", send_doc("u1"), self.tokens["lean"])).response()
        self.assertEqual(status(head), 200)
        time.sleep(1.6)  # idle between requests: no 408
        c.send(b"POST /sendmessage HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        head, body = c.response()
        self.assertEqual(status(head), 408)
        self.assertEqual(json.loads(body)["error"], "request_timeout")
        self.assertTrue(c.closed())

    # -- switching to twisted.web ----------------------------------------------------------

    def test_switch_to_klein_on_the_same_connection(self) -> None:
        """POST /sendmessage, then GET /presence and /health on the same keep-alive connection, then a send again."""
        t = self.tokens["lean"]
        c = self.conn()
        self.assertEqual(status(c.send(request("POST", "/sendmessage", send_doc("u1"), t)).response()[0]), 200)
        head, body = c.send(request("GET", "/presence/ib1/u1", token=t)).response()
        self.assertEqual(status(head), 200, body)
        self.assertTrue(json.loads(body)["online"])
        self.assertIn(b"Server: TwistedWeb", head)  # answered by twisted.web
        self.assertEqual(status(c.send(request("GET", "/health")).response()[0]), 200)
        head, body = c.send(request("POST", "/sendmessage", send_doc("u1", Topic="after"), t)).response()
        self.assertEqual(status(head), 200)
        self.assertEqual(self.subs[0].receive(5)["topic"], "t")
        self.assertEqual(self.subs[0].receive(5), {"topic": "after"})

    def test_other_routes_answer_as_before(self) -> None:
        """404s, 405s, /health, /ready, groups and a request split over chunks: the same answers on both engines."""
        self.both(lambda t: request("GET", "/nothing-here"))
        self.both(lambda t: request("GET", "/sendmessage"))
        self.both(lambda t: request("DELETE", "/sendmessages", token=t))
        self.both(lambda t: request("GET", "/health"))
        self.both(lambda t: request("GET", "/groups/ib1", token=t))
        self.both(lambda t: request("POST", "/sendmessage/extra", send_doc("nobody"), t))
        c = self.conn()
        for part in (b"GET /hea", b"lth HTTP/1.1\r\nHo", b"st: x\r\n\r\n"):
            c.send(part)
            time.sleep(0.05)
        self.assertEqual(c.response()[1], b'{"status": "ok"}')

    def test_pipelined_other_routes_behind_a_send(self) -> None:
        """GET /health and GET /presence (twisted.web) pipelined between sends in one chunk: all answered, in order, on one connection."""
        t = self.tokens["lean"]
        c = self.conn().send(
            request("POST", "/sendmessage", send_doc("u1", Topic="q1"), t)
            + request("GET", "/presence/ib1/u1", token=t)
            + request("GET", "/nothing-here")
            + request("POST", "/sendmessage", send_doc("u1", Topic="q2"), t)
        )
        answers = [c.response() for _ in range(4)]
        self.assertEqual([status(h) for h, _ in answers], [200, 200, 404, 200])
        self.assertTrue(json.loads(answers[1][1])["online"])
        self.assertIn(b"Server: TwistedWeb", answers[1][0])
        self.assertEqual([self.subs[0].receive(5)["topic"] for _ in range(2)], ["q1", "q2"])
        self.assertFalse(c.closed(0.2))

    def test_garbage_gets_400_and_the_server_goes_on(self) -> None:
        """Random bytes, at a connection's start or behind a good request: 400 and close; sends still work."""
        rng = random.Random(1234)
        for i in range(6):
            garbage = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) + b"\r\n\r\n"
            prefix = request("POST", "/sendmessage", send_doc("nobody"), self.tokens["lean"]) if i % 2 else b""
            c = self.conn().send(prefix + garbage)
            if prefix:
                self.assertEqual(status(c.response()[0]), 200)
            try:
                head, _ = c.response()
            except EOFError:
                self.fail(f"no 400 for {garbage!r}")
            self.assertEqual(status(head), 400)
            self.assertTrue(c.closed())
        self.assertEqual(self.lean.proc.poll(), None)
        self.assertEqual(
            status(self.conn().send(request("POST", "/sendmessage", send_doc("nobody"), self.tokens["lean"])).response()[0]), 200
        )

    def test_trusted_proxy_peer_in_logs(self) -> None:
        """From a trusted proxy, X-Forwarded-For names the peer in the send log line; from others it is ignored."""
        c = self.conn(source="127.0.0.2")
        c.send(request("POST", "/sendmessage", send_doc("nobody"), self.tokens["lean"], headers="X-Forwarded-For: 203.0.113.7\r\n"))
        self.assertEqual(status(c.response()[0]), 200)
        c.send(
            request(
                "POST", "/sendmessage", send_doc("nobody"), self.tokens["lean"], headers="X-Forwarded-For: 198.51.100.1, 203.0.113.8\r\n"
            )
        )
        self.assertEqual(status(c.response()[0]), 200)
        wait_for(
            lambda: "peer=203.0.113.7" in self.lean.log() and "peer=203.0.113.8" in self.lean.log(), what="the forwarded peers in the log"
        )
        untrusted = self.conn().send(
            request("POST", "/sendmessage", send_doc("nobody"), self.tokens["lean"], headers="X-Forwarded-For: 192.0.2.99\r\n")
        )
        self.assertEqual(status(untrusted.response()[0]), 200)
        time.sleep(0.2)
        self.assertNotIn("192.0.2.99", self.lean.log())

    def test_random_chunking_of_pipelined_sends(self) -> None:
        """The same pipelined sends split at random points (TCP_NODELAY, pauses) get the same answers."""
        t = self.tokens["lean"]
        stream = b"".join(request("POST", "/sendmessage", send_doc("nobody", Topic="x" * i), t) for i in range(4))
        expected = None
        rng = random.Random(7)
        for _ in range(8):
            cuts = sorted(rng.sample(range(1, len(stream)), 5))
            c = self.conn()
            for a, b in zip([0, *cuts], [*cuts, len(stream)]):
                c.send(stream[a:b])
                time.sleep(0.01)
            answers = [normalized(*c.response()) for _ in range(4)]
            expected = expected or answers
            self.assertEqual(answers, expected)


class TlsTests(TestCase):
    """The lean path behind TLS (ssl_mode FromFileWithPrivateKey)."""

    def setUp(self) -> None:
        pki = PKI()
        server_cert = pki.server()
        self.server = ServerProcess(
            ini="ssl_mode = FromFileWithPrivateKey\nssl_certificate = server.pem\nssl_certificate_key = server.key\n"
        )
        self.addCleanup(self.server.cleanup)
        (self.server.dir / "server.pem").write_bytes(server_cert.chain_pem())
        (self.server.dir / "server.key").write_bytes(server_cert.key_pem())
        self.app = self.server.create_app("Shop")
        self.server.start()
        self.context = ssl.create_default_context(cadata=pki.root_pem.decode())

    def test_send_and_switch_over_tls(self) -> None:
        """Over HTTPS: auth and sends on one connection, then /health (twisted.web) on it, then a send again."""
        sub = Subscriber(
            "127.0.0.1", self.server.service_port, self.app["id"], self.app["client_key"], "ib1", "u1", "", timeout=5
        ).connect()
        self.addCleanup(sub.close)
        wait_for(lambda: "subscription registered" in self.server.log(), what="the subscription")
        c = Conn(self.server.api_port, tls=self.context)
        self.addCleanup(c.close)
        token = json.loads(c.send(request("GET", f"/auth?server_key={self.app['server_key']}")).response()[1])["access_token"]
        for i in range(3):
            self.assertEqual(status(c.send(request("POST", "/sendmessage", send_doc("u1", Topic=f"tls{i}"), token)).response()[0]), 200)
        head, body = c.send(request("GET", "/health")).response()
        self.assertEqual((status(head), body), (200, b'{"status": "ok"}'))
        self.assertEqual(status(c.send(request("POST", "/sendmessage", send_doc("u1", Topic="tls-after"), token)).response()[0]), 200)
        self.assertEqual([sub.receive(5)["topic"] for _ in range(4)], ["tls0", "tls1", "tls2", "tls-after"])

    def test_graceful_stop_closes_lean_connections(self) -> None:
        """SIGTERM with an idle keep-alive HTTPS connection open: the server closes it and exits 0 promptly."""
        c = Conn(self.server.api_port, tls=self.context)
        self.addCleanup(c.close)
        self.assertEqual(status(c.send(request("GET", "/auth?server_key=x")).response()[0]), 401)
        started = time.monotonic()
        self.assertEqual(self.server.stop(), 0)
        self.assertLess(time.monotonic() - started, 5)
        self.assertTrue(c.closed())

    def test_alpn_offers_http_1_1(self) -> None:
        """A client offering h2 and http/1.1 over ALPN gets http/1.1, and is answered on it."""
        self.context.set_alpn_protocols(["h2", "http/1.1"])
        c = Conn(self.server.api_port, tls=self.context)
        self.addCleanup(c.close)
        self.assertEqual(c.sock.selected_alpn_protocol(), "http/1.1")
        self.assertEqual(status(c.send(request("GET", "/health")).response()[0]), 200)


def rss_kib(pid: int) -> int:
    """The resident set size of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def flood(c: Conn, prefix: bytes, total: int, chunk: bytes = b"a" * 65536) -> None:
    """Send ``prefix`` and then ``chunk`` until ``total`` bytes or until the server stops taking them."""
    c.sock.settimeout(5)
    try:
        c.send(prefix)
        sent = 0
        while sent < total:
            c.sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass  # the server closed after answering


class DefectTests(TestCase):
    """The four defects found by probing the lean path (issue 18), each against the real process."""

    server: ServerProcess
    app: dict[str, str]
    token: str
    sub: Subscriber

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = ServerProcess(ini=COMMON_INI.replace("request_timeout = 1", "request_timeout = 3") + "store_poll_interval = 60\n")
        cls.app = cls.server.create_app("Shop")
        cls.server.start()
        conn = Conn(cls.server.api_port).send(request("GET", f"/auth?server_key={cls.app['server_key']}", headers="Connection: close\r\n"))
        cls.token = json.loads(conn.response()[1])["access_token"]
        conn.close()
        cls.sub = Subscriber(
            "127.0.0.1", cls.server.service_port, cls.app["id"], cls.app["client_key"], "ib1", "u1", "", timeout=5
        ).connect()
        wait_for(lambda: "subscription registered" in cls.server.log(), what="the subscription")

    @classmethod
    def tearDownClass(cls) -> None:
        cls.sub.close()
        cls.server.cleanup()

    def setUp(self) -> None:
        self.sub.receive_all(0.05)

    def conn(self, source: str = "127.0.0.1") -> Conn:
        c = Conn(self.server.api_port, source=source)
        self.addCleanup(c.close)
        return c

    def chunked(self, auth: str, trailer: bytes, headers: str = "") -> bytes:
        body = send_doc("u1", Topic="trailer")
        return (
            f"POST /sendmessage HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nTransfer-Encoding: chunked\r\n{headers}\r\n".encode()
            + b"%x\r\n%s\r\n0\r\n" % (len(body), body)
            + trailer
            + b"\r\n"
        )

    def test_never_ending_head_parts_are_refused_and_memory_released(self) -> None:
        """(Defect 1) A header value, a header name or a chunked trailer that never ends: 431/400 within 64 KiB, closed, the memory given back."""
        assert self.server.proc is not None
        pid = self.server.proc.pid
        before = rss_kib(pid)
        cases = [
            (b"POST /sendmessage HTTP/1.1\r\nHost: x\r\nX-Long: ", 431),
            (b"POST /sendmessage HTTP/1.1\r\nHost: x\r\nX-", 431),
            (b"POST /sendmessage HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: ", 400),
        ]
        for prefix, expected in cases:
            c = self.conn()
            flood(c, prefix, 24 * 1024 * 1024)
            head, body = c.response()
            self.assertEqual(status(head), expected, body)
            self.assertTrue(c.closed())
        self.assertLess(rss_kib(pid) - before, 16 * 1024, "the server kept the flooded bytes")
        self.assertEqual(status(self.conn().send(request("POST", "/sendmessage", send_doc("nobody"), self.token)).response()[0]), 200)

    def test_trailer_fields_never_replace_header_fields(self) -> None:
        """(Defect 2) A valid token in a trailer does not authorize a bad header; a bad one in a trailer does not refuse a good header; nor does a trailer name the sender."""
        head, body = self.conn().send(self.chunked("Bearer not-a-token", f"Authorization: Bearer {self.token}\r\n".encode())).response()
        self.assertEqual(status(head), 401, body)
        self.assertEqual(self.sub.receive_all(0.3), [])
        head, body = self.conn().send(self.chunked(f"Bearer {self.token}", b"Authorization: Bearer not-a-token\r\n")).response()
        self.assertEqual(status(head), 200, body)
        self.assertEqual(self.sub.receive(5), {"topic": "trailer"})
        c = self.conn(source="127.0.0.2")
        head, _ = c.send(
            self.chunked(f"Bearer {self.token}", b"X-Forwarded-For: 203.0.113.77\r\n", "X-Forwarded-For: 198.51.100.9\r\n")
        ).response()
        self.assertEqual(status(head), 200)
        wait_for(lambda: "peer=198.51.100.9" in self.server.log(), what="the header's forwarded peer in the log")
        self.assertNotIn("203.0.113.77", self.server.log())

    def test_only_http_1_0_and_1_1(self) -> None:
        """(Defect 3) POST /sendmessage HTTP/2.0 (or 0.9) over HTTP/1: 505, the connection closed, nothing delivered."""
        for version in ("2.0", "0.9"):
            c = self.conn().send(request("POST", "/sendmessage", send_doc("u1", Topic="v"), self.token, version=version))
            head, body = c.response()
            self.assertEqual(head.split(b"\r\n")[0], b"HTTP/1.1 505 HTTP Version Not Supported")
            self.assertEqual(json.loads(body)["error"], "http_version_not_supported")
            self.assertTrue(c.closed())
        self.assertEqual(self.sub.receive_all(0.3), [])

    def test_request_timeout_runs_from_the_first_byte_on_every_route(self) -> None:
        """(Defect 4) A slow PUT /groups (answered by twisted.web) gets its 408 request_timeout after its first byte, not later."""
        c = self.conn()
        started = time.monotonic()
        head = f"PUT /groups/ib1/g1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {self.token}\r\nContent-Length: 100\r\n\r\n".encode()
        for i in range(0, len(head), 8):  # the head over about 2 s, then part of the body
            c.send(head[i : i + 8])
            time.sleep(2.0 / (len(head) / 8))
        c.send(b'{"UserIds": [')
        answer, body = c.response()
        elapsed = time.monotonic() - started
        self.assertEqual(status(answer), 408, body)
        self.assertGreaterEqual(elapsed, 2.9)
        self.assertLess(elapsed, 4.3, "the request's clock restarted when the head was complete")
        self.assertTrue(c.closed())

    def test_auth_finds_an_application_created_a_moment_ago(self) -> None:
        """(Item 4) GET /auth with the server key of an application created just now by pns4ones-admin: 200 at once, not 401."""
        app = self.server.create_app("Fresh")
        head, body = self.conn().send(request("GET", f"/auth?server_key={app['server_key']}")).response()
        self.assertEqual(status(head), 200, body)
        token = json.loads(body)["access_token"]
        head, body = self.conn().send(request("POST", "/sendmessage", send_doc("nobody"), token)).response()
        self.assertEqual(status(head), 200, body)
        head, body = self.conn().send(request("GET", "/auth?server_key=" + "0" * 64)).response()
        self.assertEqual((status(head), json.loads(body)["error"]), (401, "unauthorized"))
