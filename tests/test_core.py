"""
``Core`` on its own, fast: the in-memory store, the in-process hub and a
``Clock`` (no process, no socket).  Tokens, registration, kept messages and
groups, as the API and the transports rely on them.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pns4ones import crypto, wire
from pns4ones.core import EXPIRED_TOKEN_MEMORY, SERVER_KEY_LOOKUP_INTERVAL, AuthError, Core, Limits, RegistrationRejected
from pns4ones.groups import GroupError, Membership
from pns4ones.hub.local import LocalHub
from pns4ones.hub.testing import RecordingSession
from pns4ones.messages import Message, Recipient, SendRequest
from pns4ones.store import Application, Snapshot
from pns4ones.store.memory import MemoryDatabase, MemoryStore

LIFETIME = 3600.0


class Session(RecordingSession):
    """A live subscription as the core sees it, recording what it is sent (a transport's stand-in, not Core's)."""

    def __init__(self, app: Application, user_id: str, ib_id: str = "ib", group: str = "") -> None:
        super().__init__(user_id, (group,) if group else (), ib_id, app.id, app.client_key)

    @property
    def received(self) -> list[str]:
        return [json.loads(m.plaintext).get("topic", "") for m in self.got]


class SlowStore(MemoryStore):
    """The memory store answering take_kept a second later, as a store across the network may."""

    def __init__(self, database: MemoryDatabase, clock: Clock) -> None:
        super().__init__(database, clock)
        self.clock = clock

    def take_kept(self, app_id: str, ib_id: str, user_id: str, groups: list[str], now: float) -> Deferred[list[bytes]]:
        answer = super().take_kept(app_id, ib_id, user_id, groups, now)
        later: Deferred[list[bytes]] = Deferred()
        self.clock.callLater(1, lambda: answer.addCallback(later.callback))
        return later


class LateSnapshotStore(MemoryStore):
    """The memory store whose snapshot is read when asked and answered a second later, as a store across the network may."""

    def __init__(self, database: MemoryDatabase, clock: Clock) -> None:
        super().__init__(database, clock)
        self.clock = clock
        self.snapshots = 0

    def snapshot(self) -> Deferred[Snapshot]:
        self.snapshots += 1
        answer = super().snapshot()
        later: Deferred[Snapshot] = Deferred()
        self.clock.callLater(1, lambda: answer.addCallback(later.callback))
        return later


class Node:
    """One node's Core on a store database (several nodes may share one)."""

    def __init__(self, database: MemoryDatabase, clock: Clock, limits: Limits | None = None) -> None:
        self.store = MemoryStore(database, clock)
        membership = Membership()
        self.core = Core(self.store, LocalHub(membership.members, clock), clock, LIFETIME, membership, limits or Limits())

    def reload(self) -> None:
        self.core.reload()


class CoreTestBase(SynchronousTestCase):
    limits = Limits()

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.database = MemoryDatabase()
        self.node = Node(self.database, self.clock, self.limits)
        self.core = self.node.core
        self.app = self.done(self.node.store.create_application("Shop", self.clock.seconds()))
        self.node.reload()

    def done(self, d: Deferred[Any] | Any) -> Any:
        """The result of a Deferred that has fired (the memory store and the local hub answer at once), or a value answered at once."""
        return self.successResultOf(d) if isinstance(d, Deferred) else d

    def registration(self, user: str, group: str = "", key: wire.ClientKey | None = None, app_id: str | None = None) -> wire.Registration:
        frame = wire.encode_registration(key or self.app.client_key, app_id or self.app.id, "ib", user, group)
        return wire.parse_registration(frame[2:])

    def subscribe(self, user: str, group: str = "") -> Session:
        session = Session(self.app, user, group=group)
        self.core.register(self.registration(user, group))
        self.core.subscribe(session)
        return session

    def send(self, recipient: Recipient, topic: str, ttl: float = 0.0) -> Any:
        return self.done(self.core.send(self.app, SendRequest(recipient, Message(topic)), ttl))


class TokenTests(CoreTestBase):
    def test_auth_issues_one_token_per_half_life(self) -> None:
        """/auth gives the same token while it has over half its life, then a new one; both are valid until they expire."""
        first = self.done(self.core.authorize(self.app.server_key))
        self.assertEqual(first.expires_at, self.clock.seconds() + LIFETIME)
        self.clock.advance(LIFETIME / 2 - 1)
        self.assertEqual(self.done(self.core.authorize(self.app.server_key)).token, first.token)
        self.clock.advance(2)
        second = self.done(self.core.authorize(self.app.server_key))
        self.assertNotEqual(second.token, first.token)
        self.assertEqual(self.core.resolve_token(first.token), self.app)
        self.assertEqual(self.core.resolve_token(second.token), self.app)
        self.assertIsNotNone(self.done(self.node.store.get_token(crypto.token_digest(second.token))), "kept in the store")

    def test_unknown_server_key_is_401(self) -> None:
        """A wrong or empty server key is refused with 401."""
        for key in ("", "x" * 64, self.app.server_key[:-1]):
            d = maybeDeferred(self.core.authorize, key)
            self.clock.advance(SERVER_KEY_LOOKUP_INTERVAL)  # (an unknown key is looked for in the store first)
            failure = self.failureResultOf(d, AuthError)
            self.assertEqual(failure.value.status, 401)

    def test_expired_token_is_403_until_purged(self) -> None:
        """An expired token answers 403 (call /auth again) for a day; after the purge it is unknown."""
        issued = self.done(self.core.authorize(self.app.server_key))
        self.clock.advance(LIFETIME)
        e = self.assertRaises(AuthError, self.core.resolve_token, issued.token)
        self.assertEqual(e.status, 403)
        self.clock.advance(EXPIRED_TOKEN_MEMORY + 1)
        self.assertEqual(self.done(self.core.purge_tokens()), 1)
        self.assertEqual(self.failureResultOf(self.core.resolve_token(issued.token), AuthError).value.status, 401)
        self.assertIsNone(self.done(self.node.store.get_token(crypto.token_digest(issued.token))))

    def test_token_of_another_node_is_adopted_once(self) -> None:
        """A token another node issued is resolved through the store once (a Deferred), then from memory. A bogus one is 401 after one look-up."""
        other = Node(self.database, self.clock)
        other.reload()
        issued = self.done(other.core.authorize(self.app.server_key))
        looked_up = self.core.resolve_token(issued.token)
        self.assertIsInstance(looked_up, Deferred)
        self.assertEqual(self.done(looked_up), self.app)
        self.assertEqual(self.core.resolve_token(issued.token), self.app)
        self.assertEqual(self.failureResultOf(self.core.resolve_token("bogus"), AuthError).value.status, 401)
        refused = self.assertRaises(AuthError, self.core.resolve_token, "bogus")
        self.assertEqual(refused.status, 401, "known to be absent: refused from memory")

    def test_rotating_the_server_key_revokes_its_tokens(self) -> None:
        """After a server-key rotation (the CLI, then the store's change) the old token is refused and the old key too."""
        issued = self.done(self.core.authorize(self.app.server_key))
        rotated = self.done(self.node.store.rotate_server_key(self.app.id, self.clock.seconds()))
        self.node.reload()
        revoked = self.failureResultOf(
            maybeDeferred(self.core.resolve_token, issued.token), AuthError
        )  # (asked of the store: revoked there)
        self.assertEqual(revoked.value.status, 401)
        old_key = maybeDeferred(self.core.authorize, self.app.server_key)
        self.clock.advance(SERVER_KEY_LOOKUP_INTERVAL)
        self.failureResultOf(old_key, AuthError)
        self.assertNotEqual(self.done(self.core.authorize(rotated.server_key)).token, issued.token)


class RegistrationTests(CoreTestBase):
    def test_a_signed_registration_attaches(self) -> None:
        """A registration signed with the application's client key attaches the session: a send to its user reaches it."""
        session = self.subscribe("u1")
        self.assertEqual(len(self.core.hub), 1)
        self.assertEqual(self.send(Recipient("user", "ib", user_id="u1"), "hello").sessions, 1)
        self.assertEqual(session.received, ["hello"])

    def test_unknown_application_and_bad_signature_are_rejected(self) -> None:
        """An unknown application or a signature under another key is rejected with its reason; nothing attaches."""
        cases = {
            "unknown-application": self.registration("u1", app_id="nope"),
            "bad-signature": self.registration("u1", key=wire.ClientKey.generate()),
        }
        for reason, registration in cases.items():
            e = self.assertRaises(RegistrationRejected, self.core.register, registration)
            self.assertEqual(e.reason, reason)
        self.assertEqual(len(self.core.hub), 0)

    def test_key_rotation_and_removal_end_subscriptions(self) -> None:
        """A client key rotated, or the application removed, in the store ends its live subscriptions at the next reload."""
        first = self.subscribe("u1")
        self.done(self.node.store.rotate_client_key(self.app.id, self.clock.seconds()))
        self.node.reload()
        self.assertEqual(first.ended, "client key rotated")
        self.app = self.done(self.node.store.get_application(self.app.id))
        second = self.subscribe("u2")
        self.done(self.node.store.remove_application(self.app.id))
        self.node.reload()
        self.assertEqual(second.ended, "application removed")


class KeptTests(CoreTestBase):
    limits = Limits(max_kept_per_user=2)

    def test_a_kept_message_reaches_its_user_once_when_he_comes(self) -> None:
        """A message with a TTL for an offline user is kept; he gets it on registering, before live ones, and only once."""
        report = self.send(Recipient("user", "ib", user_id="u1"), "kept", ttl=60)
        self.assertEqual((report.sessions, report.stored), (0, True))
        session = self.subscribe("u1")
        self.send(Recipient("user", "ib", user_id="u1"), "live")
        self.assertEqual(session.received, ["kept", "live"])
        self.assertEqual(self.subscribe("u1").received, [], "taken once")

    def test_kept_messages_come_before_live_ones_sent_meanwhile(self) -> None:
        """Live messages sent while the store reads a user's kept messages wait, and follow them: kept, then live, in order."""
        self.send(Recipient("user", "ib", user_id="u1"), "kept", ttl=60)
        slow = SlowStore(self.database, self.clock)
        self.core.store = slow
        session = self.subscribe("u1")
        self.send(Recipient("user", "ib", user_id="u1"), "live")
        self.assertEqual(session.received, [], "nothing written while the kept messages are read")
        self.clock.advance(1)
        self.assertEqual(session.received, ["kept", "live"])

    def test_a_user_reached_live_is_not_kept_for(self) -> None:
        """A user message that reached a live session is not kept."""
        self.subscribe("u1")
        self.assertEqual(self.send(Recipient("user", "ib", user_id="u1"), "live", ttl=60).stored, False)
        self.assertEqual(self.done(self.node.store.kept_ibs()), frozenset())

    def test_group_and_all_messages_reach_each_absent_member_once(self) -> None:
        """A kept message to a group or to all reaches each user who was not reached live, once each."""
        self.done(self.core.set_group(self.app, "ib", "g", ["u1", "u2"]))
        here = self.subscribe("u1")
        self.send(Recipient("group", "ib", group="g"), "to g", ttl=60)
        self.send(Recipient("all", "ib"), "to all", ttl=60)
        self.assertEqual(here.received, ["to g", "to all"])
        self.assertEqual(self.subscribe("u2").received, ["to g", "to all"])
        self.assertEqual(self.subscribe("u3").received, ["to all"])
        self.assertEqual(self.subscribe("u1").received, [], "u1 had them live")

    def test_expired_kept_messages_are_never_written(self) -> None:
        """A kept message past its TTL is not written and the purge counts it."""
        self.send(Recipient("user", "ib", user_id="u1"), "late", ttl=30)
        self.clock.advance(31)
        self.assertEqual(self.subscribe("u1").received, [])
        self.assertEqual(self.done(self.core.purge_kept()), 1)

    def test_the_per_user_bound_drops_the_oldest(self) -> None:
        """Past max_kept_per_user the oldest kept messages are dropped, and the send says how many."""
        drops = [self.send(Recipient("user", "ib", user_id="u1"), f"m{i}", ttl=60).dropped for i in range(3)]
        self.assertEqual(drops, [0, 0, 1])
        self.assertEqual(self.subscribe("u1").received, ["m1", "m2"])


class GroupTests(CoreTestBase):
    limits = Limits(max_group_size=3, max_groups=2)

    def test_group_sends_follow_membership_changes(self) -> None:
        """Members with live sessions get group sends; adding, removing a member and removing the group take effect at the next send."""
        sessions = {u: self.subscribe(u) for u in ("u1", "u2", "u3")}
        named = self.subscribe("u9", group="g")  # registered with the group's name: always a recipient
        group = Recipient("group", "ib", group="g")
        self.assertEqual(self.done(self.core.set_group(self.app, "ib", "g", ["u1", "u2"])), 2)
        self.assertEqual(self.send(group, "one").sessions, 3)
        self.assertEqual(self.done(self.core.add_members(self.app, "ib", "g", ["u2", "u3"])), 1)
        self.assertEqual(self.done(self.core.remove_member(self.app, "ib", "g", "u1")), 1)
        self.assertEqual(self.send(group, "two").sessions, 3)
        self.assertEqual(self.done(self.core.remove_group(self.app, "ib", "g")), 2)
        self.assertEqual(self.send(group, "three").sessions, 1)
        self.assertEqual({u: s.received for u, s in sessions.items()}, {"u1": ["one"], "u2": ["one", "two"], "u3": ["two"]})
        self.assertEqual(named.received, ["one", "two", "three"])

    def test_a_reload_under_way_does_not_undo_this_nodes_group_change(self) -> None:
        """
        A reload whose snapshot was read before this node changed a group (the
        store came back after an outage, another node changed something) must
        not undo the change in memory when it lands: it reads again.
        """
        late = LateSnapshotStore(self.database, self.clock)
        membership = Membership()
        core = Core(late, LocalHub(membership.members, self.clock), self.clock, LIFETIME, membership, Limits())
        loaded = core.reload()
        self.clock.advance(1)
        self.successResultOf(loaded)
        session = Session(self.app, "u1")
        core.register(self.registration("u1"))
        core.subscribe(session)
        group = SendRequest(Recipient("group", "ib", group="g"), Message("x"))
        for change, members in [
            (lambda: core.set_group(self.app, "ib", "g", ["u1"]), 1),
            (lambda: core.remove_member(self.app, "ib", "g", "u1"), 0),
            (lambda: core.add_members(self.app, "ib", "g", ["u1"]), 1),
            (lambda: core.remove_group(self.app, "ib", "g"), 0),
        ]:
            reads = late.snapshots
            reloading = core.reload()  # its snapshot is read now, before the change
            self.done(change())  # the change: in the store, then in this node's memory
            self.clock.advance(1)  # the old snapshot lands: read again
            self.assertNoResult(reloading)
            self.clock.advance(1)
            self.successResultOf(reloading)
            self.assertEqual(late.snapshots - reads, 2)
            self.assertEqual(self.done(core.send(self.app, group, 0.0)).sessions, members)

    def test_groups_are_kept_in_the_store(self) -> None:
        """Another node (or this one after a restart) loads the groups from the store and routes the same."""
        self.done(self.core.set_group(self.app, "ib", "g", ["u1"]))
        other = Node(self.database, self.clock)
        other.reload()
        session = Session(self.app, "u1")
        other.core.register(self.registration("u1"))
        other.core.subscribe(session)
        self.assertEqual(self.done(other.core.send(self.app, SendRequest(Recipient("group", "ib", group="g"), Message("x")))).sessions, 1)

    def test_bounds(self) -> None:
        """A group over max_group_size, or a group past max_groups, is refused with 413 naming the field; nothing changes."""
        e = self.failureResultOf(self.core.set_group(self.app, "ib", "g", ["a", "b", "c", "d"]), GroupError).value
        self.assertEqual((e.status, e.field), (413, "UserIds"))
        self.done(self.core.set_group(self.app, "ib", "g1", ["a", "b", "c"]))
        e = self.failureResultOf(self.core.add_members(self.app, "ib", "g1", ["d"]), GroupError).value
        self.assertEqual((e.status, e.field), (413, "UserIds"))
        self.done(self.core.set_group(self.app, "ib", "g2", ["a"]))
        e = self.failureResultOf(self.core.set_group(self.app, "ib", "g3", ["a"]), GroupError).value
        self.assertEqual((e.status, e.field), (413, "Group"))
        self.assertEqual(self.done(self.node.store.list_groups(self.app.id)), [("ib", "g1", 3), ("ib", "g2", 1)])
