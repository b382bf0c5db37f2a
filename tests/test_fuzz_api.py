"""
Fuzzing (hypothesis) of ``POST /tickets`` and the groups API, in process
through the front connection and twisted.web over the in-memory store
(:mod:`tests.fuzz_harness`).

* ``/tickets``: random JSON texts (hostile numbers and literals that are not
  JSON, wrong types, lone surrogates, long strings, random members): never a
  5xx, every error a JSON reason, and every ticket granted names exactly the
  information base, user and groups asked for, within ``ticket_max_ttl``, and
  subscribes that user.
* groups: random sequences of PUT, POST members, DELETE member, DELETE group
  and GETs with random and hostile names (in the path, percent-encoded, and in
  bodies), checked against a model of the membership after every step: the
  status each change must get (200, 400, 413), and the members each group has.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pns4ones import tickets
from pns4ones.messages import MAX_FIELD

from .fuzz_harness import FUZZ, Node, WebSocketPeer, examples, http_request
from .http_support import Response

#: JSON texts for a value: hostile numbers (some not JSON at all), wrong types, strings of every kind.
NUMBERS = ("NaN", "Infinity", "-Infinity", "1e999", "-1e999", "-1", "0", "0.4", "1.5", "5", "60", "1e308", str(2**64), "1" + "0" * 400)
STRINGS = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["", " ", "x" * MAX_FIELD, "x" * (MAX_FIELD + 1), "ib1", "u1", "g1", "a/b", "%2F", "\u202e", "\U0001f600"]),
)


def string_text(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


@st.composite
def json_value(draw: Any, depth: int = 0) -> str:
    """A JSON text of any kind, or one that is not JSON (NaN, a lone surrogate escape)."""
    kind = draw(
        st.sampled_from(["number", "string", "string", "literal", "surrogate", "array", "object"] if depth < 2 else ["number", "string"])
    )
    if kind == "number":
        return draw(st.sampled_from(NUMBERS))
    if kind == "string":
        return string_text(draw(STRINGS))
    if kind == "literal":
        return draw(st.sampled_from(["true", "false", "null"]))
    if kind == "surrogate":
        return draw(st.sampled_from(['"\\ud800"', '"a\\udfff"', '"\\ud83d\\ude00"']))
    if kind == "array":
        return "[" + ", ".join(draw(st.lists(json_value(depth + 1), max_size=3))) + "]"
    members = draw(st.lists(st.tuples(STRINGS, json_value(depth + 1)), max_size=3))
    return "{" + ", ".join(f"{string_text(k)}: {v}" for k, v in members) + "}"


@st.composite
def ticket_body(draw: Any) -> tuple[bytes, dict[str, str]]:
    """A /tickets body: mostly the right members (any case) with good or hostile values; sometimes anything; and the JSON texts used."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.one_of(st.binary(max_size=40), json_value().map(lambda t: t.encode("utf-8", "surrogatepass")))), {}
    chosen: dict[str, str] = {}
    for name in ("IbId", "UserId", "UserGroups", "TTL"):
        if draw(st.integers(0, 5)) == 0:
            continue  # absent
        if name in ("IbId", "UserId"):
            good = string_text(draw(st.sampled_from(["ib1", "u1", "база", "a b", "x" * MAX_FIELD])))
        elif name == "UserGroups":
            good = json.dumps(draw(st.lists(st.sampled_from(["g1", "g2", "", "группа"]), max_size=4)), ensure_ascii=False)
        else:
            good = draw(st.sampled_from(["60", "1", "0.5", "3600", "86400", "null"]))
        spelled = draw(st.sampled_from([name, name.lower(), name.upper()]))
        chosen[spelled] = good if draw(st.booleans()) else draw(json_value())
    if draw(st.booleans()):
        chosen[draw(STRINGS)] = draw(json_value())
    return ("{" + ", ".join(f"{string_text(k)}: {v}" for k, v in chosen.items()) + "}").encode("utf-8", "surrogatepass"), chosen


def one_answer(node: Node, raw: bytes) -> Response:
    answers, _ = node.request(raw)
    assert len(answers) == 1, answers
    answer = answers[0]
    assert answer.status < 500, (raw[:300], answer)
    if answer.status >= 400:
        doc = json.loads(answer.body)
        assert doc["error"] and doc["reason"], answer
    return answer


class TicketFuzz(SynchronousTestCase):
    """POST /tickets with random bodies."""

    @settings(FUZZ, max_examples=examples(400))
    @given(ticket_body())
    def test_ticket_bodies(self, body: tuple[bytes, dict[str, str]]) -> None:
        """Any body: 200 or a JSON 4xx; a ticket granted names what was asked, within ticket_max_ttl, and subscribes that user."""
        raw, chosen = body
        node = Node()
        answer = one_answer(node, http_request(b"POST", b"/tickets", raw, token=node.token))
        self.assertIn(answer.status, (200, 400))
        if answer.status != 200:
            return
        doc = json.loads(answer.body)
        asked = {k.lower(): json.loads(v) for k, v in chosen.items()}
        ticket = tickets.verify(doc["ticket"], lambda app_id: node.app.server_key if app_id == node.app.id else None, node.clock.seconds())
        self.assertEqual((ticket.ib_id, ticket.user_id), (asked["ibid"], asked["userid"]))
        self.assertEqual(list(ticket.groups), list(dict.fromkeys(g for g in asked.get("usergroups") or [] if g)))
        ttl = asked.get("ttl")
        expected = node.config.ticket_ttl if ttl is None else max(1, int(min(ttl, node.config.ticket_max_ttl)))
        self.assertTrue(math.isfinite(doc["expires_in"]))
        self.assertEqual(doc["expires_in"], expected)
        self.assertEqual(doc["expires_at"], int(node.clock.seconds()) + expected)
        peer = WebSocketPeer(node, user=ticket.user_id, ticket=doc["ticket"]).open()
        self.assertTrue(peer.accepted)
        self.assertEqual(node.send(ticket.user_id, "hello", ib=ticket.ib_id), 1)

    @settings(FUZZ, max_examples=examples(150))
    @given(st.binary(max_size=200), st.sampled_from([b"POST", b"GET", b"PUT"]), st.sampled_from(["", "Bearer x", "token"]))
    def test_any_bytes(self, body: bytes, method: bytes, auth: str) -> None:
        """Any bytes as the body, any method, a good or a bad token: one answer, never a 5xx, errors in JSON."""
        node = Node()
        token = node.token if auth == "token" else ""
        headers = [(b"Authorization", auth.encode())] if auth and auth != "token" else []
        one_answer(node, http_request(method, b"/tickets", body, headers, token=token))


# -- groups ------------------------------------------------------------------------------------

#: Names for an information base, a group or a user: good ones, and ones the API must refuse (400).
GOOD_NAMES = ["ib1", "g1", "u1", "u2", "группа", "a b", "a/b", "x" * MAX_FIELD, "\U0001f600"]
BAD_NAMES = ["", "x" * (MAX_FIELD + 1)]
#: Path segments that are no name (not percent-encoded UTF-8): 400.
BAD_SEGMENTS = [b"%FF", b"%ED%A0%80", b"%C0%AF"]


def valid(name: Any) -> bool:
    return isinstance(name, str) and 0 < len(name) <= MAX_FIELD and not any(0xD800 <= ord(c) <= 0xDFFF for c in name)


def segment(name: str | bytes) -> bytes:
    return name if isinstance(name, bytes) else quote(name, safe="").encode()


#: Mostly a few common names (so that changes meet), sometimes any good one, a bad one, or a bad path segment.
OTHER_NAMES = st.sampled_from([*GOOD_NAMES[4:], *BAD_NAMES, *BAD_SEGMENTS])


def mostly(*common: str) -> st.SearchStrategy[Any]:
    return st.one_of(st.sampled_from(common), st.sampled_from(common), st.sampled_from(common), OTHER_NAMES)


ibs, groups, users = mostly("ib1", "ib2"), mostly("g1", "g2"), mostly("u1", "u2", "u3")
in_body = users.map(lambda u: u.decode() if isinstance(u, bytes) else u)  # (in a body, "%FF" is just a name)
user_lists = st.lists(st.one_of(in_body, in_body, st.sampled_from([1, None, ["u1"], {"a": 1}, "\ud800"])), max_size=6)
operations = st.one_of(
    st.tuples(st.just("put"), ibs, groups, st.one_of(user_lists, st.integers(48, 55).map(lambda n: [f"u{i}" for i in range(n)]))),
    st.tuples(st.just("add"), ibs, groups, user_lists),
    st.tuples(st.just("add"), ibs, groups, st.integers(44, 51).map(lambda n: [f"u{i}" for i in range(1, n)])),  # (to the limit, 50)
    st.tuples(st.just("remove"), ibs, groups, users),
    st.tuples(st.just("remove"), ibs, groups, users),
    st.tuples(st.just("delete"), ibs, groups, st.none()),
    st.tuples(st.just("body"), ibs, groups, st.one_of(json_value(), st.binary(max_size=30))),
)


@dataclass
class Model:
    """What the groups must hold: (ib, group) -> members; the limits of the node."""

    max_size: int
    max_groups: int
    groups: dict[tuple[str, str], set[str]] = field(default_factory=dict)

    def count(self) -> int:
        return len(self.groups)

    def room(self, key: tuple[str, str], size: int) -> int:
        """413 when ``size`` members are over the limit or a new group is one too many; else 200."""
        if size > self.max_size:
            return 413
        if key not in self.groups and self.count() >= self.max_groups:
            return 413
        return 200


class GroupsFuzz(SynchronousTestCase):
    """The groups API against a model, with random and hostile names and bodies."""

    @settings(FUZZ, max_examples=examples(200))
    @given(st.lists(operations, min_size=1, max_size=12))
    def test_groups_against_a_model(self, steps: list[tuple[str, Any, Any, Any]]) -> None:
        """Every change gets the status the model says (200, 400, 413) and leaves the members the model says; GETs agree with it."""
        node = Node(max_groups="3")
        model = Model(node.config.max_group_size, node.config.max_groups)
        for op, ib, group, arg in steps:
            path = b"/groups/%s/%s" % (segment(ib), segment(group))
            names_ok = valid(ib) and valid(group)
            key = (ib, group)
            if "" in (ib, group) or (op == "remove" and arg == ""):  # an empty path segment: no such route
                raw = http_request(b"DELETE" if op in ("remove", "delete") else b"PUT", path + (b"/members/" if op == "remove" else b""))
                self.assertIn(one_answer(node, raw).status, (404, 405))  # (werkzeug may see another route, for another method)
                continue
            if op in ("put", "add"):
                body = json.dumps({"UserIds": arg}, ensure_ascii=False).encode("utf-8", "surrogatepass")
                answer = one_answer(
                    node,
                    http_request(b"PUT" if op == "put" else b"POST", path + (b"/members" if op == "add" else b""), body, token=node.token),
                )
                users_ok = all(valid(u) for u in arg)
                users = list(dict.fromkeys(arg)) if users_ok else []
                if not (names_ok and users_ok):
                    expected = 413 if names_ok and len(arg) > model.max_size else 400
                elif op == "put":
                    expected = model.room(key, len(users)) if users else 200
                else:
                    expected = model.room(key, len(model.groups.get(key, set()) | set(users)))
                self.assertEqual(answer.status, expected, (op, ib, group, arg, answer))
                if expected == 200:
                    now = set(users) if op == "put" else model.groups.get(key, set()) | set(users)
                    if now:
                        model.groups[key] = now
                    else:
                        model.groups.pop(key, None)
            elif op == "remove":
                answer = one_answer(node, http_request(b"DELETE", path + b"/members/" + segment(arg), token=node.token))
                self.assertEqual(answer.status, 200 if names_ok and valid(arg) else 400, (op, ib, group, arg, answer))
                if answer.status == 200:
                    self.assertEqual(json.loads(answer.body)["removed"], int(arg in model.groups.get(key, set())))
                    model.groups.get(key, set()).discard(arg)
                    if not model.groups.get(key, True):
                        del model.groups[key]
            elif op == "delete":
                answer = one_answer(node, http_request(b"DELETE", path, token=node.token))
                self.assertEqual(answer.status, 200 if names_ok else 400)
                if answer.status == 200:
                    self.assertEqual(json.loads(answer.body)["removed"], len(model.groups.pop(key, set())))
            else:  # a body that is not {"UserIds": [...]}: 400 (or 413, never a change)
                raw = arg if isinstance(arg, bytes) else arg.encode("utf-8", "surrogatepass")
                answer = one_answer(node, http_request(b"PUT", path, raw, token=node.token))
                try:
                    doc = json.loads(raw)
                except ValueError:
                    doc = None
                if not (isinstance(doc, dict) and any(str(k).lower() == "userids" for k in doc)):
                    self.assertEqual(answer.status, 400, (raw, answer))
                if answer.status == 200:  # ({"userids": [...]} in any case, and good: the model follows)
                    users = next(v for k, v in doc.items() if str(k).lower() == "userids")
                    if users:
                        model.groups[key] = set(users)
                    else:
                        model.groups.pop(key, None)
            self.check(node, model)
        node.stop()

    def check(self, node: Node, model: Model) -> None:
        """Every group of the model, read back through the API, and each information base's list of groups."""
        for (ib, group), members in model.groups.items():
            answer = one_answer(node, http_request(b"GET", b"/groups/%s/%s" % (segment(ib), segment(group)), token=node.token))
            self.assertEqual(answer.status, 200)
            self.assertEqual(json.loads(answer.body)["UserIds"], sorted(members))
        for ib in {ib for ib, _ in model.groups} | {"ib1"}:
            answer = one_answer(node, http_request(b"GET", b"/groups/%s" % segment(ib), token=node.token))
            listed = {g["Group"]: g["members"] for g in json.loads(answer.body)["groups"]}
            self.assertEqual(listed, {g: len(m) for (i, g), m in model.groups.items() if i == ib})
