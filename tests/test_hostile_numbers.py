"""Hostile numbers in requests: JSON's NaN/Infinity refused at parse time, every number range-checked, never a 500."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import quote

import httpx
from twisted.trial.unittest import SynchronousTestCase

from pns4ones.groups import GroupError, parse_ttl
from pns4ones.messages import MessageError, decode_json_body

from .support import ServerProcess

#: JSON texts whose numbers a request must never turn into a 5xx (a literal, not json.dumps: these are not JSON).
HOSTILE_NUMBERS = ("NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" + "0" * 400, "-1", "0", '"x"', "true", "null", "[]")


class DecodeTests(SynchronousTestCase):
    def test_non_standard_constants_refused(self) -> None:
        """NaN, Infinity and -Infinity (which Python's json accepts) are a MessageError on the body, wherever they are."""
        for text in ("NaN", "Infinity", "-Infinity"):
            for body in (text, '{"TTL": ' + text + "}", '{"a": [1, {"b": ' + text + "}]}"):
                with self.assertRaises(MessageError) as caught:
                    decode_json_body(body.encode())
                self.assertEqual(caught.exception.field, "body")
                self.assertIn(f"{text} is not a JSON number", caught.exception.reason)

    def test_float_overflow_refused(self) -> None:
        """A float literal past the double range (which would parse as infinity) is refused; large but finite ones and huge ints parse."""
        for text in ("1e999", "-1e999", "1.5e309"):
            with self.assertRaises(MessageError) as caught:
                decode_json_body(b'{"TTL": %s}' % text.encode())
            self.assertIn("out of the range of a number", caught.exception.reason)
        self.assertEqual(decode_json_body(b'{"TTL": 1e308}'), {"TTL": 1e308})
        self.assertEqual(decode_json_body(b'{"TTL": 2.5}'), {"TTL": 2.5})
        self.assertEqual(decode_json_body(b"[%s]" % (b"1" + b"0" * 400)), [10**400])

    def test_parse_ttl_huge_int(self) -> None:
        """A TTL integer past the float range is a 400 GroupError naming the field (not an OverflowError)."""
        for value in (10**400, -(10**400)):
            with self.assertRaises(GroupError) as caught:
                parse_ttl(value, 86400.0, "Message.TTL")
            self.assertEqual((caught.exception.status, caught.exception.field), (400, "Message.TTL"))
        self.assertEqual(parse_ttl(60, 86400.0), 60.0)


class HostileNumberTests(SynchronousTestCase):
    """One real server: every hostile number on /tickets, /sendmessage, ?ttl=, since= and Last-Event-ID."""

    server: ServerProcess

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = ServerProcess(args=["--allowed_origins", "*"])
        cls.app = cls.server.create_app("Numbers")
        try:
            cls.server.start()
        except BaseException:
            cls.server.cleanup()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.cleanup()

    def setUp(self) -> None:
        self.http = httpx.Client(timeout=10)
        self.addCleanup(self.http.close)
        response = self.http.get(f"{self.server.url}/auth", params={"server_key": self.app["server_key"]})
        self.auth = {"Authorization": f"Bearer {response.json()['access_token']}", "Content-Type": "application/json"}

    def post(self, path: str, body: str, **params: str) -> httpx.Response:
        return self.http.post(f"{self.server.url}{path}", content=body.encode(), headers=self.auth, params=params)

    def assert_clean_400(self, response: httpx.Response, what: str) -> dict[str, Any]:
        self.assertEqual(response.status_code, 400, f"{what}: {response.status_code} {response.text}")
        doc = response.json()
        self.assertEqual(doc["error"], "bad_request", what)
        self.assertTrue(doc["reason"], what)
        return dict(doc)

    def assert_log_clean(self) -> None:
        log = self.server.log()
        self.assertNotIn("Traceback", log)
        self.assertNotIn("Unhandled Error", log)

    def test_ticket_ttl(self) -> None:
        """POST /tickets with a hostile TTL answers 400 with a JSON reason (1e999 and NaN gave 500 and a critical traceback)."""
        for number in HOSTILE_NUMBERS:
            body = '{"IbId": "ib1", "UserId": "u1", "TTL": ' + number + "}"
            response = self.post("/tickets", body)
            if number == "null" or number.startswith("1000"):  # absent: the default TTL; a finite one past the maximum: capped
                self.assertEqual(response.status_code, 200, response.text)
                continue
            doc = self.assert_clean_400(response, f"/tickets TTL {number[:20]}")
            self.assertIn(doc.get("field"), ("TTL", "body"))
        for number in ("1e308", "1" + "0" * 400):
            response = self.post("/tickets", '{"IbId": "ib1", "UserId": "u1", "TTL": ' + number + "}")
            self.assertEqual(response.status_code, 200, response.text)
            self.assertEqual(response.json()["expires_in"], 3600)  # ticket_max_ttl
        self.assert_log_clean()

    def test_send_ttl(self) -> None:
        """Message.TTL and ?ttl= with hostile numbers answer 400 on /sendmessage and /sendmessages (a huge integer gave 500)."""
        for number in HOSTILE_NUMBERS:
            if number in ("null", "0"):
                continue
            body = '{"Recipient": {"Type": "user", "IbId": "ib1", "UserId": "u1"}, "Message": {"Topic": "t", "TTL": ' + number + "}}"
            self.assert_clean_400(self.post("/sendmessage", body), f"/sendmessage TTL {number[:20]}")
            response = self.post("/sendmessages", "[" + body + "]")
            self.assertIn(response.status_code, (200, 400), response.text)
            if response.status_code == 200:  # a batch answers per message
                self.assertEqual(response.json()["results"][0]["status"], 400, response.text)
        plain = '{"Recipient": {"Type": "user", "IbId": "ib1", "UserId": "u1"}, "Message": {"Topic": "t"}}'
        for value in ("nan", "inf", "-inf", "1e999", "1" + "0" * 400, "-1", "x", ""):
            self.assert_clean_400(self.post("/sendmessage", plain, ttl=value), f"?ttl={value[:20]}")
        self.assert_log_clean()

    def test_resume_points(self) -> None:
        """since= and Last-Event-ID that are not ASCII message ids answer 400 on both web transports ("²" gave 500)."""
        response = self.post("/tickets", '{"IbId": "ib1", "UserId": "u1"}')
        ticket = response.json()["ticket"]
        for value in ("²", "١٢", "1e3", "-1", "NaN", "9" * 19, " ", "0x10"):
            for transport in ("sse", "ws"):
                status = self.subscribe_status(transport, ticket, since=value)
                self.assertEqual(status, 400, f"{transport} since={value!r}")
            status = self.subscribe_status("sse", ticket, last_event_id=value)
            self.assertEqual(status, 400, f"Last-Event-ID {value!r}")
        self.assertEqual(self.subscribe_status("sse", ticket, since="12"), 200)
        self.assert_log_clean()

    def subscribe_status(self, transport: str, ticket: str, since: str | None = None, last_event_id: str | None = None) -> int:
        """The status line of a raw subscription request (bytes as a hostile client sends them)."""
        query = f"ticket={ticket}"
        if since is not None:
            query += "&since=" + quote(since)
        head = f"GET /subscribe/{transport}?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if transport == "ws":
            head += (
                "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: MDEyMzQ1Njc4OWFiY2RlZg==\r\nSec-WebSocket-Version: 13\r\n"
            )
        raw = head.encode()
        if last_event_id is not None:
            raw += b"Last-Event-ID: " + last_event_id.encode("latin-1", "replace") + b"\r\n"
        with socket.create_connection(("127.0.0.1", self.server.api_port), timeout=5) as sock:
            sock.sendall(raw + b"\r\n")
            line = sock.recv(4096).split(b"\r\n", 1)[0]
        return int(line.split()[1])
