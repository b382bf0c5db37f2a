"""Group membership, group routing in the hub, TTL and member-list parsing, and the SQLite store's groups and kept messages."""

from __future__ import annotations

import tempfile

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pns4ones.groups import GroupError, Membership, parse_ttl, parse_user_ids
from pns4ones.hub import Outbound
from pns4ones.hub.local import LocalHub
from pns4ones.hub.testing import RecordingSession
from pns4ones.messages import Message, Notification, Recipient, parse_addin_json, render_addin_json
from pns4ones.store import KeptMessage
from pns4ones.store.sqlite import SQLiteStore


def session(user_id: str, group: str = "", ib_id: str = "ib", app_id: str = "a") -> RecordingSession:
    return RecordingSession(user_id, (group,) if group else (), ib_id, app_id)


class MembershipTests(SynchronousTestCase):
    def test_replace_add_remove_keep_both_indexes_exact(self) -> None:
        """Replace, add, remove and drop keep members() and groups_of() the exact reverse of each other, with no empty groups."""
        m = Membership()
        m.replace("a", "ib", "g", ["u1", "u2"])
        self.assertEqual(m.add("a", "ib", "g", ["u2", "u3"]), 1)
        m.replace("a", "ib", "h", ["u1"])
        self.assertEqual(set(m.members("a", "ib", "g")), {"u1", "u2", "u3"})
        self.assertEqual(set(m.groups_of("a", "ib", "u1")), {"g", "h"})
        self.assertTrue(m.remove("a", "ib", "h", "u1"))
        self.assertFalse(m.remove("a", "ib", "h", "u1"))
        self.assertEqual(m.groups("a", "ib"), {"g": 3})
        m.replace("a", "ib", "g", ["u3"])
        self.assertEqual(set(m.groups_of("a", "ib", "u1")), set())
        self.assertEqual(m.drop_group("a", "ib", "g"), 1)
        self.assertEqual((m.groups("a", "ib"), m.group_count("a")), ({}, 0))
        self.assertEqual(m.members("b", "ib", "g"), frozenset())

    def test_group_recipients_each_session_once(self) -> None:
        """The hub's group recipients are member sessions plus group-registered sessions, each once, in this IbId and application only."""
        m = Membership()
        hub = LocalHub(m.members)
        m1a, m1b, both, reg, other = (
            session("m1"),
            session("m1"),
            session("m2", group="g"),
            session("x", group="g"),
            session("o"),
        )
        elsewhere, other_app = session("m1", ib_id="ib2"), session("m1", app_id="b")
        for s in (m1a, m1b, both, reg, other, elsewhere, other_app):
            hub.attach(s)
        m.replace("a", "ib", "g", ["m1", "m2", "offline"])
        report = hub.route("a", Recipient("group", "ib", group="g"), Outbound(Message("t")))
        self.assertEqual((report.sessions, report.users, set(report.reached)), (4, 3, {"m1", "m2", "x"}))
        self.assertEqual([len(s.got) for s in (m1a, m1b, both, reg, other, elsewhere, other_app)], [1, 1, 1, 1, 0, 0, 0])
        # More members than users: the other side is walked, same answer.
        m.add("a", "ib", "g", [f"n{i}" for i in range(100)])
        self.assertEqual(set(hub.recipients("a", Recipient("group", "ib", group="g"))), {m1a, m1b, both, reg})


class ParsingTests(SynchronousTestCase):
    def test_ttl_bounds(self) -> None:
        """A TTL is a finite number (or numeric string) between 0 and max_ttl; anything else is a 400."""
        self.assertEqual(parse_ttl(60, 100), 60.0)
        self.assertEqual(parse_ttl("0.5", 100), 0.5)
        for bad in ("x", -1, 101, True, None, [1], float("inf"), "nan"):
            with self.assertRaises(GroupError) as caught:
                parse_ttl(bad, 100)
            self.assertEqual(caught.exception.status, 400, bad)

    def test_user_ids(self) -> None:
        """UserIds: case-insensitive member, strings only, non-empty, deduplicated in order, 413 over the size bound."""
        self.assertEqual(parse_user_ids({"userIDs": ["b", "a", "b"]}, 3), ["b", "a"])
        for doc, status in (
            ([], 400),
            ({}, 400),
            ({"UserIds": "a"}, 400),
            ({"UserIds": [1]}, 400),
            ({"UserIds": [""]}, 400),
            ({"UserIds": ["x" * 2000]}, 400),
            ({"UserIds": list("abcd")}, 413),
        ):
            with self.assertRaises(GroupError) as caught:
                parse_user_ids(doc, 3)
            self.assertEqual(caught.exception.status, status, doc)

    def test_stored_message_round_trip(self) -> None:
        """A kept message read back renders to the same add-in bytes, emoji and Cyrillic included."""
        message = Message("Тема 😀", Notification("Заголовок", "", "", "e1cib/x", True), {"k": 'v "q"'})
        plaintext = render_addin_json(message)
        self.assertEqual(render_addin_json(parse_addin_json(plaintext)), plaintext)


class StoreTests(TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.store = SQLiteStore(tmp.name)
        self.addCleanup(self.store.close)

    def kept(self, app: str, kind: str, target: str, topic: str, now: float = 100.0, ttl: float = 50.0) -> KeptMessage:
        return KeptMessage(app, "ib", kind, target, render_addin_json(Message(topic)), now, now + ttl)

    @inlineCallbacks
    def test_kept_messages_in_order_once_with_bounds_and_expiry(self) -> None:
        """take_kept gives unexpired messages for the user in send order once; bounds drop the oldest; purge counts expired ones."""
        app = (yield self.store.create_application("t", 0.0)).id
        for i in range(4):
            outcome = yield self.store.keep_message(self.kept(app, "user", "u1", f"m{i}"), [], 3, 100)
        self.assertEqual((outcome.dropped_user, outcome.dropped_app), (1, 0))
        yield self.store.keep_message(self.kept(app, "group", "g", "g1"), ["u2"], 3, 100)
        yield self.store.keep_message(self.kept(app, "all", "", "all", ttl=1.0), [], 3, 100)
        topics = lambda payloads: [parse_addin_json(p).topic for p in payloads]  # noqa: E731
        got = yield self.store.take_kept(app, "ib", "u1", ["g"], 100.5)
        self.assertEqual(topics(got), ["m1", "m2", "m3", "g1", "all"])
        self.assertEqual((yield self.store.take_kept(app, "ib", "u1", ["g"], 100.5)), [])
        self.assertEqual(topics((yield self.store.take_kept(app, "ib", "u2", ["g"], 100.5))), ["all"])  # got g1 live
        self.assertEqual((yield self.store.take_kept(app, "ib", "u3", [], 101.5)), [])  # "all" expired
        self.assertEqual((yield self.store.purge_kept(101.5)), 1)
        counts = yield self.store.kept_counts()
        self.assertEqual([(c.kept, c.dropped, c.expired) for c in counts], [(1, 1, 1)])
        snapshot = yield self.store.snapshot()
        self.assertEqual(snapshot.kept_ibs, frozenset({(app, "ib")}))

    @inlineCallbacks
    def test_groups_round_trip(self) -> None:
        """Group edits are stored per application and come back in the snapshot."""
        app = (yield self.store.create_application("t", 0.0)).id
        yield self.store.set_group(app, "ib", "Группа", ["u1", "u2"], 1.0)
        self.assertEqual((yield self.store.add_group_members(app, "ib", "Группа", ["u2", "u3"], 2.0)), 1)
        self.assertEqual((yield self.store.remove_group_member(app, "ib", "Группа", "u1")), 1)
        self.assertEqual((yield self.store.list_groups(app)), [("ib", "Группа", 2)])
        self.assertEqual((yield self.store.group_members(app, "ib", "Группа")), ["u2", "u3"])
        snapshot = yield self.store.snapshot()
        self.assertEqual(sorted(snapshot.memberships), [(app, "ib", "Группа", "u2"), (app, "ib", "Группа", "u3")])
        self.assertEqual((yield self.store.remove_group(app, "ib", "Группа")), 2)
        yield self.store.remove_application(app)
