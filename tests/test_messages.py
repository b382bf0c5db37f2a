"""Validation of /sendmessage bodies and the add-in JSON they become."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pns4ones.messages import MAX_FIELD, RECIPIENT_TYPES, Message, MessageError, Notification, SendRequest, parse_send, render_addin_json

from .vectors import WIRE

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)


def _send(kind: str, ib: str, target: str, topic: str, data: dict[str, str], upper: bool) -> dict[str, Any]:
    name = {"user": "UserId", "group": "UserGroup", "all": "UserId"}[kind]
    recipient = {"Type": kind.upper() if upper else kind, "IbId": ib}
    if kind != "all":
        recipient[name.upper() if upper else name] = target
    return {"Recipient": recipient, "Message": {"Topic": topic, "Data": data}}


#: Well-formed /sendmessage bodies.
SENDS = st.builds(
    _send,
    st.sampled_from(["user", "group", "all"]),
    _TEXT.filter(bool),
    _TEXT.filter(bool),
    _TEXT,
    st.dictionaries(_TEXT, _TEXT, max_size=3),
    st.booleans(),
)

MANUAL_EXAMPLE = """{
    "Recipient": {
    "Type": "all",
    "IbId": "d2273d53-b633-4817-a006-4fa627a5dea9"
    } ,
    "Message": {
         "Topic": "Hello",
         "Notification": {
             "Title": "Заголовок",
             "Body": "Тело сообщения",
             "Important": false
         } ,
         "Data": {
             "param1": "value 1",
             "param2": "value 2"
    }
}
}"""


def body(recipient: dict, message: dict) -> bytes:
    return json.dumps({"Recipient": recipient, "Message": message}).encode()


class ParseTests(SynchronousTestCase):
    def test_manual_example_renders_vector(self) -> None:
        """The manual's example request becomes exactly the vector's plaintext."""
        send = parse_send(MANUAL_EXAMPLE.encode("utf-8"))
        self.assertEqual(send.recipient.type, "all")
        self.assertEqual(render_addin_json(send.message).decode(), WIRE["message_frames"][1]["plaintext_utf8"])

    def test_topic_only_vector(self) -> None:
        """A topic-only message renders as the first vector."""
        send = parse_send(body({"Type": "user", "IbId": "ib", "UserId": "u"}, {"Topic": "Hello"}))
        self.assertEqual(render_addin_json(send.message).decode(), WIRE["message_frames"][0]["plaintext_utf8"])

    def test_stock_extension_quirks(self) -> None:
        """BOM, nulls for unset fields, pretty printing and any member-name case are accepted."""
        raw = "\ufeff" + json.dumps(
            {
                "recipient": {"TYPE": "User", "ibid": "ib", "userid": "u", "UserGroup": None},
                "MESSAGE": {
                    "Topic": None,
                    "Notification": {"Title": "t", "Body": None, "Icon": None, "Action": None, "Important": None},
                    "Data": None,
                },
            },
            indent=4,
        )
        send = parse_send(raw.encode("utf-8"))
        self.assertEqual((send.recipient.type, send.recipient.user_id), ("user", "u"))
        self.assertEqual(render_addin_json(send.message), b'{"notification": {"title": "t", "important": false}}')

    def test_errors_name_the_field(self) -> None:
        """Each malformed body is a MessageError naming the member at fault."""
        cases = [
            (b"{not json", "body"),
            (b"", "body"),
            (b"[]", "body"),
            (b"\xff\xfe", "body"),
            (body({"Type": "x", "IbId": "i"}, {}), "Recipient.Type"),
            (body({"Type": "all"}, {}), "Recipient.IbId"),
            (body({"Type": "user", "IbId": "i"}, {}), "Recipient.UserId"),
            (body({"Type": "group", "IbId": "i"}, {}), "Recipient.UserGroup"),
            (body({"Type": "all", "IbId": "i"}, {"Data": {"n": 1}}), "Message.Data.n"),
            (body({"Type": "all", "IbId": "i"}, {"Data": ["x"]}), "Message.Data"),
            (body({"Type": "all", "IbId": "i"}, {"Notification": {"Important": "yes"}}), "Message.Notification.Important"),
            (body({"Type": "all", "IbId": "i"}, {"Topic": 5}), "Message.Topic"),
            (json.dumps({"Recipient": {"Type": "all", "IbId": "i"}}).encode(), "Message"),
            (json.dumps({"Message": {}}).encode(), "Recipient"),
        ]
        for raw, field in cases:
            with self.assertRaises(MessageError, msg=raw) as ctx:
                parse_send(raw)
            self.assertEqual(ctx.exception.field, field, raw)

    @settings(max_examples=300, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=200),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=10), c, max_size=3),
                max_leaves=10,
            ).map(lambda o: json.dumps(o).encode()),
        )
    )
    def test_arbitrary_input(self, raw: bytes) -> None:
        """Arbitrary bytes or JSON either parse into a request that holds the rules, or raise MessageError naming a member and why."""
        try:
            request = parse_send(raw)
        except MessageError as e:
            self.assertTrue(e.field.split(".")[0] in ("body", "Recipient", "Message"), e.field)
            self.assertTrue(e.reason)
            self.assertEqual(e.as_json(), {"error": "bad_request", "field": e.field, "reason": e.reason})
            return
        self.assert_holds(request)

    def assert_holds(self, request: SendRequest) -> None:
        r = request.recipient
        self.assertIn(r.type, RECIPIENT_TYPES)
        self.assertTrue(r.ib_id)
        self.assertEqual(bool(r.user_id), r.type == "user")
        self.assertEqual(bool(r.group), r.type == "group")
        for value in (r.ib_id, r.user_id, r.group, request.message.topic):
            self.assertLessEqual(len(value), MAX_FIELD)
        self.assertTrue(all(isinstance(v, str) for v in request.message.data.values()))
        self.assertIsInstance(json.loads(render_addin_json(request.message)), dict)

    @settings(max_examples=300, deadline=None)
    @given(SENDS)
    def test_valid_requests_parse_to_what_they_say(self, doc: dict[str, Any]) -> None:
        """A well-formed body, whatever the case of its member names and its text, parses to exactly its recipient and message."""
        request = parse_send(json.dumps(doc, ensure_ascii=False).encode())
        self.assert_holds(request)
        rec = {k.lower(): v for k, v in doc["Recipient"].items()}
        self.assertEqual((request.recipient.type, request.recipient.ib_id), (rec["type"].lower(), rec["ibid"]))
        self.assertEqual(request.recipient.target, rec.get("userid", "") if rec["type"].lower() == "user" else rec.get("usergroup", ""))
        self.assertEqual((request.message.topic, dict(request.message.data)), (doc["Message"]["Topic"], doc["Message"]["Data"]))


class RenderTests(SynchronousTestCase):
    def test_quotes_and_controls_escaped(self) -> None:
        """Quotes, backslashes, NUL and newlines are JSON-escaped; output parses back."""
        msg = Message(topic='a"b\\c', notification=Notification(title='"Q"\n', body="x\x00y"), data={'k"': 'v\t"'})
        raw = render_addin_json(msg)
        self.assertTrue(raw.startswith(b"{"))
        self.assertNotIn(b"\x00", raw)
        self.assertEqual(json.loads(raw)["notification"]["title"], '"Q"\n')

    def test_astral_as_surrogate_pairs(self) -> None:
        """Emoji become \\ud83d\\ude00 escapes; Cyrillic stays raw UTF-8."""
        raw = render_addin_json(Message(topic="Привет 😀"))
        self.assertIn("Привет".encode(), raw)
        self.assertIn(b"\\ud83d\\ude00", raw)
        self.assertTrue(all(b < 0xF0 for b in raw))
        self.assertEqual(json.loads(raw)["topic"], "Привет 😀")

    def test_omission_rules(self) -> None:
        """Empty topic, data and a notification without title and body are left out."""
        self.assertEqual(render_addin_json(Message(notification=Notification(icon="i"))), b"{}")
        self.assertEqual(
            render_addin_json(Message(notification=Notification(body="b", important=True))),
            b'{"notification": {"body": "b", "important": true}}',
        )

    @settings(max_examples=300, deadline=None)
    @given(st.text(), st.text(), st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3))
    def test_any_text_round_trips(self, topic: str, title: str, data: dict) -> None:
        """Whatever the text, the plaintext starts with '{', has no 4-byte UTF-8 or NUL, and parses back."""
        raw = render_addin_json(Message(topic=topic, notification=Notification(title=title), data=data))
        self.assertTrue(raw.startswith(b"{"))
        self.assertNotIn(b"\x00", raw)
        self.assertFalse(any(b >= 0xF0 for b in raw))
        json.loads(raw)


def _outcome(parse: Any, arg: Any) -> Any:
    """What a parser gives for ``arg``: its request, or the field and reason of its MessageError."""
    try:
        return parse(arg)
    except MessageError as e:
        return ("error", e.field, e.reason)


#: Member names as senders spell them, and a few that are not members.
_NAMES = st.sampled_from(["Recipient", "recipient", "Message", "MESSAGE", "Type", "type", "IbId", "ibid", "UserId", "USERID", "UserGroup",
                          "Topic", "Notification", "Title", "Body", "Icon", "Action", "Important", "Data", "TTL", "x"])  # fmt: skip
_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.sampled_from(["user", "GROUP", "all", "x", ""]) | _TEXT,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(_NAMES, c, max_size=5),
    max_leaves=25,
)


class FastPathTests(SynchronousTestCase):
    """The hot path's shortcuts give exactly what the reference code gives."""

    @settings(max_examples=1000, deadline=None)
    @given(st.one_of(SENDS, st.dictionaries(_NAMES, _VALUES, max_size=4), _VALUES))
    def test_parse_send_object_as_the_full_check(self, doc: Any) -> None:
        """parse_send_object answers any document as the full, in-order check does: the same request or the same error."""
        from pns4ones.messages import _parse_checked, parse_send_object

        self.assertEqual(_outcome(parse_send_object, doc), _outcome(_parse_checked, doc))

    @settings(max_examples=1000, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=60),
            SENDS.map(lambda o: json.dumps(o, ensure_ascii=False).encode()),
            st.dictionaries(_NAMES, _VALUES, max_size=4).map(lambda o: json.dumps(o).encode()),
            _VALUES.map(lambda o: b"\xef\xbb\xbf" + json.dumps(o, ensure_ascii=False).encode("utf-8", "surrogatepass")),
        )
    )
    def test_parse_send_as_its_parts(self, raw: bytes) -> None:
        """parse_send answers any bytes as parse_send_object(decode_send_body(...)) does: the same request or the same error."""
        from pns4ones.messages import decode_send_body, parse_send_object

        self.assertEqual(_outcome(parse_send, raw), _outcome(lambda b: parse_send_object(decode_send_body(b)), raw))

    @settings(max_examples=1000, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=60),
            _VALUES.map(lambda o: json.dumps(o).encode()),
            _VALUES.map(lambda o: json.dumps(o, ensure_ascii=False).encode("utf-8", "surrogatepass")),
            st.sampled_from(
                [
                    b"-9223372036854775809",
                    b'"\\ud800"',
                    b"NaN",
                    b"[Infinity]",
                    b"1e999",
                    b"\xef\xbb\xbf{}",
                    b"  ",
                    b"{}x",
                    b"[1,]",
                    b'{"a":1,"a":2}',
                ]
            ),
        )
    )
    def test_decode_send_body_as_the_standard_library(self, raw: bytes) -> None:
        """decode_send_body gives what decode_json_body (json.loads) gives, or the same error; integers beyond 64 bits as floats."""
        from pns4ones.messages import decode_json_body, decode_send_body

        def beyond_64_bits_as_float(value: Any) -> Any:
            if isinstance(value, list):
                return [beyond_64_bits_as_float(v) for v in value]
            if isinstance(value, dict):
                return {k: beyond_64_bits_as_float(v) for k, v in value.items()}
            if type(value) is int and not -(2**63) <= value < 2**64:
                return float(value)
            return value

        expected = _outcome(decode_json_body, raw)
        self.assertIn(repr(_outcome(decode_send_body, raw)), (repr(expected), repr(beyond_64_bits_as_float(expected))))

    @settings(max_examples=1000, deadline=None)
    @given(
        st.text(max_size=8),
        st.none()
        | st.builds(Notification, st.text(max_size=5), st.text(max_size=5), st.text(max_size=5), st.text(max_size=5), st.booleans()),
        st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=3),
    )
    def test_render_as_json_dumps(self, topic: str, note: Notification | None, data: dict[str, str]) -> None:
        """render_addin_json writes byte for byte what json.dumps of the add-in object writes (then the add-in's escapes)."""
        from pns4ones.messages import addin_object, dumps_for_addin

        message = Message(topic, note, data)
        self.assertEqual(render_addin_json(message), dumps_for_addin(addin_object(message)))

    @settings(max_examples=500, deadline=None)
    @given(
        st.text(min_size=28, max_size=60),
        st.text(min_size=28, max_size=60),
        st.dictionaries(st.text(max_size=5), st.text(min_size=28, max_size=60), max_size=3),
    )
    def test_render_long_strings_as_json_dumps(self, topic: str, body: str, data: dict[str, str]) -> None:
        """Long strings (escaped by orjson) too: the same bytes as json.dumps, lone surrogates and astral characters included."""
        from pns4ones.messages import addin_object, dumps_for_addin

        message = Message(topic, Notification("t", body), data)
        self.assertEqual(render_addin_json(message), dumps_for_addin(addin_object(message)))

    def test_render_long_strings_every_escape(self) -> None:
        """Every character that JSON escapes, a lone surrogate, Cyrillic and an emoji, in a string long enough for orjson."""
        from pns4ones.messages import addin_object, dumps_for_addin

        tail = "".join(map(chr, range(0x20))) + '"\\/\x7f\u2028Привет'
        for value in ("x" * 40 + tail, "x" * 40 + "\ud800" + tail, "x" * 40 + "😀" + tail):
            message = Message(value, Notification("t", value), {"k": value})
            self.assertEqual(render_addin_json(message), dumps_for_addin(addin_object(message)))
