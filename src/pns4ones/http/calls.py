"""
The plain values at the send API's front door: a :class:`Call` in, an
:class:`Answer` out.  Every route is a function between the two, whichever HTTP
code path (the front connection of :mod:`.connection`, or twisted.web and Klein
through :mod:`.resources`) received the request and writes the answer.

Invariants:

* Both are plain data: no connection, transport, request object or Deferred in
  them; building one costs a few attribute stores.
* A Call carries what the API reads and nothing else: the method, the path
  (still percent-encoded) and the raw query string, the ``Authorization``
  header, the whole body (already bounded by ``max_body_size`` and de-chunked),
  the peer's address and whether the request came over HTTPS, both already
  resolved for ``trusted_proxies``.
* An Answer's header names are spelled as they go on the wire (twisted.web's
  canonical form: ``X-Pns-Sessions``), in the order they are written;
  ``Content-Length`` is never among them: the writer adds it from the body.
"""

from __future__ import annotations

import json
from typing import Final

from twisted.web.http import parse_qs

JSON: Final = b"application/json"
#: The headers every JSON answer ends with (before Content-Length), as twisted.web writes them.
JSON_HEADERS: Final[tuple[tuple[bytes, bytes], ...]] = ((b"Content-Type", JSON), (b"Cache-Control", b"no-store"))

Headers = tuple[tuple[bytes, bytes], ...]


class Call:
    """One request as the API sees it (see the module's invariants)."""

    __slots__ = ("_args", "authorization", "body", "method", "path", "peer", "query", "secure")

    def __init__(self, method: bytes, path: bytes, query: bytes, authorization: bytes, body: bytes, peer: str, secure: bool) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.authorization = authorization
        self.body = body
        self.peer = peer
        self.secure = secure
        self._args: dict[bytes, list[bytes]] | None = None

    @property
    def args(self) -> dict[bytes, list[bytes]]:
        """The query arguments, parsed on first use (as twisted.web's ``request.args``)."""
        args = self._args
        if args is None:
            args = self._args = parse_qs(self.query, 1) if self.query else {}  # type: ignore[no-untyped-call]  # (twisted.web.http.parse_qs is not annotated)
        return args

    def arg(self, name: bytes) -> bytes | None:
        """The first value of a query argument, or None."""
        if not self.query:
            return None
        values = self.args.get(name)
        return values[0] if values else None

    def bearer_token(self) -> str:
        """The token of ``Authorization: Bearer ...``; "" when there is none."""
        authorization = self.authorization
        if authorization[:7] == b"Bearer ":  # (the usual spelling: what the rule below reads, in fewer steps)
            return authorization[7:].decode("latin-1").strip()
        scheme, _, value = authorization.decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer":
            return ""
        return value.strip()

    def __repr__(self) -> str:
        return f"Call({self.method!r}, {self.path!r}, query={self.query!r}, peer={self.peer!r}, body={len(self.body)} bytes)"


class Answer:
    """One response: status, headers (see the module's invariants), body."""

    __slots__ = ("_headers", "body", "fields", "status")

    def __init__(self, status: int, headers: Headers | None, body: bytes, fields: bytes | None = None) -> None:
        self.status = status
        self._headers = headers
        self.body = body
        #: The headers as they go on the wire (``Name: value\r\n`` each, in order), when the handler made
        #: them so (``/sendmessage``'s answers, each a send's own); None: the writer encodes ``headers``.
        #: An answer made with ``fields`` may leave ``headers`` None: they are read from ``fields`` when
        #: asked for (the front connection writes ``fields`` and never asks).
        self.fields = fields

    @property
    def headers(self) -> Headers:
        """The header fields as (name, value) pairs, in order."""
        headers = self._headers
        if headers is None:
            fields = self.fields
            assert fields is not None, "an Answer needs its headers or its fields"
            lines = (line.partition(b": ") for line in fields.split(b"\r\n")[:-1])
            headers = self._headers = tuple((name, value) for name, _, value in lines)
        return headers

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Answer):
            return NotImplemented
        return (self.status, self.headers, self.body) == (other.status, other.headers, other.body)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.headers!r}, {self.body[:200]!r})"


def json_answer(status: int, doc: object, headers: Headers = ()) -> Answer:
    """A JSON answer: ``headers`` first, then Content-Type and Cache-Control, as twisted.web's ``json_body`` writes them."""
    return Answer(status, headers + JSON_HEADERS, json.dumps(doc, ensure_ascii=False).encode("utf-8"))
