"""
Core.subscribe / Core.unsubscribe, in memory: the one way every transport joins
and leaves (kept messages, the replay, the hub attach, in order, once), and the
one answer of Core.send.  Fast: no process, no socket, time from a Clock.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pns4ones import wire
from pns4ones.core import Core
from pns4ones.groups import Membership
from pns4ones.hub import Delivery, Outbound, Replay, Session
from pns4ones.hub.local import LocalHub
from pns4ones.hub.testing import RecordingSession
from pns4ones.messages import Message, Recipient, SendRequest, parse_addin_json
from pns4ones.store import Application, KeptMessage, KeptOutcome, Snapshot

KEY = wire.ClientKey.generate()
APP = Application("app", "Test", "s" * 64, KEY, 0.0)


class KeptStore:
    """The kept-message part of a store, in memory, whose take_kept can be held back to test what happens meanwhile."""

    def __init__(self) -> None:
        self.kept: list[tuple[KeptMessage, set[str]]] = []
        self.paused: list[tuple[Deferred[list[bytes]], list[bytes]]] = []
        self.pause = False

    def keep_message(self, message: KeptMessage, received_by: list[str], max_per_user: int, max_per_app: int) -> Deferred[KeptOutcome]:
        self.kept.append((message, set(received_by)))
        return succeed(KeptOutcome(len(self.kept), 0, 0))

    def take_kept(self, app_id: str, ib_id: str, user_id: str, groups: list[str], now: float) -> Deferred[list[bytes]]:
        out = []
        for message, received in list(self.kept):
            if (message.app_id, message.ib_id) != (app_id, ib_id) or user_id in received or message.expires_at <= now:
                continue
            if message.type == "user" and message.target == user_id:
                self.kept.remove((message, received))
            elif not (message.type == "all" or (message.type == "group" and message.target in groups)):
                continue
            received.add(user_id)
            out.append(message.payload)
        if self.pause:
            d: Deferred[list[bytes]] = Deferred()
            self.paused.append((d, out))
            return d
        return succeed(out)

    def go(self) -> None:
        paused, self.paused = self.paused, []
        for d, out in paused:
            d.callback(out)


def topics(session: RecordingSession) -> list[str]:
    return [parse_addin_json(p).topic for p in session.plaintexts()]


class LifecycleBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = KeptStore()
        membership = Membership()
        self.hub = LocalHub(membership.members, self.clock, recovery_seconds=60, recovery_messages=100)
        self.core = Core(self.store, self.hub, self.clock, membership=membership)  # type: ignore[arg-type]
        self.core.apply_snapshot(Snapshot((APP,), ()))

    def send(self, topic: str, user: str | None = None, ttl: float = 0.0, kind: str = "user", group: str = "") -> Delivery:
        recipient = Recipient(kind, "ib", user_id=user or "" if kind == "user" else "", group=group)
        result = self.core.send(APP, SendRequest(recipient, Message(topic)), ttl)
        return result if isinstance(result, Delivery) else self.successResultOf(result)  # (at once without a TTL)

    def session(self, user: str, groups: tuple[str, ...] = ()) -> RecordingSession:
        return RecordingSession(user, groups, keys=KEY)


class SubscribeTests(LifecycleBase):
    def test_new_subscription_is_live_at_once(self) -> None:
        """Without kept messages a new subscription is attached and live in the same turn; the next send reaches it."""
        s = self.session("u1")
        self.assertIsNone(self.successResultOf(self.core.subscribe(s)))
        self.assertFalse(s.holding)
        self.assertEqual(len(self.hub), 1)
        self.assertEqual(self.send("live", "u1").sessions, 1)
        self.assertEqual(topics(s), ["live"])

    def test_kept_come_first_and_live_ones_wait(self) -> None:
        """Kept messages are written first, oldest first; live messages sent while they are read are held, then follow in order."""
        self.send("k1", "u1", ttl=60)
        self.send("k2", "u1", ttl=60)
        self.store.pause = True
        s = self.session("u1")
        joined = self.core.subscribe(s)
        self.assertNoResult(joined)
        self.assertTrue(s.holding)
        delivery = self.send("live1", "u1")
        self.assertEqual((delivery.sessions, delivery.stored), (1, False), "a joining session counts as reached: not kept again")
        self.assertEqual(s.got, [])
        self.store.go()
        self.successResultOf(joined)
        self.send("live2", "u1")
        self.assertEqual(topics(s), ["k1", "k2", "live1", "live2"])
        self.assertEqual([m.id for m in s.got[:2]], [0, 0], "kept messages carry no id")
        self.store.pause = False
        self.assertEqual(self.store.take_kept("app", "ib", "u1", [], self.clock.seconds()).result, [])

    def test_every_transport_gets_kept_messages(self) -> None:
        """The first session of a user gets the kept messages, whatever its transport; a second one does not get them again."""
        self.send("k", "u1", ttl=60)
        first, second = self.session("u1"), self.session("u1")
        first.transport_name = "ws"
        self.core.subscribe(first)
        self.core.subscribe(second)
        self.assertEqual((topics(first), topics(second)), (["k"], []))

    def test_group_kept_for_members_not_reached(self) -> None:
        """A group message kept for the members offline reaches a member who comes later, not one who was reached live."""
        self.core.membership.replace("app", "ib", "g", ["on", "off"])
        on = self.session("on")
        self.core.subscribe(on)
        self.assertTrue(self.send("g", kind="group", group="g", ttl=60).stored)
        again, off = self.session("on"), self.session("off")
        self.core.subscribe(again)
        self.core.subscribe(off)
        self.assertEqual((topics(on), topics(again), topics(off)), (["g"], [], ["g"]))

    def test_resume_gets_kept_once_with_its_id(self) -> None:
        """A web client resuming within the window gets a message kept meanwhile once: from the replay, with its id, not again as kept."""
        s = self.session("u1")
        self.core.subscribe(s)
        first = self.send("before", "u1")
        self.core.unsubscribe(s)
        self.send("kept", "u1", ttl=60)
        self.send("other", "u2")
        back = self.session("u1")
        self.core.subscribe(back, since=first.message_id)
        self.assertEqual(topics(back), ["kept"])
        self.assertGreater(back.got[0].id, first.message_id)
        self.assertEqual(back.catchups[0].kept, [])
        self.assertEqual(back.catchups[0].resume_id, self.hub.last_id)

    def test_resume_after_the_window_gets_kept_then_missed(self) -> None:
        """Resuming from before the window: "missed" with the floor, the kept messages older than the window, then what it holds."""
        hub = self.hub
        hub.recovery.limit = 2
        s = self.session("u1")
        self.core.subscribe(s)
        since = self.send("seen", "u1").message_id
        self.core.unsubscribe(s)
        self.send("old kept", "u1", ttl=60)
        for n in range(3):
            self.send(f"m{n}", kind="all")
        back = self.session("u1")
        self.core.subscribe(back, since=since)
        catchup = back.catchups[0]
        self.assertIsNotNone(catchup.missed)
        self.assertEqual(catchup.since, since)
        self.assertEqual(topics(back), ["old kept", "m1", "m2"])

    def test_server_side_member_gets_group_replay(self) -> None:
        """The replay applies the routing's rule: a group message reaches a member by server-side membership, not only by ticket groups."""
        self.core.membership.replace("app", "ib", "g", ["u1"])
        since = self.hub.last_id
        self.send("g", kind="group", group="g")
        back = self.session("u1")
        self.core.subscribe(back, since=since)
        self.assertEqual(topics(back), ["g"])

    def test_leaving_while_joining_writes_nothing(self) -> None:
        """A session that leaves while its kept messages are read is not attached and gets nothing; the loss is logged."""
        self.send("k", "u1", ttl=60)
        self.store.pause = True
        s = self.session("u1")
        joined = self.core.subscribe(s)
        events: list[dict[str, object]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.core.unsubscribe(s)
        self.assertEqual(len(self.hub), 0)
        self.store.go()
        self.successResultOf(joined)
        self.assertEqual((s.got, len(self.hub)), ([], 0))
        self.assertTrue(any(e.get("event") == "kept-lost" and e["log_level"] == LogLevel.warn for e in events), events)

    def test_subscribing_again_replaces_the_join(self) -> None:
        """Subscribing a session that is still joining starts over: it is attached once and released once."""
        self.send("k", "u1", ttl=60)
        self.store.pause = True
        s = self.session("u1")
        first = self.core.subscribe(s)
        self.store.pause = False
        second = self.core.subscribe(s)
        self.store.go()
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(len(self.hub), 1)
        self.assertEqual(len(s.catchups), 1)

    def test_a_failed_replay_ends_the_session(self) -> None:
        """If the hub cannot replay, the session is ended with a reason and left detached (never half-joined)."""

        class Broken(LocalHub):
            def replay(self, session: Session, since: int | None) -> Deferred[Replay]:
                return fail(RuntimeError("boom"))

        core = Core(self.store, Broken(), self.clock)  # type: ignore[arg-type]
        s = self.session("u1")
        self.successResultOf(core.subscribe(s))
        self.assertEqual(s.ended, "internal error: try again")
        self.assertEqual(len(core.hub), 0)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_adopt_attaches_without_catchup(self) -> None:
        """A handed-over session is routed to at once, with no kept messages taken for it."""
        self.send("k", "u1", ttl=60)
        s = self.session("u1")
        self.core.adopt(s)
        self.send("live", "u1")
        self.assertEqual((topics(s), s.catchups), (["live"], []))


class SendTests(LifecycleBase):
    def test_one_answer_type(self) -> None:
        """Core.send answers a Delivery with and without TTL: sessions, users, stored, dropped and the hub's message id."""
        s = self.session("u1")
        self.core.subscribe(s)
        live = self.send("a", "u1")
        kept = self.send("b", "nobody", ttl=60)
        for delivery in (live, kept):
            self.assertIsInstance(delivery, Delivery)
        self.assertEqual((live.sessions, live.users, live.stored, live.dropped), (1, 1, False, 0))
        self.assertEqual((kept.sessions, kept.users, kept.stored, kept.dropped), (0, 0, True, 0))
        self.assertEqual(s.got[0].id, live.message_id)
        self.assertEqual(kept.message_id, live.message_id + 1)

    def test_kept_payload_is_the_rendered_bytes(self) -> None:
        """The kept copy is the very add-in JSON the live sessions got (rendered once)."""
        s = self.session("u1")
        self.core.subscribe(s)
        self.send("x", kind="all", ttl=60)
        self.assertEqual(self.store.kept[0][0].payload, s.got[0].plaintext)

    def test_outbound_renders_once_and_lazily(self) -> None:
        """An Outbound renders its JSON on first use only, once; one built from bytes never renders."""
        message = Message("t")
        outbound = Outbound(message)
        first = outbound.plaintext
        self.assertIs(outbound.plaintext, first)
        self.assertEqual(outbound.addin_frame(KEY), outbound.addin_frame(KEY))
        rendered = Outbound.rendered(b'{"topic": "t"}', 7)
        self.assertEqual(rendered.web_json(), b'{"id":7,"topic": "t"}')
        self.assertEqual(Outbound.rendered(b'{"topic": "t"}').web_json(), b'{"topic": "t"}')
