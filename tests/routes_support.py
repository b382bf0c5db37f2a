"""
Raw HTTP for hostile tests: requests written as bytes (any target, any header
value, any body), answers read with llhttp, and what a hostile walk needs to
tell a good answer from a bad one.  Loopback only; one request a connection.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_from_bytes

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser


@dataclass
class Reply:
    """One answer: status, header fields (names in lowercase; a repeated one: the last) and body."""

    status: int
    headers: dict[bytes, bytes]
    body: bytes
    #: Every header field as sent, in order (Set-Cookie comes several times).
    fields: list[tuple[bytes, bytes]] = field(default_factory=list)

    def header(self, name: bytes) -> bytes:
        return self.headers.get(name.lower(), b"")

    def json(self) -> Any:
        return json.loads(self.body)

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _Reader:
    """llhttp callbacks: a whole answer, or its head alone when the body never ends (101, an event stream) or is absent (HEAD)."""

    def __init__(self, head_only: bool) -> None:
        self.head_only = head_only
        self.parser = HttpResponseParser(self)
        self.headers: dict[bytes, bytes] = {}
        self.fields: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.done = False
        self.interim = False
        self.head = False  # the head of a (final) answer is in

    def on_message_begin(self) -> None:
        self.headers, self.fields, self.body = {}, [], []

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status == 100:
            self.interim = True
            return
        self.head = True
        if self.head_only or status == 101 or self.headers.get(b"content-type", b"").startswith(b"text/event-stream"):
            self.done = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.interim:  # 100 Continue: the real answer follows
            self.interim = False
            return
        self.done = True


def exchange(port: int, raw: bytes, head_only: bool = False, timeout: float = 10.0, source: str = "127.0.0.1") -> Reply | None:
    """Send ``raw`` on a new connection to 127.0.0.1:``port``; the answer (None when the server closed without one)."""
    reader = _Reader(head_only)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0)) as sock:
        try:
            sock.sendall(raw)
        except OSError:
            pass  # (the server may answer and close before taking the whole request)
        deadline = time.monotonic() + timeout
        while not reader.done:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not data:  # an answer without a length ends with the connection (twisted.web's bare 400)
                reader.done = reader.head
                break
            try:
                reader.parser.feed_data(data)
            except HttpParserUpgrade:
                reader.done = True
            except HttpParserError:
                break
    if not reader.done:
        return None
    return Reply(reader.parser.get_status_code(), reader.headers, b"".join(reader.body), reader.fields)


def request(
    method: bytes,
    target: bytes,
    port: int,
    headers: Iterable[tuple[bytes, bytes]] = (),
    body: bytes | None = None,
    host: bytes | None = None,
) -> bytes:
    """A request as bytes: ``Host`` first (127.0.0.1:port unless given), then ``headers``, then the body's length (when there is a body)."""
    out = [b"%s %s HTTP/1.1\r\n" % (method, target), b"Host: %s\r\n" % (host if host is not None else b"127.0.0.1:%d" % port)]
    out += [b"%s: %s\r\n" % pair for pair in headers]
    if body is not None:
        out.append(b"Content-Length: %d\r\n" % len(body))
    out.append(b"Connection: close\r\n\r\n")
    if body is not None:
        out.append(body)
    return b"".join(out)


def form(pairs: Iterable[tuple[str | bytes, str | bytes]]) -> bytes:
    """An ``application/x-www-form-urlencoded`` body; bytes values are percent-encoded as they are (invalid UTF-8 stays invalid)."""

    def enc(value: str | bytes) -> str:
        raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
        return quote_from_bytes(raw, safe="")

    return "&".join(f"{enc(k)}={enc(v)}" for k, v in pairs).encode("ascii")


#: The message of a panel error page (``error.html``, and the forms' own error line).
PANEL_ERROR = re.compile(rb'id="error" role="alert">\s*([^<\s][^<]*)<')


@dataclass
class Findings:
    """What a hostile walk found wrong, one line each (collected, so one run shows them all)."""

    lines: list[str] = field(default_factory=list)
    requests: int = 0

    def add(self, what: str, reply: Reply | None, problem: str) -> None:
        shown = "no answer" if reply is None else f"{reply.status} {reply.header(b'content-type').decode('latin-1')} {reply.body[:160]!r}"
        self.lines.append(f"{what[:200]}: {problem} ({shown})")


#: 503s the documentation names (docs: Send API > Errors, Subscriptions): their ``error`` values.
DOCUMENTED_503 = frozenset({"store_unavailable", "hub_unavailable", "too_many_subscriptions"})


def json_problem(reply: Reply) -> str:
    """Why ``reply`` (an error of a JSON listener) is not a JSON object with an ``error`` and a ``reason``; "" when it is."""
    if not reply.header(b"content-type").startswith(b"application/json"):
        return "an error that is not JSON"
    try:
        doc = reply.json()
    except ValueError:
        return "a body that is not JSON"
    if not isinstance(doc, dict) or not doc.get("error") or not isinstance(doc.get("reason"), str) or not doc["reason"]:
        return "a JSON error without error and reason"
    return ""


def panel_problem(reply: Reply) -> str:
    """
    Why ``reply`` (an error of the admin panel) is not an HTML page with a
    message; "" when it is.  The refusals every listener shares (413, 408: the
    request never reached the panel) are JSON with a reason there too.
    """
    if reply.header(b"content-type").startswith(b"application/json"):
        return json_problem(reply)
    if not reply.header(b"content-type").startswith(b"text/html"):
        return "an error that is not an HTML page"
    if not PANEL_ERROR.search(reply.body):
        return "an error page without a message"
    return ""


def server_error(reply: Reply) -> str:
    """ "" unless ``reply`` is a 5xx other than a documented 503 (or ``/ready``'s "not ready")."""
    if reply.status < 500:
        return ""
    if reply.status == 503:
        try:
            doc = reply.json()
        except ValueError:
            doc = None
        if isinstance(doc, dict) and (doc.get("error") in DOCUMENTED_503 or doc.get("ready") is False):
            return ""
    return f"answered {reply.status}"
