"""
The ``/sendmessage`` body and the add-in's JSON, without I/O.

:func:`parse_send` turns request bytes into a :class:`SendRequest` or raises
:class:`MessageError` naming the field; it never raises anything else.
:func:`render_addin_json` produces the exact plaintext the add-in decrypts
(docs/protocol.md section 4): lowercase keys, empty members omitted, ``{`` first,
characters outside the Basic Multilingual Plane as ``\\uXXXX`` surrogate pairs.
:func:`parse_addin_json` is its inverse, the one decoder of that JSON.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _quote  # (json's C escaping, as json.dumps(ensure_ascii=False) uses)
from typing import Any, Final

from orjson import JSONDecodeError as _OrjsonError
from orjson import JSONEncodeError as _OrjsonEncodeError
from orjson import dumps as _orjson_dumps
from orjson import loads as _orjson_loads

RECIPIENT_TYPES = ("user", "group", "all")
#: Longest accepted id, group, topic or key (bytes of UTF-8 would be larger).
MAX_FIELD = 1024


class MessageError(ValueError):
    """A malformed send request; ``field`` names the JSON member at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def as_json(self) -> dict[str, str]:
        return {"error": "bad_request", "field": self.field, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Notification:
    title: str = ""
    body: str = ""
    icon: str = ""
    action: str = ""
    important: bool = False


# Message, Recipient and SendRequest are values: never changed once made.  They are not
# frozen because a frozen dataclass is built through object.__setattr__ (or its slots'
# descriptors), four to five times the cost of a plain one's assignments, three objects per
# send.  Their __init__ is written out, not generated: the dataclass's own is made with
# exec() at import, so it would run in the interpreter even in the compiled build
# (pns4ones.compiled).  A test checks each against its fields.


@dataclass(slots=True)
class Message:
    topic: str = ""
    notification: Notification | None = None
    data: Mapping[str, str] = field(default_factory=dict)

    def __init__(self, topic: str = "", notification: Notification | None = None, data: Mapping[str, str] | None = None) -> None:
        self.topic = topic
        self.notification = notification
        self.data = {} if data is None else data


@dataclass(slots=True, unsafe_hash=True)  # (hashed by value, as when it was frozen)
class Recipient:
    type: str
    ib_id: str
    user_id: str = ""
    group: str = ""

    def __init__(self, type: str, ib_id: str, user_id: str = "", group: str = "") -> None:
        self.type = type
        self.ib_id = ib_id
        self.user_id = user_id
        self.group = group

    @property
    def target(self) -> str:
        return self.user_id if self.type == "user" else self.group if self.type == "group" else ""


@dataclass(slots=True)
class SendRequest:
    recipient: Recipient
    message: Message
    #: ``Message.TTL`` as sent (checked against ``max_ttl`` by the API); None when absent.
    ttl: Any = None

    def __init__(self, recipient: Recipient, message: Message, ttl: Any = None) -> None:
        self.recipient = recipient
        self.message = message
        self.ttl = ttl


def _lower_keys(obj: Mapping[str, Any]) -> dict[str, Any]:
    return {k.lower(): v for k, v in obj.items()}


def object_member(value: Any, name: str, required: bool) -> dict[str, Any] | None:
    """A JSON object with its member names lowercased (None when absent and not ``required``); MessageError names ``name``."""
    if value is None:
        if required:
            raise MessageError(name, "is required")
        return None
    if not isinstance(value, dict):
        raise MessageError(name, "must be a JSON object")
    return _lower_keys(value)


def string_member(obj: Mapping[str, Any], key: str, name: str, required: bool = False) -> str:
    """The string member ``key`` of ``obj`` ("" when absent); MessageError names ``name``."""
    value = obj.get(key)
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise MessageError(name, "must be a string")
    if required and not value:
        raise MessageError(name, "is required")
    return value


def _short(value: str, name: str) -> str:
    if len(value) > MAX_FIELD:
        raise MessageError(name, f"is longer than {MAX_FIELD} characters")
    return value


#: A surrogate code point: in a str decoded from JSON, one whose pair is missing ("\ud800").
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(value: str) -> bool:
    """Whether ``value`` holds a lone surrogate: not Unicode text, it cannot be written as UTF-8 (the store, a ticket)."""
    return not value.isascii() and _SURROGATE.search(value) is not None


def _identifier(value: str, name: str) -> str:
    """An id or group name: at most MAX_FIELD characters of Unicode text (it is stored, and routed by)."""
    if lone_surrogate(_short(value, name)):
        raise MessageError(name, "is not Unicode text (it holds a lone surrogate)")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is out of the range of a number")
    return value


#: One decoder, built once (``json.loads`` with arguments would build one per call).
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def decode_json_body(body: bytes) -> Any:
    """
    JSON from request bytes: UTF-8 with an optional byte order mark.  The
    non-standard constants ``NaN``, ``Infinity`` and ``-Infinity`` that Python's
    parser accepts are refused here, and so is a literal too large for a float
    (``1e999``, which would become infinity): no non-finite number reaches a
    handler.  (Handlers still check the range of every number they read.)
    """
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise MessageError("body", "is not UTF-8") from None
    if not text.strip():
        raise MessageError("body", "is empty")
    try:
        return _DECODER.decode(text)
    except (ValueError, RecursionError) as e:
        raise MessageError("body", f"is not valid JSON ({e})") from None


def decode_send_body(body: bytes) -> Any:
    """
    :func:`decode_json_body` for the bodies of sends (``/sendmessage``,
    ``/sendmessages``), in about a fifth of the time: orjson (C) reads the
    body first, and whatever it refuses (lone surrogate escapes, ``NaN``,
    numbers beyond a double, invalid UTF-8, anything malformed) is read again
    by :func:`decode_json_body`, which decides and words the error.  The same
    values, but for integers beyond 64 bits, which come out as floats: in a
    send only ``Message.TTL`` may be a number, and such a TTL is refused
    alike either way (over ``max_ttl``, or negative).
    """
    try:
        return _orjson_loads(body[3:] if body.startswith(b"\xef\xbb\xbf") else body)
    except _OrjsonError:
        return decode_json_body(body)


def parse_send(body: bytes) -> SendRequest:
    """Validate a ``/sendmessage`` body (bytes as received)."""
    # parse_send_object(decode_send_body(body)), inline (once per send); the document is
    # this function's own, so its Data object becomes the message's without a copy.
    try:
        doc = _orjson_loads(body[3:] if body.startswith(b"\xef\xbb\xbf") else body)
    except _OrjsonError:
        doc = decode_json_body(body)
    if type(doc) is dict:
        try:
            return _parse_regular(doc, False)
        except _Irregular:
            pass
    return _parse_checked(doc)


class _Irregular(Exception):
    """The fast path of :func:`parse_send_object` met something it leaves to the full check."""


_IRREGULAR: Final = _Irregular()


def _text(value: Any, limit: int) -> str:
    if value is None:
        return ""
    if type(value) is not str or len(value) > limit:
        raise _IRREGULAR
    return value


#: Member names as the manual spells them; an object named only so needs no lowercased copy.
_RECIPIENT_NAMES: Final = frozenset({"Type", "IbId", "UserId", "UserGroup"})
_MESSAGE_NAMES: Final = frozenset({"Topic", "Notification", "Data", "TTL"})
#: Not read yet (None is a member's possible value).
_UNREAD: Final = object()


def _parse_regular(doc: dict[str, Any], copy_data: bool = True) -> SendRequest:
    """
    :func:`_parse_checked` for a valid body, in fewer Python operations: the
    same values, and :class:`_Irregular` at the first thing that would be an
    error (or is unusual), for the full check to word it.  Member names are
    case-insensitive: an object whose names are all spelled as the manual
    spells them is read directly, any other through a lowercased copy (the
    last of names equal but for case wins, as in the full check).  With
    ``copy_data`` false, the message keeps the document's own Data object
    (the caller's document is not kept, nor changed, by anybody else).
    """
    # The usual objects: one of n members that has the n usual names has no others (a
    # length and n look-ups, a third of the cost of comparing its keys with a set).
    rec = msg = None
    if len(doc) == 2:
        try:
            rec = doc["Recipient"]
            msg = doc["Message"]
        except KeyError:
            rec = None
    if rec is None:
        root = {k.lower(): v for k, v in doc.items()}
        rec = root.get("recipient")
        msg = root.get("message")
    if type(rec) is not dict or type(msg) is not dict:
        raise _IRREGULAR
    rtype = None
    if len(rec) == 3:  # (the usual recipient)
        try:
            rtype, ib_id, user_id, group = rec["Type"], rec["IbId"], rec["UserId"], None
        except KeyError:
            pass
    if rtype is None:
        if rec.keys() <= _RECIPIENT_NAMES:
            rtype, ib_id, user_id, group = rec.get("Type"), rec.get("IbId"), rec.get("UserId"), rec.get("UserGroup")
        else:
            rec = {k.lower(): v for k, v in rec.items()}
            rtype, ib_id, user_id, group = rec.get("type"), rec.get("ibid"), rec.get("userid"), rec.get("usergroup")
    if user_id is None:
        user_id = ""
    if group is None:
        group = ""
    if (
        type(rtype) is not str
        or type(ib_id) is not str
        or type(user_id) is not str
        or type(group) is not str
        or not ib_id
        or len(ib_id) > MAX_FIELD
        or len(user_id) > MAX_FIELD
        or len(group) > MAX_FIELD
    ):
        raise _IRREGULAR
    # lone_surrogate() of each, at once: a surrogate is in the concatenation if and only if in one of them.
    ids = ib_id + user_id + group
    if not ids.isascii() and _SURROGATE.search(ids) is not None:
        raise _IRREGULAR  # (the full check words it)
    if rtype == "user" or (rtype := rtype.lower()) == "user":
        if not user_id:
            raise _IRREGULAR
        rtype, group = "user", ""
    elif rtype == "group":
        if not group:
            raise _IRREGULAR
        user_id = ""
    elif rtype == "all":
        user_id = group = ""
    else:
        raise _IRREGULAR
    note: Any = _UNREAD
    if len(msg) == 2:  # (the usual message)
        try:
            topic, note, raw_data, ttl = msg["Topic"], None, msg["Data"], None
        except KeyError:
            pass
    if note is _UNREAD:
        if msg.keys() <= _MESSAGE_NAMES:
            topic, note, raw_data, ttl = msg.get("Topic"), msg.get("Notification"), msg.get("Data"), msg.get("TTL")
        else:
            msg = {k.lower(): v for k, v in msg.items()}
            topic, note, raw_data, ttl = msg.get("topic"), msg.get("notification"), msg.get("data"), msg.get("ttl")
    if topic is None:
        topic = ""
    elif type(topic) is not str or len(topic) > MAX_FIELD:
        raise _IRREGULAR
    notification = None
    if note is not None:
        if type(note) is not dict:
            raise _IRREGULAR
        note = {k.lower(): v for k, v in note.items()}
        important = note.get("important")
        if important is None:
            important = False
        elif type(important) is not bool:
            raise _IRREGULAR
        notification = Notification(
            _text(note.get("title"), _NO_LIMIT),
            _text(note.get("body"), _NO_LIMIT),
            _text(note.get("icon"), _NO_LIMIT),
            _text(note.get("action"), _NO_LIMIT),
            important,
        )
    if raw_data is None:
        data: dict[str, str] = {}
    elif type(raw_data) is dict:
        for value in raw_data.values():
            if type(value) is not str:
                raise _IRREGULAR
        data = dict(raw_data) if copy_data else raw_data
    else:
        raise _IRREGULAR
    return SendRequest(Recipient(rtype, ib_id, user_id, group), Message(topic, notification, data), ttl)


_NO_LIMIT: Final = sys.maxsize


def parse_send_object(doc: Any, own: bool = False) -> SendRequest:
    """
    Validate one parsed ``/sendmessage`` body (or one element of a batch).  With
    ``own`` (the caller's document, kept and changed by nobody else), the
    message may keep the document's own Data object instead of a copy.
    """
    if type(doc) is dict:
        try:
            return _parse_regular(doc, not own)
        except _Irregular:
            pass
    return _parse_checked(doc)


def _parse_checked(doc: Any) -> SendRequest:
    """Every check, in order, each error naming its field (the reference for :func:`_parse_regular`)."""
    root = object_member(doc, "body", True)
    assert root is not None
    rec = object_member(root.get("recipient"), "Recipient", True)
    assert rec is not None
    rtype = string_member(rec, "type", "Recipient.Type", True).lower()
    if rtype not in RECIPIENT_TYPES:
        raise MessageError("Recipient.Type", "must be one of user, group, all")
    ib_id = _identifier(string_member(rec, "ibid", "Recipient.IbId", True), "Recipient.IbId")
    user_id = _identifier(string_member(rec, "userid", "Recipient.UserId", rtype == "user"), "Recipient.UserId")
    group = _identifier(string_member(rec, "usergroup", "Recipient.UserGroup", rtype == "group"), "Recipient.UserGroup")
    recipient = Recipient(rtype, ib_id, user_id if rtype == "user" else "", group if rtype == "group" else "")

    msg = object_member(root.get("message"), "Message", True)
    assert msg is not None
    topic = _short(string_member(msg, "topic", "Message.Topic"), "Message.Topic")
    notification = None
    note = object_member(msg.get("notification"), "Message.Notification", False)
    if note is not None:
        important = note.get("important")
        if important is None:
            important = False
        if not isinstance(important, bool):
            raise MessageError("Message.Notification.Important", "must be true or false")
        notification = Notification(
            title=string_member(note, "title", "Message.Notification.Title"),
            body=string_member(note, "body", "Message.Notification.Body"),
            icon=string_member(note, "icon", "Message.Notification.Icon"),
            action=string_member(note, "action", "Message.Notification.Action"),
            important=important,
        )
    data: dict[str, str] = {}
    raw_data = msg.get("data")
    if raw_data is not None:
        if not isinstance(raw_data, dict):
            raise MessageError("Message.Data", "must be a JSON object of strings")
        for key, value in raw_data.items():
            if not isinstance(value, str):
                raise MessageError(f"Message.Data.{key}", "must be a string (the manual: values are strings)")
            data[key] = value
    return SendRequest(recipient, Message(topic, notification, data), msg.get("ttl"))


def addin_object(message: Message) -> dict[str, Any]:
    """The lowercase JSON object the add-in receives, members omitted when empty."""
    out: dict[str, Any] = {}
    if message.topic:
        out["topic"] = message.topic
    note = message.notification
    if note is not None and (note.title or note.body):
        shaped: dict[str, Any] = {}
        for name in ("title", "body", "icon", "action"):
            value = getattr(note, name)
            if value:
                shaped[name] = value
        shaped["important"] = note.important
        out["notification"] = shaped
    if message.data:
        out["data"] = dict(message.data)
    return out


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _surrogates(match: re.Match[str]) -> str:
    code = ord(match.group()) - 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def dumps_for_addin(obj: Mapping[str, Any]) -> bytes:
    """
    Serialize for the add-in: BMP text raw UTF-8 (Cyrillic stays readable),
    control characters escaped by :mod:`json`, astral characters as surrogate
    pair escapes (the add-in's UTF-8 decoder mangles 4-byte sequences).
    """
    return _addin_bytes(json.dumps(obj, ensure_ascii=False))


def _addin_bytes(text: str) -> bytes:
    """The add-in's bytes of JSON text (see :func:`dumps_for_addin`)."""
    if text.isascii():
        return text.encode("ascii")
    text = _ASTRAL.sub(_surrogates, text)
    # Lone surrogates from JSON input ("\ud800") cannot be encoded as UTF-8:
    # they become JSON escapes again (only possible inside strings).
    return text.encode("utf-8", "backslashreplace")


#: From this length on, a string is escaped by orjson: its call costs more than :mod:`json`'s,
#: its work per character is far less (measured: as fast at 32 characters, 3 times faster at 150).
_LONG: Final = 32


def _long_string(value: str) -> str:
    """``_quote(value)`` for a long string, through orjson (which writes the same escapes, as UTF-8)."""
    try:
        return _orjson_dumps(value).decode("utf-8")
    except _OrjsonEncodeError:  # (a lone surrogate: not UTF-8)
        return _quote(value)


def render_addin_json(message: Message) -> bytes:
    """
    The add-in's plaintext: ``dumps_for_addin(addin_object(message))``, byte for
    byte, built directly: each string through :mod:`json`'s own C escaping
    (as ``json.dumps(ensure_ascii=False)``; a long one through orjson, which
    writes the same), its separators ``", "`` and ``": "``, without the
    intermediate objects.
    """
    topic = message.topic
    note = message.notification
    data = message.data
    text = f'"topic": {_quote(topic) if len(topic) < _LONG else _long_string(topic)}' if topic else ""
    if note is not None and (note.title or note.body):
        shaped = [f'"title": {_quote(note.title)}'] if note.title else []
        if note.body:
            body = note.body
            shaped.append(f'"body": {_quote(body) if len(body) < _LONG else _long_string(body)}')
        if note.icon:
            shaped.append(f'"icon": {_quote(note.icon)}')
        if note.action:
            shaped.append(f'"action": {_quote(note.action)}')
        shaped.append('"important": true' if note.important else '"important": false')
        text = f'{text}, "notification": {{{", ".join(shaped)}}}' if text else f'"notification": {{{", ".join(shaped)}}}'
    if data:
        items = []
        for key, value in data.items():
            items.append(f"{_quote(key)}: {_quote(value) if len(value) < _LONG else _long_string(value)}")
        text = f'{text}, "data": {{{", ".join(items)}}}' if text else f'"data": {{{", ".join(items)}}}'
    text = f"{{{text}}}"
    return text.encode("ascii") if text.isascii() else _addin_bytes(text)  # (the usual ASCII text without a call)


def parse_addin_json(plaintext: bytes) -> Message:
    """
    The :class:`Message` of an add-in JSON (what :func:`render_addin_json` made):
    ``render_addin_json(parse_addin_json(p)) == p``.  Raises :class:`MessageError`
    (field ``addin``) for anything else.
    """
    try:
        doc = json.loads(plaintext.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise MessageError("addin", f"is not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise MessageError("addin", "is not a JSON object")
    note = doc.get("notification")
    data = doc.get("data") or {}
    topic = doc.get("topic", "")
    if not isinstance(topic, str) or not isinstance(data, dict) or not (note is None or isinstance(note, dict)):
        raise MessageError("addin", "is not the add-in's JSON (topic, notification, data)")
    notification = None
    if note:
        notification = Notification(
            note.get("title", ""), note.get("body", ""), note.get("icon", ""), note.get("action", ""), bool(note.get("important", False))
        )
    return Message(topic, notification, data)
