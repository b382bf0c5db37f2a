"""
The send API's handlers (pns4ones.http.handlers) called with plain Calls, the
core's token resolution and /auth look-up, and the Klein routes through treq's
StubTreq (no sockets): fast tests beside the real-process ones.
"""

from __future__ import annotations

import json
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from pns4ones.core import SERVER_KEY_LOOKUP_INTERVAL, AuthError
from pns4ones.http.calls import Answer, Call
from pns4ones.http.handlers import ApiError, error_answer
from pns4ones.http.resources import SendAPI
from pns4ones.store import Application, StoreUnavailable
from pns4ones.wire import ClientKey

from .http_support import APP, OTHER_TOKEN, TOKEN, Setup

SEND = json.dumps({"Recipient": {"Type": "user", "IbId": "ib1", "UserId": "u1"}, "Message": {"Topic": "t"}}).encode()


def call(method: bytes = b"POST", path: bytes = b"/sendmessage", body: bytes = SEND, token: str = TOKEN, query: bytes = b"") -> Call:
    return Call(method, path, query, f"Bearer {token}".encode() if token else b"", body, "192.0.2.1", False)


def settled(result: Answer | Deferred[Answer]) -> Answer:
    if isinstance(result, Answer):
        return result
    box: list[Answer] = []
    result.addCallback(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


class HandlerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.setup = Setup()
        self.handlers = self.setup.handlers

    def answer(self, c: Call, route: Any = None) -> Answer | Deferred[Answer]:
        return self.handlers.answer(route or self.handlers.sendmessage, c)

    def test_send_with_a_known_token_is_answered_at_once(self) -> None:
        """A token in memory and the in-process hub: the answer is a value (no Deferred), 200, delivered, in twisted.web's JSON."""
        result = self.answer(call())
        self.assertIsInstance(result, Answer)
        assert isinstance(result, Answer)
        self.assertEqual(result.status, 200)
        (message_id,) = self.setup.recorder.ids()
        self.assertEqual(result.body, json.dumps({"sessions": 1, "users": 1, "stored": False, "id": message_id}).encode())
        self.assertEqual(result.headers[:3], ((b"X-Pns-Sessions", b"1"), (b"X-Pns-Users", b"1"), (b"X-Pns-Id", b"%d" % message_id)))
        self.assertEqual(self.setup.recorder.plaintexts(), [b'{"topic": "t"}'])

    def test_token_only_the_store_knows(self) -> None:
        """A token another node issued: a Deferred, then 200; the next send with it is answered at once."""
        result = self.answer(call(token=OTHER_TOKEN))
        self.assertIsInstance(result, Deferred)
        self.assertEqual(settled(result).status, 200)
        self.assertIsInstance(self.answer(call(token=OTHER_TOKEN)), Answer)

    def test_credentials_come_before_the_body(self) -> None:
        """No token, a bad token, an expired one: 401, 401 (after one look-up), 403, whatever the body; a bad body with a good token: 400."""
        self.assertEqual(settled(self.answer(call(token="", body=b"{bad"))).status, 401)
        self.assertEqual(json.loads(settled(self.answer(call(token="nope", body=b"{bad"))).body)["error"], "unauthorized")
        self.assertIsInstance(self.answer(call(token="nope")), Answer, "known to be absent now: refused from memory")
        self.setup.clock.advance(5_000_000_000)
        expired = settled(self.answer(call(body=b"{bad")))
        self.assertEqual((expired.status, json.loads(expired.body)["error"]), (403, "token_expired"))
        self.setup.clock.advance(-5_000_000_000)
        bad = settled(self.answer(call(body=b"{bad")))
        self.assertEqual((bad.status, json.loads(bad.body)["error"]), (400, "bad_request"))

    def test_rate_limit(self) -> None:
        """Over send_rate_limit: 429 with Retry-After, charged per message of a batch."""
        from pns4ones.http.handlers import Handlers

        handlers = Handlers(self.setup.core, log_sends=False, send_rate_limit=2)
        batch = b"[" + b",".join([SEND] * 3) + b"]"
        self.assertEqual(settled(handlers.answer(handlers.sendmessages, call(path=b"/sendmessages", body=batch))).status, 200)
        limited = settled(handlers.answer(handlers.sendmessage, call()))
        self.assertEqual(limited.status, 429)
        self.assertIn((b"Retry-After", b"1"), limited.headers)

    def test_error_map(self) -> None:
        """The one map: ApiError, AuthError, StoreUnavailable, anything else (500, logged)."""
        self.assertEqual(error_answer(ApiError(413, "too_large", "r", headers=((b"X-A", b"1"),))).headers[0], (b"X-A", b"1"))
        self.assertEqual(error_answer(AuthError(403, "old")).body, b'{"error": "token_expired", "reason": "old"}')
        unavailable = error_answer(StoreUnavailable("down"))
        self.assertEqual((unavailable.status, unavailable.headers[0]), (503, (b"Retry-After", b"5")))
        self.assertEqual(error_answer(ZeroDivisionError("boom"), call()).status, 500)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_a_failing_store_is_503(self) -> None:
        """The store cannot be asked about an unknown token: 503 store_unavailable with Retry-After, never a 401."""
        self.setup.store.get_token = lambda digest: fail(StoreUnavailable("the store is restarting"))  # type: ignore[method-assign]
        answer = settled(self.answer(call(token=OTHER_TOKEN)))
        self.assertEqual((answer.status, json.loads(answer.body)["error"]), (503, "store_unavailable"))

    def test_auth(self) -> None:
        """/auth: the current token at once for a known key; an unknown one is 401 after the next look-up slot."""
        known = self.handlers.answer(self.handlers.auth, call(b"GET", b"/auth", b"", "", b"server_key=" + APP.server_key.encode()))
        self.assertIsInstance(known, Answer)
        self.assertEqual(json.loads(settled(known).body)["access_token"], TOKEN)
        unknown = self.handlers.answer(self.handlers.auth, call(b"GET", b"/auth", b"", "", b"server_key=nope"))
        self.assertIsInstance(unknown, Deferred)
        self.setup.clock.advance(SERVER_KEY_LOOKUP_INTERVAL)
        self.assertEqual(settled(unknown).status, 401)


class ServerKeyLookupTests(SynchronousTestCase):
    def test_an_application_created_after_start_is_found(self) -> None:
        """A server key the node does not know is looked for in the store: an application created a moment ago gets a token."""
        setup = Setup()
        fresh = Application("fresh", "Fresh", "f" * 64, ClientKey.generate(), 1.0)
        setup.store.apps.append(fresh)
        issued = setup.core.authorize(fresh.server_key)
        assert isinstance(issued, Deferred)
        setup.clock.advance(0)
        box: list[Any] = []
        issued.addCallback(box.append)
        self.assertEqual(len(box), 1)
        self.assertEqual(setup.core.resolve_token(box[0].token).id, "fresh")

    def test_lookups_are_shared_and_spaced(self) -> None:
        """100 random keys at once cost one store query; more keys meanwhile wait for the next, at most one per interval."""
        setup = Setup()
        results: list[Any] = []
        for i in range(100):
            d = setup.core.authorize(f"random-{i}")
            assert isinstance(d, Deferred)
            d.addErrback(lambda f: results.append(f.value.status))
        setup.clock.advance(0)
        self.assertEqual((setup.store.lookups, results), (1, [401] * 100))
        for i in range(50):
            d = setup.core.authorize(f"more-{i}")
            assert isinstance(d, Deferred)
            d.addErrback(lambda f: results.append(f.value.status))
        setup.clock.advance(SERVER_KEY_LOOKUP_INTERVAL / 2)
        self.assertEqual(setup.store.lookups, 1)
        setup.clock.advance(SERVER_KEY_LOOKUP_INTERVAL / 2)
        self.assertEqual((setup.store.lookups, len(results)), (2, 150))


class KleinRouteTests(SynchronousTestCase):
    """The Klein routes adapt the same handlers (treq's StubTreq: the real client on the real resource, no sockets)."""

    def setUp(self) -> None:
        self.setup = Setup()
        self.treq = StubTreq(SendAPI(self.setup.handlers).resource())

    def request(self, method: str, path: str, body: bytes | None = None, token: str = TOKEN) -> tuple[int, dict[str, Any], Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = self.successResultOf(self.treq.request(method, "http://x" + path, data=body, headers=headers))
        content = self.successResultOf(response.content())
        return response.code, dict(response.headers.getAllRawHeaders()), json.loads(content) if content else None

    def test_send_and_health(self) -> None:
        """POST /sendmessage delivers and answers 200 with X-Pns-* headers; GET /health is 200."""
        code, headers, doc = self.request("POST", "/sendmessage", SEND)
        self.assertEqual((code, doc), (200, {"sessions": 1, "users": 1, "stored": False, "id": self.setup.recorder.ids()[0]}))
        self.assertEqual(headers[b"X-Pns-Sessions"], [b"1"])
        self.assertEqual(headers[b"X-Pns-Id"], [str(doc["id"]).encode()])
        self.assertEqual(self.setup.recorder.plaintexts(), [b'{"topic": "t"}'])
        self.assertEqual(self.request("GET", "/health")[:3:2], (200, {"status": "ok"}))

    def test_groups_round_trip(self) -> None:
        """PUT then GET a group (names percent-encoded, %2F kept inside a name), then DELETE a member."""
        code, _, doc = self.request("PUT", "/groups/ib1/a%2Fb", json.dumps({"UserIds": ["u1", "u2"]}).encode())
        self.assertEqual((code, doc["Group"], doc["members"]), (200, "a/b", 2))
        code, _, doc = self.request("GET", "/groups/ib1/a%2Fb")
        self.assertEqual(doc["UserIds"], ["u1", "u2"])
        code, _, doc = self.request("DELETE", "/groups/ib1/a%2Fb/members/u2")
        self.assertEqual((code, doc["UserIds"]), (200, ["u1"]))

    def test_routing_errors_in_json(self) -> None:
        """404 and 405 (with Allow) in the API's JSON shape; a path that is not UTF-8 is 400; a bad token 401."""
        self.assertEqual(
            self.request("GET", "/nothing-here")[::2], (404, {"error": "not_found", "reason": "no such resource: /nothing-here"})
        )
        code, headers, doc = self.request("GET", "/sendmessage")
        self.assertEqual((code, headers[b"Allow"], doc["error"]), (405, [b"POST"], "method_not_allowed"))
        self.assertEqual(self.request("GET", "/groups/%FF")[0], 400)
        code, _, doc = self.request("GET", "/groups/ib1", token="nope")
        self.setup.clock.advance(1)
        self.assertEqual((code, doc["error"]), (401, "unauthorized"))
