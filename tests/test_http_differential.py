"""
Differential fuzzing (hypothesis) of the send API's two HTTP paths in process:
the same random and hostile request streams, cut at the same random points,
fed to the front connection and to twisted.web alone (``http_engine =
twisted``, the reference), comparing the status of every answer, the header
fields that matter, the JSON bodies and the messages delivered.

Where the front connection is stricter by design (documented in
docs/send-api.md), the stream ends with that hostile part, and only the
front's refusal is checked: bare LF, obs-fold, a target over 8 KiB, HTTP/2.0
over HTTP/1, heads between 16 and 64 KiB (twisted.web's own limit is 16 KiB).
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from .fuzz_harness import FUZZ, examples
from .http_support import APP, TOKEN, Response, Setup, responses

#: The header fields compared between the two paths (Server, Date and Content-Length's spelling aside).
COMPARED = (b"x-pns-sessions", b"x-pns-users", b"x-pns-stored", b"content-type", b"connection", b"retry-after", b"allow")
#: twisted.web's bare refusal (no body, no length): read up to the connection's end.
TWISTED_400 = b"HTTP/1.1 400 Bad Request\r\n\r\n"

text = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)


def doc(user: str, topic: str) -> bytes:
    return json.dumps(
        {"Recipient": {"Type": "user", "IbId": "ib1", "UserId": user}, "Message": {"Topic": topic}}, ensure_ascii=False
    ).encode()


@st.composite
def bodies(draw: Any) -> bytes:
    """A /sendmessage or /sendmessages body: valid, or broken on purpose."""
    kind = draw(st.sampled_from(["one", "one", "batch", "broken", "empty"]))
    if kind == "one":
        return doc(draw(st.sampled_from(["u1", "nobody"])), draw(text))
    if kind == "batch":
        items = [doc(draw(st.sampled_from(["u1", "nobody"])), draw(text)) for _ in range(draw(st.integers(0, 3)))]
        return b"[" + b",".join(items) + b"]"
    if kind == "broken":
        return draw(st.sampled_from([b"{not json", b'{"Recipient": 1}', b"[1, 2]", b"\xff\xfe"]))
    return b""


def framed(draw: Any, body: bytes) -> tuple[bytes, bytes]:
    """(framing header fields, encoded body): Content-Length, or chunked with random chunk sizes, extensions and trailers."""
    if not draw(st.booleans()):
        return b"Content-Length: %d\r\n" % len(body), body
    out = b""
    at = 0
    while at < len(body):
        size = draw(st.integers(1, max(1, len(body) - at)))
        extension = draw(st.sampled_from([b"", b";x=1", b';name="v"']))
        out += b"%x%s\r\n%s\r\n" % (size, extension, body[at : at + size])
        at += size
    trailer = draw(
        st.sampled_from([b"", b"X-Trailer: 1\r\n", b"Authorization: Bearer " + TOKEN.encode() + b"\r\n", b"X-Forwarded-For: 10.9.9.9\r\n"])
    )
    return b"Transfer-Encoding: chunked\r\n", out + b"0\r\n" + trailer + b"\r\n"


@st.composite
def requests(draw: Any) -> bytes:
    """One well-formed request, to a hot or a cold route."""
    token = draw(st.sampled_from([TOKEN, TOKEN, "not-a-token", ""]))
    auth = f"Authorization: Bearer {token}\r\n".encode() if token else b""
    extra = draw(st.sampled_from([b"", b"", b"Connection: close\r\n", b"Expect: 100-continue\r\n", b"Connection: keep-alive\r\n"]))
    version = draw(st.sampled_from([b"1.1", b"1.1", b"1.1", b"1.0"]))
    kind = draw(st.sampled_from(["send", "send", "batch", "auth", "cold", "cold"]))
    if kind in ("send", "batch"):
        path = b"/sendmessage" if kind == "send" else b"/sendmessages"
        query = draw(st.sampled_from([b"", b"?ttl=bad"]))
        framing, body = framed(draw, draw(bodies()))
        return b"POST %s%s HTTP/%s\r\nHost: x\r\n%s%s%s\r\n%s" % (path, query, version, auth, extra, framing, body)
    if kind == "auth":
        key = draw(st.sampled_from([APP.server_key, "wrong", ""]))
        return b"GET /auth?server_key=%s HTTP/%s\r\nHost: x\r\n%s\r\n" % (key.encode(), version, extra)
    method, path = draw(
        st.sampled_from(
            [
                (b"GET", b"/health"),
                (b"GET", b"/ready"),
                (b"GET", b"/nothing-here"),
                (b"GET", b"/groups/ib1"),
                (b"GET", b"/presence/ib1/u1"),
                (b"GET", b"/sendmessage"),
                (b"DELETE", b"/sendmessages"),
                (b"GET", b"/groups/%FF"),
            ]
        )
    )
    return b"%s %s HTTP/%s\r\nHost: x\r\n%s%s\r\n" % (method, path, version, auth, extra)


#: Hostile endings both paths refuse (status >= 400 and the connection closed).
BOTH_REFUSE = {
    "duplicate Content-Length": b"POST /sendmessage HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
    "Content-Length and chunked": b"POST /sendmessage HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "declared body too large": b"POST /sendmessage HTTP/1.1\r\nContent-Length: 99999\r\n\r\n",
    "bad chunk size": b"POST /sendmessage HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "header over 64 KiB": b"GET /health HTTP/1.1\r\nX-Big: " + b"v" * 70_000 + b"\r\n\r\n",
    "space in a field name": b"GET /health HTTP/1.1\r\nBad Header: x\r\n\r\n",
    "garbage": b"\x00\x01\x02 garbage\r\n\r\n",
}
#: Hostile endings only the front refuses (twisted.web is more lenient: see the module's docstring).
FRONT_REFUSES = {
    "bare LF": b"GET /health HTTP/1.1\nHost: x\n\n",
    "obs-fold": b"GET /health HTTP/1.1\r\nX-Folded: a\r\n b\r\n\r\n",
    "target over 8 KiB": b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n",
    "HTTP/2.0 over HTTP/1": b"POST /sendmessage HTTP/2.0\r\nContent-Length: 2\r\n\r\n{}",
}
#: Hostile endings only twisted.web refuses: heads between its 16 KiB and the front's 64 KiB.
TWISTED_REFUSES = {
    "head of 40 KiB": b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 2000) for i in range(20)) + b"\r\n",
}
ENDINGS = {**BOTH_REFUSE, **FRONT_REFUSES, **TWISTED_REFUSES}


def read(data: bytes) -> list[Response]:
    answers = responses(data)
    if data.endswith(TWISTED_400):
        answers.append(Response(400, [], b""))
    return answers


def comparable(answer: Response) -> tuple[Any, ...]:
    headers = tuple((name, answer.header(name)) for name in COMPARED)
    try:
        body: Any = json.loads(answer.body) if answer.body else None
    except ValueError:
        body = answer.body
    if isinstance(body, dict) and "access_token" in body:
        body = sorted(body)  # (the token itself is the same; its expiry may differ by a clock tick)
    return answer.status, headers, without_ids(body)


def without_ids(body: Any) -> Any:
    """A send's answer with its message ids (``"id"``, also in a batch's results) as "N": each set-up's hub numbers from its start time."""
    if isinstance(body, dict):
        return {k: "N" if k == "id" and isinstance(v, int) and v > 0 else without_ids(v) for k, v in body.items()}
    if isinstance(body, list):
        return [without_ids(v) for v in body]
    return body


def feed(engine: str, stream: bytes, cuts: list[int]) -> tuple[list[Response], bool, list[bytes]]:
    setup = Setup(engine=engine)
    proto, transport = setup.connect()
    at = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        if transport.disconnecting:
            break
        if cut > at:
            proto.dataReceived(stream[at:cut])
            at = cut
        setup.clock.advance(0.6)  # (a look-up of an unknown server key waits for the next look-up slot)
    for _ in range(12):  # (twisted.web answers pipelined requests one at a time: each may wait for a look-up slot)
        setup.clock.advance(0.5)
    setup.stop()
    return read(transport.value()), bool(transport.disconnecting), setup.recorder.plaintexts()


class DifferentialTests(SynchronousTestCase):
    @settings(FUZZ, max_examples=examples(1000))
    @given(st.lists(requests(), min_size=1, max_size=5), st.lists(st.integers(0, 4000), max_size=8))
    def test_well_formed_streams_get_the_same_answers(self, reqs: list[bytes], cuts: list[int]) -> None:
        """Pipelined well-formed requests, hot and cold, any framing, cut anywhere: the same answers in the same order and the same deliveries."""
        stream = b"".join(reqs)
        ours = feed("front", stream, [c % (len(stream) + 1) for c in cuts])
        reference = feed("twisted", stream, [c % (len(stream) + 1) for c in cuts])
        self.assertEqual([comparable(a) for a in ours[0]], [comparable(a) for a in reference[0]], stream)
        self.assertEqual(ours[1], reference[1], "closing")
        self.assertEqual(ours[2], reference[2], "deliveries")

    @settings(FUZZ, max_examples=examples(500))
    @given(st.lists(requests(), max_size=3), st.sampled_from(sorted(ENDINGS)), st.lists(st.integers(0, 80000), max_size=6))
    def test_hostile_endings_are_refused(self, reqs: list[bytes], name: str, cuts: list[int]) -> None:
        """Well-formed requests then a hostile part: the same answers before it; each path refuses it (4xx/5xx, closed) or not, as documented."""
        stream = b"".join(reqs) + ENDINGS[name]
        cuts = [c % (len(stream) + 1) for c in cuts]
        ours, ours_closing, ours_got = feed("front", stream, cuts)
        reference, reference_closing, reference_got = feed("twisted", stream, cuts)
        if any(b"Connection: close" in r or r.split(b"\r\n", 1)[0].endswith(b"HTTP/1.0") for r in reqs):
            return  # the connection ends before the hostile part (the other test covers that)
        self.assertEqual([comparable(a) for a in ours[:-1]], [comparable(a) for a in reference[: len(ours) - 1]], name)
        self.assertEqual(ours_got, reference_got, name)
        if name in TWISTED_REFUSES:
            self.assertEqual(ours[-1].status, 200, name)
            self.assertEqual(reference[-1].status, 400, name)
            return
        self.assertGreaterEqual(ours[-1].status, 400, name)
        self.assertTrue(ours_closing, name)
        if name in BOTH_REFUSE:  # (twisted.web answers 400, or closes without a word past its line limit)
            self.assertTrue(reference_closing, name)
            if len(reference) == len(ours):
                self.assertGreaterEqual(reference[-1].status, 400, name)
            else:
                self.assertEqual(len(reference), len(ours) - 1, name)

    @settings(FUZZ, max_examples=examples(1000))
    @given(st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=5))
    def test_random_bytes_never_break_the_front(self, data: bytes, cuts: list[int]) -> None:
        """Random bytes after a good send: the send is answered first; nothing raises; the front refuses or waits."""
        body = doc("nobody", "x")
        good = b"POST /sendmessage HTTP/1.1\r\nAuthorization: Bearer %s\r\nContent-Length: %d\r\n\r\n%s" % (TOKEN.encode(), len(body), body)
        stream = good + data
        answers, _, _ = feed("front", stream, [len(good) + c % (len(data) + 1) for c in cuts])
        self.assertGreaterEqual(len(answers), 1)
        self.assertEqual(answers[0].status, 200)
        self.assertTrue(all(a.status in (200, 400, 401, 404, 405, 413, 414, 431, 501, 505) or a.status < 200 for a in answers), answers)
