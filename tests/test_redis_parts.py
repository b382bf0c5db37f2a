"""The pure parts of the Redis hub: presence (time from a Clock), the payload and stream reads, the URL. No Redis, no sockets."""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pns4ones.hub import HubUnavailable, Outbound
from pns4ones.hub.redis.presence import Mirror, OwnPresence, group_field, user_field
from pns4ones.hub.redis.stream import Gates, decode_payload, encode_payload, int_to_stream_id, read_stream, replay_backlog, stream_id_to_int
from pns4ones.hub.redis.url import RedisURL
from pns4ones.hub.testing import RecordingSession
from pns4ones.messages import Message, Notification, Recipient, render_addin_json


def changes(seq: int, *fields: tuple[str, int], node: str = "B/1") -> dict[str, object]:
    return {"n": node, "s": seq, "f": [[f, n] for f, n in fields]}


class OwnPresenceTests(SynchronousTestCase):
    def test_full_then_changes_then_heartbeat(self) -> None:
        """The first update is full; then only changed fields with the next sequence number; a heartbeat keeps the number."""
        own = OwnPresence("A/1")
        s = RecordingSession("u1", ("g",), app_id="a")
        own.count(s, 1)
        first = own.update()
        assert first is not None
        self.assertTrue(first.full)
        self.assertEqual(first.fields, {user_field("a", "ib", "u1"): 1, group_field("a", "ib", "u1", "g"): 1})
        self.assertIsNone(own.update(), "nothing changed: nothing to say")
        own.count(s, -1)
        second = own.update()
        assert second is not None
        self.assertEqual(
            (second.full, second.seq, second.fields), (False, 2, {user_field("a", "ib", "u1"): 0, group_field("a", "ib", "u1", "g"): 0})
        )
        beat = own.update(heartbeat=True)
        assert beat is not None
        self.assertEqual((json.loads(beat.doc), beat.fields), ({"n": "A/1", "s": 2}, {}))
        own.failed()
        again = own.update()
        assert again is not None
        self.assertTrue(again.full)


class MirrorTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.mirror = Mirror("A/1", self.clock, expiry=15)
        self.u1 = user_field("a", "ib", "u1")

    def loaded(self, seq: int, **fields: int) -> dict[str, str]:
        values = {"~seq": str(seq)}
        values.update({user_field("a", "ib", u): str(n) for u, n in fields.items()})
        return values

    def test_new_member_is_loaded_then_follows_in_sequence(self) -> None:
        """A new node is read whole first; what it says meanwhile is applied after, by sequence; later changes in order."""
        self.assertEqual(self.mirror.received(changes(5, (self.u1, 1))), ["B/1"])
        self.assertEqual(self.mirror.received(changes(6, (self.u1, 2))), [], "queued while loading")
        self.assertEqual(self.mirror.loaded("B/1", self.loaded(5, u1=1)), [])
        self.assertEqual(self.mirror.reach("a", Recipient("user", "ib", "u1"), None), (2, {"u1"}))
        self.mirror.received(changes(7, (self.u1, 0)))
        self.assertEqual(self.mirror.reach("a", Recipient("user", "ib", "u1"), None), (0, set()))

    def test_gap_or_heartbeat_ahead_asks_for_a_load(self) -> None:
        """A gap in the sequence, or a heartbeat ahead of what we hold, makes the mirror read the node again; older news is ignored."""
        self.mirror.received(changes(1, (self.u1, 1)))
        self.mirror.loaded("B/1", self.loaded(1, u1=1))
        self.assertEqual(self.mirror.received(changes(1, (self.u1, 5))), [])
        self.assertEqual(self.mirror.received(changes(3, (self.u1, 5))), ["B/1"])
        self.mirror.loaded("B/1", self.loaded(3, u1=5))
        self.assertEqual(self.mirror.received({"n": "B/1", "s": 3}), [])
        self.assertEqual(self.mirror.received({"n": "B/1", "s": 4}), ["B/1"])

    def test_expiry_with_the_clock(self) -> None:
        """A node not heard from within the expiry is forgotten with its sessions; one that keeps talking stays."""
        self.mirror.received(changes(1, (self.u1, 1)))
        self.mirror.loaded("B/1", self.loaded(1, u1=1))
        self.mirror.received(changes(1, (user_field("a", "ib", "u2"), 1), node="C/1"))
        self.mirror.loaded("C/1", {"~seq": "1", user_field("a", "ib", "u2"): "1"})
        self.clock.advance(10)
        self.mirror.received({"n": "C/1", "s": 1})
        self.clock.advance(6)
        self.assertEqual(self.mirror.expire(), ["B/1"])
        self.assertEqual(len(self.mirror), 1)
        self.assertEqual(self.mirror.reach("a", Recipient("all", "ib"), None), (1, {"u2"}))

    def test_bye_and_empty_hash_forget(self) -> None:
        """A node that says bye, or whose hash is gone, is forgotten at once."""
        self.mirror.received(changes(1, (self.u1, 1)))
        self.mirror.loaded("B/1", {})
        self.assertEqual(len(self.mirror), 0)
        self.assertEqual(self.mirror.received({"n": "A/1", "s": 9}), [], "our own news")

    def test_group_reach_follows_the_routing_rule(self) -> None:
        """Group reach counts members online (either side walked) and group-registered users, each user once."""
        fields = {user_field("a", "ib", u): "1" for u in ("m1", "m2", "x", "y")}
        fields[group_field("a", "ib", "x", "g")] = "1"
        fields[group_field("a", "ib", "m1", "g")] = "1"
        self.mirror.received(changes(1))
        self.mirror.loaded("B/1", {"~seq": "1", **fields})
        few = {"m1", "m2", "offline"}
        many = few | {f"n{i}" for i in range(50)}
        for members in (few, many):
            reach = self.mirror.reach("a", Recipient("group", "ib", group="g"), lambda app, ib, group, m=members: m)  # type: ignore[misc]
            self.assertEqual(reach, (3, {"m1", "m2", "x"}))

    def test_sessions_listed_by_user_with_their_node(self) -> None:
        """remote sessions are listed one entry per session, named by node, with unique ids."""
        self.mirror.received(changes(1))
        self.mirror.loaded("B/1", self.loaded(1, u1=2))
        listed = self.mirror.sessions("a", "ib")
        self.assertEqual([(s.node, s.transport_name) for s in listed["u1"]], [("B", "remote"), ("B", "remote")])
        self.assertEqual(len({s.session_id for s in listed["u1"]}), 2)


class StreamTests(SynchronousTestCase):
    def test_payload_round_trip_keeps_the_bytes(self) -> None:
        """The add-in JSON comes out of a payload byte for byte, whatever the target holds (quotes, ',"m":', Cyrillic)."""
        plaintext = render_addin_json(Message('т","m":', Notification("Заголовок 😀", "b"), {"k": '"m":'}))
        for recipient in (
            Recipient("user", "ib", user_id='u,"m":{"x"'),
            Recipient("group", "ib", group="Склад"),
            Recipient("all", "ib"),
        ):
            payload = encode_payload(b'"A/1"', recipient, plaintext).decode("utf-8")
            origin, got, body = decode_payload("ib", payload)
            self.assertEqual((origin, got, body), ("A/1", recipient, plaintext))
        for bad in ("", "{}", '{"o":"A","t":"user","to":"u"}', '[1,"m":{}]'):
            with self.assertRaises((ValueError, KeyError, TypeError)):
                decode_payload("ib", bad)

    def test_ids(self) -> None:
        """Stream ids MS-SEQ map to MS*1000+SEQ and back."""
        self.assertEqual(stream_id_to_int("1700000000000-7"), 1700000000000007)
        self.assertEqual(stream_id_to_int(b"5-0"), 5000)
        self.assertEqual(int_to_stream_id(1700000000000007), "1700000000000-7")

    def test_read_after_since_and_past_the_window(self) -> None:
        """A read after ``since`` lists later entries; a trimmed stream older than ``since`` reports the floor; no stream: missed from 0."""

        def entry(ms: int, text: str) -> list[object]:
            return [f"{ms}-0", ["d", encode_payload(b'"B"', Recipient("all", "ib"), text.encode()).decode()]]

        reply = [1, "30-0", "3", "3", "10-0", [entry(20, '{"topic":"b"}'), entry(30, '{"topic":"c"}')]]
        read = read_stream("ib", 10000, reply)
        self.assertEqual((read.missed, [e[0] for e in read.entries], read.last_id), (None, [20000, 30000], 30000))
        trimmed = [1, "30-0", "5", "2", "20-0", [entry(20, '{"topic":"b"}'), entry(30, '{"topic":"c"}')]]
        self.assertEqual(read_stream("ib", 5000, trimmed).missed, 19999)
        self.assertEqual(read_stream("ib", 5000, [0]).missed, 0)
        self.assertIsNone(read_stream("ib", None, [0]).missed)


class CatchUpTests(SynchronousTestCase):
    def caught(self, *ids: int) -> list[tuple[int, Recipient, Outbound]]:
        return [(i, Recipient("all", "ib"), Outbound.rendered(b'{"topic":"%d"}' % i, i)) for i in ids]

    def test_gates_merge_stream_and_queue_once_in_order(self) -> None:
        """Opening a gate gives the stream's entries and what was queued meanwhile merged by id, above the last routed id, each once."""
        gates = Gates()
        key = ("app", "ib")
        self.assertFalse(gates.queue(key, self.caught(1)[0]), "not gated: route it")
        gates.close(key)
        for item in self.caught(5, 6, 7):
            self.assertTrue(gates.queue(key, item))
        self.assertTrue(gates and key in gates)
        opened = gates.open(key, since=2, missed=self.caught(2, 3, 4, 5, 6))
        self.assertEqual([i for i, _, _ in opened], [3, 4, 5, 6, 7])
        self.assertFalse(gates)
        gates.close(key)
        gates.close(key)  # closing again keeps what is queued
        gates.queue(key, self.caught(9)[0])
        gates.close(key)
        self.assertEqual([i for i, _, _ in gates.open(key, 0, [])], [9])
        gates.close(key)
        self.assertTrue(gates.drop(key))
        self.assertFalse(gates.drop(key))

    def test_replay_backlog_adds_what_came_during_the_read(self) -> None:
        """A resume's backlog is the read's entries for the session, then later messages routed while reading; it resumes from the last."""
        read = read_stream(
            "ib",
            1000,
            [1, "3-0", "3", "3", "1-0", [["2-0", ["d", encode_payload(b'"B"', Recipient("all", "ib"), b'{"topic":"a"}').decode()]]]],
        )
        caught = [*self.caught(2000), (4000, Recipient("user", "ib", user_id="other"), Outbound.rendered(b"{}", 4000)), *self.caught(5000)]
        replay = replay_backlog(read, 1000, caught, lambda r: r.type == "all")
        self.assertEqual(([m.id for m in replay.backlog], replay.resume_id, replay.missed), ([2000, 5000], 5000, None))


class URLTests(SynchronousTestCase):
    def test_parts_and_errors(self) -> None:
        """The URL's host, port, database and credentials; a bad one names the option."""
        url = RedisURL("redis://user:p%40ss@example.com:6380/2")
        self.assertEqual((url.host, url.port, url.db, url.username, url.password), ("example.com", 6380, 2, "user", "p@ss"))
        self.assertEqual(url.describe(), "redis://example.com:6380/2")
        self.assertEqual(RedisURL("redis://secret@h").password, "secret")
        for bad in ("redis://h/x", "redis://h?foo=1", "redis://h?ca_file=/x", "redis://h:99999"):
            with self.assertRaises(HubUnavailable) as caught:
                RedisURL(bad)
            self.assertIn("option 'hub'", str(caught.exception))
