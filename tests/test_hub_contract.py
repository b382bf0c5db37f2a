"""
The Hub contract, one suite run against every hub (as txacme runs one store
suite on its fake and its real store): LocalHub in memory, RedisHub against a
real redis-server on loopback.  Then what only a hub between nodes does:
several RedisHubs in this process on one Redis (bytes routed verbatim,
presence in reports, catching up after a cut link).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Generator
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from pns4ones.hub import Delivery, Hub, Outbound, Replay
from pns4ones.hub.local import LocalHub
from pns4ones.hub.redis import RedisHub
from pns4ones.hub.testing import RecordingSession
from pns4ones.messages import Message, Recipient, parse_addin_json

from .redis_support import SKIP, CuttableProxy, RedisServer

Members = Callable[[str, str, str], Collection[str]]


def members_of(table: dict[str, set[str]]) -> Members:
    return lambda app_id, ib_id, group: table.get(group, frozenset())


def topics(session: RecordingSession) -> list[str]:
    return [parse_addin_json(p).topic for p in session.plaintexts()]


@inlineCallbacks
def until(condition: Callable[[], object], timeout: float = 5.0, what: str = "a condition") -> Generator[Deferred[Any], Any, None]:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield task.deferLater(reactor, 0.01, lambda: None)


class HubContract:
    """What every :class:`pns4ones.hub.Hub` does; a subclass says how to make one (``make_hub``)."""

    # provided by the subclass (and TestCase)
    make_hub: Callable[..., Deferred[Hub]]
    assertEqual: Callable[..., None]
    assertIs: Callable[..., None]
    assertIsNone: Callable[..., None]
    assertIsNotNone: Callable[..., None]
    assertGreater: Callable[..., None]
    assertTrue: Callable[..., None]

    def publish(self, hub: Hub, recipient: Recipient, topic: str = "t", app_id: str = "app") -> Deferred[Delivery]:
        return hub.publish(app_id, recipient, Outbound(Message(topic)))

    @inlineCallbacks
    def test_reaches_user_group_all_each_session_once(self) -> Generator[Deferred[Any], Any, None]:
        """User, group (members and registered, each session once) and all sends reach exactly their sessions, and say so."""
        hub = yield self.make_hub(members_of({"g": {"m1", "offline"}}))
        u1a, u1b = RecordingSession("u1"), RecordingSession("u1")
        m1, reg, both = RecordingSession("m1"), RecordingSession("x", ("g",)), RecordingSession("m1", ("g",))
        other_ib, other_app = RecordingSession("u1", ib_id="ib2"), RecordingSession("u1", app_id="app2")
        everyone = (u1a, u1b, m1, reg, both, other_ib, other_app)
        for s in everyone:
            hub.attach(s)
        user = yield self.publish(hub, Recipient("user", "ib", user_id="u1"), "user")
        group = yield self.publish(hub, Recipient("group", "ib", group="g"), "group")
        every = yield self.publish(hub, Recipient("all", "ib"), "all")
        self.assertEqual([(d.sessions, d.users, d.stored) for d in (user, group, every)], [(2, 1, False), (3, 2, False), (5, 3, False)])
        self.assertEqual(set(group.reached), {"m1", "x"})
        self.assertEqual(
            [topics(s) for s in everyone],
            [["user", "all"], ["user", "all"], ["group", "all"], ["group", "all"], ["group", "all"], [], []],
        )
        ids = [d.message_id for d in (user, group, every)]
        self.assertEqual(ids, sorted(set(ids)))
        self.assertEqual(u1a.ids(), [ids[0], ids[2]])

    @inlineCallbacks
    def test_every_session_writes_the_same_message(self) -> Generator[Deferred[Any], Any, None]:
        """All sessions of a send get the same Outbound: rendered once, encrypted once per key; bytes built elsewhere arrive verbatim."""
        hub = yield self.make_hub()
        sessions = [RecordingSession(f"u{n}") for n in range(3)]
        for s in sessions:
            hub.attach(s)
        plaintext = '{"topic": "готово", "data": {"k": "\\"m\\":"}}'.encode()
        yield hub.publish("app", Recipient("all", "ib"), Outbound.rendered(plaintext))
        self.assertEqual([s.plaintexts() for s in sessions], [[plaintext]] * 3)
        first = sessions[0].got[0]
        for s in sessions[1:]:
            self.assertIs(s.got[0], first)

    @inlineCallbacks
    def test_attach_detach_are_idempotent_and_counted(self) -> Generator[Deferred[Any], Any, None]:
        """Attaching twice counts once; detaching stops delivery; len, counts and sessions follow."""
        hub = yield self.make_hub()
        a, b, c = RecordingSession("a"), RecordingSession("b"), RecordingSession("c", app_id="app2", ib_id="x")
        for s in (a, a, b, c):
            hub.attach(s)
        self.assertEqual((len(hub), hub.counts()), (3, {"app": {"ib": 2}, "app2": {"x": 1}}))
        self.assertEqual(set(hub.sessions("app")), {a, b})
        self.assertEqual(set(hub.sessions()), {a, b, c})
        hub.detach(b)
        hub.detach(b)
        delivery = yield self.publish(hub, Recipient("all", "ib"))
        self.assertEqual((delivery.sessions, len(hub), topics(b)), (1, 2, []))
        hub.detach(a)
        hub.detach(c)
        self.assertEqual((len(hub), hub.counts(), list(hub.sessions())), (0, {}, []))

    @inlineCallbacks
    def test_a_refused_delivery_is_not_counted(self) -> Generator[Deferred[Any], Any, None]:
        """A session that cannot take a message (cut off) does not count as reached."""
        hub = yield self.make_hub()
        ok, refusing = RecordingSession("ok"), RecordingSession("no")
        refusing.refuse = True
        hub.attach(ok)
        hub.attach(refusing)
        delivery = yield self.publish(hub, Recipient("all", "ib"))
        self.assertEqual((delivery.sessions, delivery.users, set(delivery.reached)), (1, 1, {"ok"}))

    @inlineCallbacks
    def test_a_user_send_reaches_that_user_or_nobody(self) -> Generator[Deferred[Any], Any, None]:
        """A user send counts that user's sessions written, the user once, and no user when every session refused it."""
        hub = yield self.make_hub()
        first, second, refusing = RecordingSession("u1"), RecordingSession("u1"), RecordingSession("u2")
        refusing.refuse = True
        for s in (first, second, refusing):
            hub.attach(s)
        delivery = yield self.publish(hub, Recipient("user", "ib", user_id="u1"))
        self.assertEqual((delivery.sessions, delivery.users, set(delivery.reached)), (2, 1, {"u1"}))
        delivery = yield self.publish(hub, Recipient("user", "ib", user_id="u2"))
        self.assertEqual((delivery.sessions, delivery.users, set(delivery.reached)), (0, 0, set()))

    @inlineCallbacks
    def test_on_routed_hook(self) -> Generator[Deferred[Any], Any, None]:
        """The metrics hook hears each routed message: application, sessions written, frame bytes."""
        hub = yield self.make_hub()
        heard: list[tuple[str, int, int]] = []
        hub.on_routed = lambda app, written, size: heard.append((app, written, size))
        hub.attach(RecordingSession("u1"))
        yield self.publish(hub, Recipient("user", "ib", user_id="u1"))
        self.assertEqual(heard, [("app", 1, 0)])  # a recording session encrypts nothing

    @inlineCallbacks
    def test_replay_of_a_new_subscription_is_empty(self) -> Generator[Deferred[Any], Any, None]:
        """since=None: nothing missed, nothing to replay, resume from the latest id."""
        hub = yield self.make_hub()
        sent = yield self.publish(hub, Recipient("all", "ib"))
        replay = yield hub.replay(RecordingSession("u1"), None)
        self.assertEqual((replay.missed, list(replay.backlog)), (None, []))
        self.assertGreater(replay.resume_id + 1, sent.message_id)

    @inlineCallbacks
    def test_replay_after_since_in_order(self) -> Generator[Deferred[Any], Any, None]:
        """A resume gets what was sent after its id to it (user, all, group by membership or registration), in id order."""
        hub = yield self.make_hub(members_of({"g": {"u1"}}))
        watcher = RecordingSession("w")
        hub.attach(watcher)
        first = yield self.publish(hub, Recipient("user", "ib", user_id="u1"), "seen")
        for recipient, topic in (
            (Recipient("user", "ib", user_id="u1"), "mine"),
            (Recipient("user", "ib", user_id="u2"), "not mine"),
            (Recipient("group", "ib", group="g"), "member"),
            (Recipient("group", "ib", group="h"), "registered"),
            (Recipient("all", "ib2"), "other ib"),
            (Recipient("all", "ib"), "all"),
        ):
            yield self.publish(hub, recipient, topic)
        back = RecordingSession("u1", ("h",))
        replay: Replay = yield hub.replay(back, first.message_id)
        self.assertIsNone(replay.missed)
        self.assertEqual([parse_addin_json(m.plaintext).topic for m in replay.backlog], ["mine", "member", "registered", "all"])
        ids = [m.id for m in replay.backlog]
        self.assertEqual(ids, sorted(ids))
        self.assertEqual(replay.resume_id, ids[-1])

    @inlineCallbacks
    def test_replay_older_than_the_window_says_missed(self) -> Generator[Deferred[Any], Any, None]:
        """A resume point older than the window is reported (missed = the floor) and gets what the window still holds."""
        hub = yield self.make_hub(recovery_window=0.5)
        hub.attach(RecordingSession("w"))
        old = yield self.publish(hub, Recipient("all", "ib"), "old")
        yield self.publish(hub, Recipient("all", "ib"), "expires")
        yield task.deferLater(reactor, 0.7, lambda: None)
        yield self.publish(hub, Recipient("all", "ib"), "fresh")
        replay = yield hub.replay(RecordingSession("u1"), old.message_id)
        self.assertIsNotNone(replay.missed)
        self.assertGreater(replay.missed, old.message_id)
        self.assertEqual([parse_addin_json(m.plaintext).topic for m in replay.backlog], ["fresh"])

    @inlineCallbacks
    def test_replay_then_attach_leaves_no_gap(self) -> Generator[Deferred[Any], Any, None]:
        """Attached in the replay's callback, a session gets every later message once, after the backlog."""
        hub = yield self.make_hub()
        hub.attach(RecordingSession("w"))
        first = yield self.publish(hub, Recipient("all", "ib"), "a")
        yield self.publish(hub, Recipient("all", "ib"), "b")
        back = RecordingSession("u1")
        replay = yield hub.replay(back, first.message_id).addCallback(lambda r: (hub.attach(back), r)[1])
        yield self.publish(hub, Recipient("all", "ib"), "c")
        self.assertEqual([parse_addin_json(m.plaintext).topic for m in replay.backlog] + topics(back), ["b", "c"])

    @inlineCallbacks
    def test_status_metrics_remote_and_close(self) -> Generator[Deferred[Any], Any, None]:
        """A started hub is ready; its metric families have names; alone, it sees no remote session; close fires once it is done."""
        hub = yield self.make_hub()
        self.assertEqual(hub.status(), (True, "ready"))
        self.assertTrue(all(family.name.startswith("pns4ones_") for family in hub.metric_families()))
        self.assertEqual(hub.remote_sessions("app", "ib"), {})
        result = yield hub.close()
        self.assertIsNone(result)


class LocalHubContractTests(HubContract, TestCase):
    def make_hub(self, members: Members | None = None, recovery_window: float = 60.0) -> Deferred[Hub]:
        from twisted.internet.defer import succeed

        hub = LocalHub(members, reactor, recovery_window, 100)  # type: ignore[arg-type]
        hub.start()
        self.addCleanup(hub.close)
        return succeed(hub)


class RedisBase(TestCase):
    """A redis-server for the class; hubs of this process connect to it (or through a proxy that can cut them off)."""

    redis: RedisServer

    @classmethod
    def setUpClass(cls) -> None:
        if SKIP:
            raise SkipTest(SKIP)
        cls.redis = RedisServer().start()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.redis.cleanup()

    @inlineCallbacks
    def redis_hub(
        self, members: Members | None = None, recovery_window: float = 60.0, node: str = "T", url: str | None = None
    ) -> Generator[Deferred[Any], Any, RedisHub]:
        hub = RedisHub(url or self.redis.url, members, reactor, node, recovery_window, 100, presence_expiry=3)  # type: ignore[arg-type]
        hub.start()
        self.addCleanup(hub.close)
        yield until(lambda: hub.status()[0], what="the hub to connect")
        return hub

    def confirmed(self, hub: RedisHub, app_id: str = "app", ib_id: str = "ib") -> bool:
        """The hub receives the channel's messages (and so may be counted by the others)."""
        return hub.receiving(app_id, ib_id)


class RedisHubContractTests(HubContract, RedisBase):
    def make_hub(self, members: Members | None = None, recovery_window: float = 60.0) -> Deferred[Hub]:
        return self.redis_hub(members, recovery_window, node=f"T-{self._testMethodName}")


class BetweenNodesTests(RedisBase):
    @inlineCallbacks
    def test_other_nodes_route_the_published_bytes(self) -> Generator[Deferred[Any], Any, None]:
        """A message is rendered once in the cluster: the other node writes the sender's bytes, with the same id, and renders nothing."""
        from pns4ones.hub import outbound as outbound_module

        a = yield self.redis_hub(node="A")
        b = yield self.redis_hub(node="B")
        on_b = RecordingSession("u1")
        b.attach(on_b)
        yield until(lambda: self.confirmed(b) and a.mirror.reach("app", Recipient("all", "ib"), None)[0] == 1, what="B's presence on A")
        renders = []
        original = outbound_module.render_addin_json

        def counting(message: Message) -> bytes:
            renders.append(message)
            return original(message)

        self.patch(outbound_module, "render_addin_json", counting)
        delivery = yield a.publish("app", Recipient("user", "ib", user_id="u1"), Outbound(Message("Привет")))
        self.assertEqual((delivery.sessions, delivery.users), (1, 1))
        yield until(lambda: on_b.got, what="the message on B")
        self.assertEqual(len(renders), 1)
        self.assertEqual((topics(on_b), on_b.ids()), (["Привет"], [delivery.message_id]))

    @inlineCallbacks
    def test_presence_counts_and_lists_the_other_nodes(self) -> Generator[Deferred[Any], Any, None]:
        """Reports count the other nodes' sessions (group membership included); remote_sessions names their node."""
        groups = {"g": {"u2"}}
        a = yield self.redis_hub(members_of(groups), node="A")
        b = yield self.redis_hub(members_of(groups), node="B")
        a.attach(RecordingSession("u1"))
        for s in (RecordingSession("u1"), RecordingSession("u2"), RecordingSession("x", ("g",))):
            b.attach(s)
        yield until(lambda: len(a.mirror.sessions("app", "ib")) == 3, what="B's sessions on A")
        user = yield a.publish("app", Recipient("user", "ib", user_id="u1"), Outbound(Message("u")))
        group = yield a.publish("app", Recipient("group", "ib", group="g"), Outbound(Message("g")))
        self.assertEqual([(d.sessions, d.users) for d in (user, group)], [(2, 1), (2, 2)])
        listed = a.remote_sessions("app", "ib")
        self.assertEqual(sorted((u, [s.node for s in ss]) for u, ss in listed.items()), [("u1", ["B"]), ("u2", ["B"]), ("x", ["B"])])

    @inlineCallbacks
    def test_a_node_cut_off_catches_up_once_in_order(self) -> Generator[Deferred[Any], Any, None]:
        """A node whose link to Redis is cut gets, when it comes back, what was sent meanwhile to its sessions: once, in order, before newer."""
        proxy = CuttableProxy(self.redis.port)
        self.addCleanup(proxy.close)
        a = yield self.redis_hub(node="A")
        b = yield self.redis_hub(node="B", url=proxy.url())
        on_b, other = RecordingSession("u1"), RecordingSession("u2")
        b.attach(on_b)
        b.attach(other)
        yield until(lambda: self.confirmed(b), what="B's channel")
        yield a.publish("app", Recipient("user", "ib", user_id="u1"), Outbound(Message("before")))
        yield until(lambda: topics(on_b) == ["before"], what="the first message on B")
        proxy.cut()
        yield until(lambda: not b.link.up, what="B to notice the cut")
        self.assertEqual(b.status()[0], False)
        for topic in ("m1", "m2", "m3"):
            yield a.publish("app", Recipient("user", "ib", user_id="u1"), Outbound(Message(topic)))
        yield a.publish("app", Recipient("all", "ib"), Outbound(Message("all")))
        proxy.restore()
        yield until(lambda: b.status()[0], timeout=10, what="B to be back and caught up")
        yield a.publish("app", Recipient("user", "ib", user_id="u1"), Outbound(Message("after")))
        yield until(lambda: "after" in topics(on_b), what="the message after the outage")
        self.assertEqual(topics(on_b), ["before", "m1", "m2", "m3", "all", "after"])
        self.assertEqual(topics(other), ["all"])
        self.assertEqual(on_b.ids(), sorted(set(on_b.ids())))
        self.assertEqual(b.replayed, 4)

    @inlineCallbacks
    def test_sends_through_a_node_that_is_catching_up_wait(self) -> Generator[Deferred[Any], Any, None]:
        """While the link is down a send answers HubUnavailable (503), and the node says why on /ready."""
        from pns4ones.hub import HubUnavailable

        proxy = CuttableProxy(self.redis.port)
        self.addCleanup(proxy.close)
        b = yield self.redis_hub(node="B", url=proxy.url())
        b.attach(RecordingSession("u1"))
        yield until(lambda: self.confirmed(b), what="B's channel")
        proxy.cut()
        yield until(lambda: not b.link.up, what="B to notice the cut")
        failure = yield self.assertFailure(b.publish("app", Recipient("all", "ib"), Outbound(Message("x"))), HubUnavailable)
        self.assertIn("not sent", str(failure))
        self.assertIn("lost Redis", b.status()[1])
        proxy.restore()
        yield until(lambda: b.status()[0], timeout=10, what="B back")

    @inlineCallbacks
    def test_a_channel_never_read_back_gives_up_in_time(self) -> Generator[Deferred[Any], Any, None]:
        """If what a channel missed cannot be read back, the node routes live again after CATCH_UP_TIMEOUT instead of refusing sends for good."""
        from pns4ones.hub.redis import hub as hub_module

        self.patch(hub_module, "CATCH_UP_TIMEOUT", 0.5)
        proxy = CuttableProxy(self.redis.port)
        self.addCleanup(proxy.close)
        a = yield self.redis_hub(node="A")
        b = yield self.redis_hub(node="B", url=proxy.url())
        on_b = RecordingSession("u1")
        b.attach(on_b)
        yield until(lambda: self.confirmed(b), what="B's channel")
        yield a.publish("app", Recipient("user", "ib", user_id="u1"), Outbound(Message("before")))
        yield until(lambda: topics(on_b) == ["before"], what="the first message on B")
        self.patch(b, "_catch_up", lambda key: None)  # the read back never starts
        proxy.cut()
        yield until(lambda: not b.link.up, what="B to notice the cut")
        yield a.publish("app", Recipient("user", "ib", user_id="u1"), Outbound(Message("lost")))
        proxy.restore()
        yield until(lambda: b.link.up, timeout=10, what="B's link back")
        self.assertEqual(b.status()[0], False)
        yield until(lambda: b.status()[0], timeout=5, what="B to give up catching up")
        yield a.publish("app", Recipient("user", "ib", user_id="u1"), Outbound(Message("after")))
        yield until(lambda: "after" in topics(on_b), what="the message after")
        self.assertEqual(topics(on_b), ["before", "after"])
