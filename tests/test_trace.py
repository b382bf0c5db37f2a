"""
The delivery trace (pns4ones.trace) on its own, and fed by the send API's
handlers in process: bounds, filters, no bodies unless asked, the answer's id.
"""

from __future__ import annotations

import json
import re
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pns4ones import trace as _trace
from pns4ones.http.calls import Answer, Call
from pns4ones.hub import Delivery
from pns4ones.messages import Message, Notification, Recipient, SendRequest
from pns4ones.trace import Query, Trace, UserGroups, as_json, render, report

from .http_support import TOKEN, Setup


def send(kind: str = "user", ib: str = "ib1", target: str = "u1", topic: str = "t", title: str = "", body: str = "") -> SendRequest:
    recipient = Recipient(kind, ib, target if kind == "user" else "", target if kind == "group" else "")
    note = Notification(title=title, body=body) if title or body else None
    return SendRequest(recipient, Message(topic, note))


def delivered(*users: str, sessions: int | None = None, stored: bool = False, dropped: int = 0, message_id: int = 7) -> Delivery:
    return Delivery(len(users) if sessions is None else sessions, len(users), stored, dropped, message_id, set(users))


class RecordTests(SynchronousTestCase):
    def test_bounded_newest_first(self) -> None:
        """A trace of 3 keeps the newest 3 of 5 sends, newest first, numbered 3..5; the older ones are gone."""
        t = Trace(3)
        for i in range(1, 6):
            t.sent(100.0 + i, "api", "192.0.2.1", "app", send(topic=f"t{i}"), 0.0, delivered("u1", message_id=i))
        self.assertEqual(len(t), 3)
        self.assertEqual(t.recorded, 5)
        self.assertEqual([(s.seq, s.topic, s.message_id, s.at) for s in t], [(5, "t5", 5, 105.0), (4, "t4", 4, 104.0), (3, "t3", 3, 103.0)])
        self.assertIsNone(t.find(2))
        self.assertIsNone(t.find(6))
        found = t.find(4)
        assert found is not None
        self.assertEqual(found.topic, "t4")

    def test_size_zero_records_nothing(self) -> None:
        """trace_size = 0: nothing is recorded, nothing is found."""
        t = Trace(0)
        t.sent(1.0, "api", "p", "app", send(), 0.0, delivered("u1"))
        self.assertEqual((len(t), t.recorded, list(t), t.find(1)), (0, 0, [], None))

    def test_fields_as_given(self) -> None:
        """A record holds the time, source, peer, application, recipient, topic, TTL and outcome as given (time passed in)."""
        t = Trace()
        t.sent(
            1234.5, "batch", "203.0.113.7", "app", send("group", "ib9", "g1", "news"), 600.0, delivered("a", "b", stored=True, dropped=2)
        )
        (s,) = list(t)
        self.assertEqual(
            (s.at, s.source, s.peer, s.app_id, s.recipient, s.topic, s.ttl, s.sessions, s.users, s.stored, s.dropped, s.expires_at),
            (1234.5, "batch", "203.0.113.7", "app", Recipient("group", "ib9", "", "g1"), "news", 600.0, 2, 2, True, 2, 1834.5),
        )
        self.assertEqual(sorted(s.reached or ()), ["a", "b"])

    def test_no_bodies_unless_asked(self) -> None:
        """Without trace_bodies nothing of the title or text is held; with it, the add-in JSON, cut at BODY_CHARS."""
        t = Trace()
        t.sent(1.0, "api", "p", "app", send(title="Secret title", body="Secret text"), 0.0, delivered("u1"))
        (s,) = list(t)
        self.assertIsNone(s.body)
        self.assertNotIn("Secret", repr(list(t._records)))
        self.assertNotIn("body", as_json(s))
        t = Trace(bodies=True)
        t.sent(1.0, "api", "p", "app", send(title="Заголовок", body="x" * 5000), 0.0, delivered("u1"))
        t.sent(2.0, "api", "p", "app", send(title="short"), 0.0, delivered("u1"))
        short, long = list(t)
        assert long.body is not None
        self.assertEqual(len(long.body), _trace.BODY_CHARS)
        self.assertTrue(long.body.startswith('{"topic": "t", "notification": {"title": "Заголовок"'))
        self.assertTrue(long.body.endswith("…"))
        self.assertEqual(short.body, '{"topic": "t", "notification": {"title": "short", "important": false}}')
        self.assertEqual(as_json(short)["body"], short.body)

    def test_users_reached_held_not_copied(self) -> None:
        """A send's users reached are the hub's own set, not a copy (recording copies nothing)."""
        t = Trace()
        d = delivered("u1", "u2")
        t.sent(1.0, "api", "p", "app", send("all"), 0.0, d)
        (s,) = list(t)
        self.assertIs(s.reached, d.reached)

    def test_users_of_large_sends_within_budget(self) -> None:
        """Large sends' users count against the budget: past it the oldest large send keeps its counts only; small sends stay."""
        t = Trace(budget=250)
        many = [f"u{i}" for i in range(100)]
        for n in range(3):
            t.sent(float(n), "api", "p", "app", send("all"), 0.0, delivered(*many, message_id=n + 1))
            t.sent(float(n), "api", "p", "app", send("user", target="u5"), 0.0, delivered("u5", message_id=10 + n))
        by_id = {s.message_id: s for s in t}
        self.assertIsNone(by_id[1].reached)
        self.assertEqual((by_id[1].sessions, by_id[1].users), (100, 100))
        self.assertEqual(len(by_id[2].reached or ()), 100)
        self.assertEqual(len(by_id[3].reached or ()), 100)
        self.assertEqual([by_id[i].reached for i in (10, 11, 12)], [{"u5"}] * 3)
        self.assertEqual(by_id[1].outcome_for("u7", ()), "unknown")
        self.assertEqual(by_id[2].outcome_for("u7", ()), "reached")
        huge = Trace(budget=50)
        huge.sent(1.0, "api", "p", "app", send("all"), 0.0, delivered(*many))
        self.assertIsNone(next(iter(huge)).reached)


class FilterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.t = Trace()
        add = self.t.sent
        add(1.0, "api", "p", "app", send("user", "ib1", "u1"), 0.0, delivered("u1", message_id=1))
        add(2.0, "api", "p", "app", send("user", "ib1", "u2"), 0.0, delivered("u2", message_id=2))
        add(3.0, "api", "p", "app", send("group", "ib1", "staff"), 0.0, delivered("u2", message_id=3))  # u1: member, offline
        add(4.0, "api", "p", "app", send("group", "ib1", "desk"), 0.0, delivered("u1", message_id=4))  # u1: registered with it
        add(5.0, "api", "p", "app", send("group", "ib1", "other"), 0.0, delivered("u3", message_id=5))
        add(6.0, "api", "p", "app", send("all", "ib1"), 60.0, delivered(stored=True, message_id=6))  # nobody online
        add(7.0, "api", "p", "app", send("all", "ib2"), 0.0, delivered("u9", message_id=7))
        add(8.0, "panel", "127.0.0.1", "app2", send("user", "ib1", "u1"), 0.0, delivered(message_id=8))
        self.groups = {("app", "ib1", "u1"): {"staff"}}

    def ids(self, query: Query) -> list[int]:
        return [s.message_id for s in self.t.select(query, lambda a, i, u: self.groups.get((a, i, u), ()))]

    def test_by_information_base_application_and_id(self) -> None:
        """Filters by information base, application and message id; an empty query matches every send."""
        self.assertEqual(self.ids(Query()), [8, 7, 6, 5, 4, 3, 2, 1])
        self.assertEqual(self.ids(Query(ib="ib2")), [7])
        self.assertEqual(self.ids(Query(app_id="app2")), [8])
        self.assertEqual(self.ids(Query(message_id=4)), [4])
        self.assertEqual(self.ids(Query(message_id=99)), [])

    def test_a_users_sends(self) -> None:
        """A user's sends: to him, to groups he belongs to or that reached him, to everyone of his base (named); not others'."""
        self.assertEqual(self.ids(Query(ib="ib1", user="u1")), [8, 6, 4, 3, 1])
        self.assertEqual(self.ids(Query(app_id="app", ib="ib1", user="u1")), [6, 4, 3, 1])
        self.assertEqual(self.ids(Query(user="u1")), [8, 4, 3, 1], "without a base: sends to everyone only when they reached him")
        self.assertEqual(self.ids(Query(user="u9")), [7])

    def test_pages(self) -> None:
        """page(): how many match, and only the records of the page asked for, newest first."""
        groups_of = lambda a, i, u: self.groups.get((a, i, u), ())  # noqa: E731
        self.assertEqual(
            [(n, [s.message_id for s in page]) for n, page in [self.t.page(Query(ib="ib1"), groups_of, 2, 3)]], [(7, [5, 4, 3])]
        )
        total, page = self.t.page(Query(ib="ib1", user="u1"), groups_of, 4, 10)
        self.assertEqual((total, [s.message_id for s in page]), (5, [1]))
        self.assertEqual(self.t.page(Query(), groups_of, 100, 10), (8, []))

    def test_what_a_send_did_for_a_user(self) -> None:
        """Reached, not connected (kept for him or not), not a member of the group; why a send reached nobody."""
        by_id = {s.message_id: s for s in self.t}
        staff = {"staff"}
        self.assertEqual(by_id[1].outcome_for("u1", staff), "reached")
        self.assertEqual(by_id[3].outcome_for("u1", staff), "offline")
        self.assertEqual(by_id[5].outcome_for("u1", staff), "not-member")
        self.assertEqual(by_id[6].outcome_for("u1", staff), "offline")
        self.assertTrue(by_id[6].kept_for("u1", staff))
        self.assertFalse(by_id[3].kept_for("u1", staff))
        self.assertEqual(by_id[8].why_none(), "user-offline")
        self.assertEqual(by_id[6].why_none(), "ib-empty")
        self.assertEqual(by_id[1].why_none(), "")
        empty_group = Trace()
        empty_group.sent(1.0, "api", "p", "app", send("group", "ib1", "g"), 0.0, delivered())
        self.assertEqual(next(iter(empty_group)).why_none(), "group-offline")

    def test_user_groups_now(self) -> None:
        """A user's groups: the server-side membership and the groups his live sessions registered with, sessions read once per base."""
        reads: list[tuple[str, str]] = []

        class Live:
            def __init__(self, *groups: str) -> None:
                self.groups = groups

        def sessions(app_id: str, ib_id: str) -> dict[str, list[Live]]:
            reads.append((app_id, ib_id))
            return {"u1": [Live("desk"), Live()], "u2": [Live("x")]}

        groups_of = UserGroups(lambda a, i, u: {"staff"} if u == "u1" else set(), sessions)
        self.assertEqual(groups_of("app", "ib1", "u1"), {"staff", "desk"})
        self.assertEqual(groups_of("app", "ib1", "u2"), {"x"})
        self.assertEqual(groups_of("app", "ib1", "u3"), set())
        self.assertEqual(reads, [("app", "ib1")])
        self.assertIn(4, [s.message_id for s in self.t.select(Query(user="u1"), groups_of)])

    def test_report_and_render(self) -> None:
        """/trace.json's document: node, bounds, matched, newest first up to the limit, what it did for the user; the CLI's text of it."""
        doc = report(self.t, Query(ib="ib1", user="u1"), lambda a, i, u: {"staff"}, 2, "node-a:36696", {"app": "Shop"})
        self.assertEqual((doc["node"], doc["size"], doc["held"], doc["recorded"], doc["matched"]), ("node-a:36696", 5000, 8, 8, 5))
        self.assertEqual([s["id"] for s in doc["sends"]], [8, 6])
        six = doc["sends"][1]
        self.assertEqual(
            {k: six[k] for k in ("type", "ib", "sessions", "users", "stored", "expires_at", "why", "app", "for_user")},
            {
                "type": "all",
                "ib": "ib1",
                "sessions": 0,
                "users": 0,
                "stored": True,
                "expires_at": 66.0,
                "why": "ib-empty",
                "app": "Shop",
                "for_user": {"user": "u1", "outcome": "offline", "kept": True},
            },
        )
        json.dumps(doc)
        text = render(doc)
        self.assertIn("node node-a:36696: 2 of 5 matching sends", text)
        self.assertIn("every node keeps its own trace", text)
        self.assertIn("reached 0 sessions, 0 users: nobody was connected to this information base; kept for offline users until", text)
        self.assertIn("for u1: not connected; he gets the kept copy when he connects", text)
        self.assertIn("(2 of 5; --limit N for more)", text)
        self.assertIn("trace is off", render(report(Trace(0), Query(), lambda a, i, u: (), 10, "n", {})))
        self.assertIn("no matching send", render(report(self.t, Query(message_id=99), lambda a, i, u: (), 10, "n", {})))


def call(path: bytes, body: bytes, peer: str = "198.51.100.4") -> Call:
    return Call(b"POST", path, b"", f"Bearer {TOKEN}".encode(), body, peer, False)


def doc(recipient: dict[str, str], topic: str = "t", **message: Any) -> dict[str, Any]:
    return {"Recipient": {"IbId": "ib1", **recipient}, "Message": {"Topic": topic, **message}}


class HandlerTests(SynchronousTestCase):
    """The send API's handlers record every send and answer with the id that finds it."""

    def setUp(self) -> None:
        self.setup = Setup()
        self.trace = self.setup.core.trace = Trace(100)
        self.handlers = self.setup.handlers

    def answer(self, c: Call, route: Any) -> Answer:
        result = self.handlers.answer(route, c)
        assert isinstance(result, Answer)
        return result

    def test_sendmessage_answer_id_finds_the_record(self) -> None:
        """/sendmessage answers "id" (and X-Pns-Id); the trace's record under that id has the peer, recipient and what it reached."""
        body = json.dumps(doc({"Type": "user", "UserId": "u1"}, "hello")).encode()
        answer = self.answer(call(b"/sendmessage", body), self.handlers.sendmessage)
        got = json.loads(answer.body)
        self.assertEqual(set(got), {"sessions", "users", "stored", "id"})
        self.assertGreater(got["id"], 0)
        self.assertIn((b"X-Pns-Id", b"%d" % got["id"]), answer.headers)
        (sent,) = self.trace.select(Query(message_id=got["id"]))
        self.assertEqual(
            (sent.source, sent.peer, sent.recipient.user_id, sent.topic, sent.sessions, sent.users, sent.at),
            ("api", "198.51.100.4", "u1", "hello", 1, 1, self.setup.clock.seconds()),
        )
        self.assertEqual(self.setup.recorder.ids(), [got["id"]])

    def test_batch_elements_recorded_each_with_its_id(self) -> None:
        """Each good element of /sendmessages is recorded as "batch" under the id of its result; a refused element is not."""
        body = json.dumps(
            [
                doc({"Type": "user", "UserId": "u1"}, "b1"),
                {"Recipient": 1},
                doc({"Type": "all"}, "b2"),
                doc({"Type": "user", "UserId": "nobody"}, "b3"),
            ]
        ).encode()
        answer = self.answer(call(b"/sendmessages", body), self.handlers.sendmessages)
        results = json.loads(answer.body)["results"]
        self.assertEqual([r["status"] for r in results], [200, 400, 200, 200])
        self.assertNotIn("id", results[1])
        ids = [results[i]["id"] for i in (0, 2, 3)]
        self.assertEqual(len(set(ids)), 3)
        self.assertEqual(
            [(s.message_id, s.source, s.topic, s.sessions) for s in self.trace][::-1],
            [(ids[0], "batch", "b1", 1), (ids[1], "batch", "b2", 1), (ids[2], "batch", "b3", 0)],
        )

    def test_refused_sends_not_recorded(self) -> None:
        """A bad body or a bad token is answered 400/401 and leaves no record."""
        self.assertEqual(self.answer(call(b"/sendmessage", b"{bad"), self.handlers.sendmessage).status, 400)
        bad_token = Call(b"POST", b"/sendmessage", b"", b"Bearer nope", b"{}", "p", False)
        self.assertEqual(self.handlers.answer(self.handlers.sendmessage, bad_token).addCallback(lambda a: a.status).result, 401)  # type: ignore[union-attr]
        self.assertEqual(len(self.trace), 0)


class CatalogTests(SynchronousTestCase):
    def test_trace_texts_in_both_languages(self) -> None:
        """Every text of the Trace pages, also those named by a value (reasons, outcomes, sources), is in both catalogs."""
        from pathlib import Path

        from pns4ones.admin import i18n

        catalogs = i18n.load_catalogs()
        package = Path(i18n.__file__).parent
        used = {"nav.trace", "trace.unknown", "trace.outcome.kept"}
        for name in ("trace.html", "trace_send.html", "_trace.html"):
            used |= set(re.findall(r"t\('(trace\.[a-z0-9_.-]+)'", (package / "templates" / name).read_text()))
        used = {k for k in used if not k.endswith(".")}
        used |= {f"trace.why.{code}" for code in ("user-offline", "group-offline", "ib-empty")}
        used |= {f"trace.outcome.{code}" for code in ("reached", "offline", "not-member", "unknown")}
        used |= {f"trace.source.{source}" for source in _trace.SOURCES}
        self.assertEqual({k for k in _trace.REASONS if k not in ("reached",)} - {k.split(".")[-1] for k in used}, set())
        self.assertGreater(len(used), 40)
        for lang in ("ru", "en"):
            self.assertEqual(sorted(used - set(catalogs[lang])), [], lang)
