"""Groups, delivery reports, presence and kept messages on the real ``twistd -n pns4ones`` (issue 10)."""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from typing import Any
from urllib.parse import quote

from twisted.internet.defer import inlineCallbacks

from pns4ones_client import Subscriber

from .support import wait_for, without_id
from .test_e2e_service import ServiceTestBase, to

GROUP = "Менеджеры"
_markers = itertools.count(1)


class DeliveryTestBase(ServiceTestBase):
    @inlineCallbacks
    def call(self, method: str, path: str, doc: Any = None, token: str | None = None, raw: bytes | None = None) -> Any:
        """An API call with the application's token; (status, JSON body)."""
        if token is None:
            token = yield self.token()
        body = raw if raw is not None else (json.dumps(doc).encode() if doc is not None else None)
        response = yield self.http.request(method, self.server.url + path, data=body, headers={"Authorization": f"Bearer {token}"})
        content = yield response.content()
        return response.code, json.loads(content) if content else None

    def group_path(self, group: str = GROUP, ib: str = "ib1") -> str:
        return f"/groups/{quote(ib, safe='')}/{quote(group, safe='')}"

    @inlineCallbacks
    def before_marker(self, sub: Subscriber, user: str, ib: str = "ib1", app: dict[str, str] | None = None) -> Any:
        """
        The topics ``sub`` received before a marker sent to its user now.  A
        session writes in send order, so nothing sent earlier can still be on its
        way once the marker is here: no "nothing arrived for a while" window.
        """
        token = yield self.token(app)
        marker = f"marker-{next(_markers)}"
        response, _ = yield self.send_json(token, {"Recipient": to("user", ib=ib, UserId=user), "Message": {"Topic": marker}})
        self.assertEqual(response.code, 200)
        got = []
        while True:
            message = sub.receive(5)
            self.assertIsNotNone(message, f"the marker did not reach {user} (got {got})")
            assert message is not None
            topic = message.get("topic", "")
            if topic == marker:
                return got
            if not topic.startswith("marker-"):  # another check's marker to the same user
                got.append(topic)

    @inlineCallbacks
    def send_json(self, token: str, doc: Any, query: str = "") -> Any:
        response = yield self.http.post(
            f"{self.server.url}/sendmessage{query}", data=json.dumps(doc).encode(), headers={"Authorization": f"Bearer {token}"}
        )
        body = yield response.json()
        return response, body


class GroupTests(DeliveryTestBase):
    ini = "max_group_size = 5\nmax_groups = 2\n"

    @inlineCallbacks
    def test_group_send_reaches_members_once(self) -> None:
        """A group send reaches every member session once (also a member registered with the group name) and nobody else."""
        m1a, m1b = self.subscribe("m1"), self.subscribe("m1")
        m2 = self.subscribe("m2", group=GROUP)
        registered_only = self.subscribe("g1", group=GROUP)
        outsider = self.subscribe("u3")
        other_ib = self.subscribe("m1", ib="ib2")
        other_app = self.subscribe("m1", app=self.app_b)
        code, doc = yield self.call("PUT", self.group_path(), {"UserIds": ["m1", "m2", "offline"]})
        self.assertEqual((code, doc["UserIds"]), (200, ["m1", "m2", "offline"]))
        token = yield self.token()
        response, body = yield self.send_json(token, {"Recipient": to("group", UserGroup=GROUP), "Message": {"Topic": "g"}})
        self.assertEqual(without_id(body), {"sessions": 4, "users": 3, "stored": False})
        self.assertEqual(response.headers.getRawHeaders("X-PNS-Sessions"), ["4"])
        self.assertEqual(response.headers.getRawHeaders("X-PNS-Users"), ["3"])
        for sub, user in ((m1a, "m1"), (m1b, "m1"), (m2, "m2"), (registered_only, "g1")):
            self.assertEqual((yield self.before_marker(sub, user)), ["g"])
        self.assertEqual((yield self.before_marker(outsider, "u3")), [])
        self.assertEqual((yield self.before_marker(other_ib, "m1", ib="ib2")), [])
        self.assertEqual((yield self.before_marker(other_app, "m1", app=self.app_b)), [])

    @inlineCallbacks
    def test_membership_changes_take_effect_on_next_send(self) -> None:
        """Adding, removing a member and deleting the group change the very next send."""
        a, b = self.subscribe("a"), self.subscribe("b")
        token = yield self.token()
        group = {"Recipient": to("group", UserGroup=GROUP), "Message": {"Topic": "x"}}
        code, doc = yield self.call("POST", self.group_path() + "/members", {"userids": ["a"]}, token)
        self.assertEqual((code, doc["added"], doc["UserIds"]), (200, 1, ["a"]))
        _, body = yield self.send_json(token, group)
        self.assertEqual(body["sessions"], 1)
        yield self.call("POST", self.group_path() + "/members", {"UserIds": ["b", "a"]}, token)
        _, body = yield self.send_json(token, group)
        self.assertEqual(body["sessions"], 2)
        code, doc = yield self.call("DELETE", self.group_path() + "/members/a", token=token)
        self.assertEqual((code, doc["removed"], doc["UserIds"]), (200, 1, ["b"]))
        _, body = yield self.send_json(token, group)
        self.assertEqual(body["sessions"], 1)
        code, doc = yield self.call("DELETE", self.group_path(), token=token)
        self.assertEqual((code, doc["removed"]), (200, 1))
        _, body = yield self.send_json(token, group)
        self.assertEqual(body["sessions"], 0)
        self.assertEqual((yield self.before_marker(a, "a")), ["x", "x"])
        self.assertEqual((yield self.before_marker(b, "b")), ["x", "x"])

    @inlineCallbacks
    def test_groups_listed_survive_restart_and_cli(self) -> None:
        """Groups with Cyrillic names are listed by the API and the CLI and survive a restart."""
        token = yield self.token()
        yield self.call("PUT", self.group_path(), {"UserIds": ["Иванов", "u2"]}, token)
        yield self.call("PUT", self.group_path("a/b c"), {"UserIds": ["u2"]}, token)
        self.server.restart()
        token = yield self.token()
        code, doc = yield self.call("GET", "/groups/ib1", token=token)
        self.assertEqual((code, doc["groups"]), (200, [{"Group": "a/b c", "members": 1}, {"Group": GROUP, "members": 2}]))
        code, doc = yield self.call("GET", self.group_path(), token=token)
        self.assertEqual(doc["UserIds"], ["u2", "Иванов"])
        listed = json.loads(self.server.admin("groups", self.app_a["id"], "--json").stdout)
        self.assertEqual(listed, [{"IbId": "ib1", "Group": "a/b c", "members": 1}, {"IbId": "ib1", "Group": GROUP, "members": 2}])
        members = json.loads(self.server.admin("group_members", self.app_a["id"], "ib1", GROUP, "--json").stdout)
        self.assertEqual(members["UserIds"], ["u2", "Иванов"])
        self.assertEqual(self.server.admin("groups", "no-such-app", check=False).returncode, 1)
        # The other application sees none of it.
        token_b = yield self.token(self.app_b)
        code, doc = yield self.call("GET", "/groups/ib1", token=token_b)
        self.assertEqual(doc["groups"], [])

    @inlineCallbacks
    def test_bad_group_input_changes_nothing(self) -> None:
        """Malformed member lists answer 400, over-size 413, no token 401; the group stays as it was."""
        token = yield self.token()
        yield self.call("PUT", self.group_path(), {"UserIds": ["u1"]}, token)
        cases = [
            ({"UserIds": ["ok", 5]}, 400, "UserIds[1]"),
            ({"UserIds": ["ok", ""]}, 400, "UserIds[1]"),
            ({"UserIds": "u1"}, 400, "UserIds"),
            ({"Users": ["u1"]}, 400, "UserIds"),
            ({"UserIds": [f"u{i}" for i in range(6)]}, 413, "UserIds"),
        ]
        for doc, status, field in cases:
            for method, path in (("PUT", self.group_path()), ("POST", self.group_path() + "/members")):
                code, answer = yield self.call(method, path, doc, token)
                self.assertEqual((code, answer["field"]), (status, field), (method, doc))
        code, answer = yield self.call("PUT", self.group_path(), raw=b"{not json", token=token)
        self.assertEqual((code, answer["error"]), (400, "bad_request"))
        code, answer = yield self.call("POST", self.group_path() + "/members", {"UserIds": ["a", "b", "c", "d", "e"]}, token)
        self.assertEqual((code, answer["error"]), (413, "too_large"))
        code, answer = yield self.call("GET", "/groups/ib1/%FF", token=token)
        self.assertEqual((code, answer["error"]), (400, "bad_request"))
        code, _ = yield self.call("PUT", self.group_path(), {"UserIds": ["x"]}, token="nonsense")
        self.assertEqual(code, 401)
        yield self.call("PUT", self.group_path("second"), {"UserIds": ["x"]}, token)
        code, answer = yield self.call("PUT", self.group_path("third"), {"UserIds": ["x"]}, token)
        self.assertEqual((code, answer["field"]), (413, "Group"))
        code, doc = yield self.call("GET", self.group_path(), token=token)
        self.assertEqual(doc["UserIds"], ["u1"])
        self.assertIn("peer=127.0.0.1", self.server.log())


class PresenceTests(DeliveryTestBase):
    @inlineCallbacks
    def test_presence_follows_connects_and_disconnects(self) -> None:
        """Presence lists the live sessions per user, with connected-since, peer and group, and forgets closed ones."""
        before = time.time()
        a1, _a2 = self.subscribe("a"), self.subscribe("a", group="g")
        self.subscribe("b")
        self.subscribe("a", ib="ib2")
        token = yield self.token()
        code, doc = yield self.call("GET", "/presence/ib1", token=token)
        self.assertEqual(
            (code, doc["users"], doc["online"], doc["sessions"]),
            (200, [{"UserId": "a", "sessions": 2}, {"UserId": "b", "sessions": 1}], 2, 3),
        )
        code, doc = yield self.call("GET", "/presence/ib1/a", token=token)
        self.assertTrue(doc["online"])
        self.assertEqual(sorted(s["group"] for s in doc["sessions"]), ["", "g"])
        self.assertEqual({s["peer"] for s in doc["sessions"]}, {"127.0.0.1"})
        self.assertTrue(all(before - 1 <= s["connected_since_unix"] <= time.time() for s in doc["sessions"]))
        a1.close()
        wait_for(lambda: "subscription ended" in self.server.log(), what="the end of a1")
        code, doc = yield self.call("GET", "/presence/ib1/a", token=token)
        self.assertEqual([s["group"] for s in doc["sessions"]], ["g"])
        code, doc = yield self.call("GET", "/presence/ib1/nobody", token=token)
        self.assertEqual((doc["online"], doc["sessions"]), (False, []))
        token_b = yield self.token(self.app_b)
        code, doc = yield self.call("GET", "/presence/ib1", token=token_b)
        self.assertEqual(doc["users"], [])
        code, _ = yield self.call("GET", "/presence/ib1", token="bad")
        self.assertEqual(code, 401)


class KeptTests(DeliveryTestBase):
    ini = "max_ttl = 3600\nmax_kept_per_user = 3\n"

    @inlineCallbacks
    def test_kept_user_messages_arrive_once_in_order_after_restart(self) -> None:
        """TTL messages for an offline user survive a restart and reach its first session once, in order, before live ones."""
        token = yield self.token()
        _, body = yield self.send_json(token, {"Recipient": to("user", UserId="late"), "Message": {"Topic": "k1", "TTL": 600}})
        self.assertEqual(without_id(body), {"sessions": 0, "users": 0, "stored": True})
        _, body = yield self.send_json(token, {"Recipient": to("user", UserId="late"), "Message": {"Topic": "k2"}}, "?ttl=600")
        self.assertTrue(body["stored"])
        _, body = yield self.send_json(token, {"Recipient": to("user", UserId="late"), "Message": {"Topic": "no-ttl"}})
        self.assertEqual(without_id(body), {"sessions": 0, "users": 0, "stored": False})
        self.assertEqual(json.loads(self.server.admin("kept", "--json").stdout)[0]["kept"], 2)
        self.server.restart()
        token = yield self.token()
        sub = self.subscribe("late")
        yield self.send_json(token, {"Recipient": to("user", UserId="late"), "Message": {"Topic": "live", "TTL": 600}})
        self.assertEqual((yield self.before_marker(sub, "late")), ["k1", "k2", "live"])
        again = self.subscribe("late")
        self.assertEqual((yield self.before_marker(again, "late")), [])
        self.assertEqual(json.loads(self.server.admin("kept", "--json").stdout)[0]["kept"], 0)

    @inlineCallbacks
    def test_live_messages_do_not_overtake_kept_ones(self) -> None:
        """Live messages sent while a user registers arrive only after all of its kept messages, in order."""
        token = yield self.token()
        for i in range(150):
            yield self.send_json(token, {"Recipient": to("all"), "Message": {"Topic": f"k{i:03}", "TTL": 600}})
        stop = threading.Event()
        sent = [0]

        def hammer() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.server.api_port, timeout=10)
            n = 0
            while not stop.is_set():
                body = json.dumps({"Recipient": to("user", UserId="u1"), "Message": {"Topic": f"live{n:05}"}})
                conn.request("POST", "/sendmessage", body=body, headers={"Authorization": f"Bearer {token}"})
                conn.getresponse().read()
                n += 1
                sent[0] = n
            conn.close()

        thread = threading.Thread(target=hammer)
        thread.start()
        try:
            wait_for(lambda: sent[0] >= 5, what="live sends before the registration")
            sub = self.subscribe("u1")
            at_registration = sent[0]
            wait_for(lambda: sent[0] >= at_registration + 20, what="live sends after the registration")
        finally:
            stop.set()
            thread.join()
        got = yield self.before_marker(sub, "u1")
        kept, live = got[:150], got[150:]
        self.assertEqual(kept, [f"k{i:03}" for i in range(150)])
        self.assertTrue(live and all(t.startswith("live") for t in live), got[140:160])
        self.assertEqual(live, sorted(live))

    @inlineCallbacks
    def test_kept_group_and_all_messages_reach_each_user_once(self) -> None:
        """Group and all TTL messages reach users who were offline when they connect, not those reached live, and each user once."""
        online = self.subscribe("on")
        token = yield self.token()
        yield self.call("PUT", self.group_path(), {"UserIds": ["on", "off"]}, token)
        _, body = yield self.send_json(token, {"Recipient": to("group", UserGroup=GROUP), "Message": {"Topic": "g", "TTL": 600}})
        self.assertEqual(without_id(body), {"sessions": 1, "users": 1, "stored": True})
        _, body = yield self.send_json(token, {"Recipient": to("all"), "Message": {"Topic": "all", "TTL": 600}})
        self.assertEqual((yield self.before_marker(online, "on")), ["g", "all"])
        self.assertEqual((yield self.before_marker(self.subscribe("on"), "on")), [])
        off = self.subscribe("off")
        self.assertEqual((yield self.before_marker(off, "off")), ["g", "all"])
        self.assertEqual((yield self.before_marker(self.subscribe("off"), "off")), [])
        stranger = self.subscribe("stranger")
        self.assertEqual((yield self.before_marker(stranger, "stranger")), ["all"])
        elsewhere = self.subscribe("off", ib="ib2")
        self.assertEqual((yield self.before_marker(elsewhere, "off", ib="ib2")), [])

    @inlineCallbacks
    def test_expired_message_never_arrives(self) -> None:
        """A kept message whose TTL has passed is not written to a user who connects later."""
        token = yield self.token()
        yield self.send_json(token, {"Recipient": to("user", UserId="u1"), "Message": {"Topic": "short", "TTL": 0.5}})
        yield self.send_json(token, {"Recipient": to("user", UserId="u1"), "Message": {"Topic": "long", "TTL": 600}})
        time.sleep(0.7)  # the TTL passes (time, not synchronization)
        self.assertEqual((yield self.before_marker(self.subscribe("u1"), "u1")), ["long"])

    @inlineCallbacks
    def test_bounds_drop_the_oldest_and_say_so(self) -> None:
        """Over max_kept_per_user the oldest kept messages are dropped, reported, counted and logged."""
        token = yield self.token()
        for i in range(5):
            _, body = yield self.send_json(token, {"Recipient": to("user", UserId="u1"), "Message": {"Topic": f"m{i}", "TTL": 600}})
        self.assertEqual(without_id(body), {"sessions": 0, "users": 0, "stored": True, "dropped": 1})
        self.assertIn("over max_kept_per_user=3: dropped the 1 oldest", self.server.log())
        counts = json.loads(self.server.admin("kept", "--json").stdout)
        self.assertEqual((counts[0]["kept"], counts[0]["dropped"]), (3, 2))
        self.assertEqual((yield self.before_marker(self.subscribe("u1"), "u1")), ["m2", "m3", "m4"])

    @inlineCallbacks
    def test_bad_ttl_is_refused_and_nothing_kept(self) -> None:
        """TTL not a number, negative or over max_ttl answers 400 naming the field, and nothing is sent or kept."""
        sub = self.subscribe("u1")
        token = yield self.token()
        for ttl, field in (("abc", "Message.TTL"), (-1, "Message.TTL"), (3601, "Message.TTL"), (True, "Message.TTL"), ([1], "Message.TTL")):
            response, body = yield self.send_json(token, {"Recipient": to("user", UserId="u1"), "Message": {"Topic": "x", "TTL": ttl}})
            self.assertEqual((response.code, body["field"]), (400, field), ttl)
        for query in ("?ttl=abc", "?ttl=-5", "?ttl=1e9", "?ttl=nan"):
            response, body = yield self.send_json(token, {"Recipient": to("user", UserId="u2"), "Message": {"Topic": "x"}}, query)
            self.assertEqual((response.code, body["field"]), (400, "ttl"), query)
        response, body = yield self.send_json(token, {"Recipient": to("user", UserId="u2"), "Message": {"Topic": "x", "TTL": "60"}})
        self.assertEqual((response.code, body["stored"]), (200, True))
        self.assertEqual((yield self.before_marker(sub, "u1")), [])
        self.assertEqual(json.loads(self.server.admin("kept", "--json").stdout)[0]["kept"], 1)
