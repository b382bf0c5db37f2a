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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

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


@dataclass(frozen=True, slots=True)
class Message:
    topic: str = ""
    notification: Notification | None = None
    data: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Recipient:
    type: str
    ib_id: str
    user_id: str = ""
    group: str = ""

    @property
    def target(self) -> str:
        return self.user_id if self.type == "user" else self.group if self.type == "group" else ""


@dataclass(frozen=True, slots=True)
class SendRequest:
    recipient: Recipient
    message: Message
    #: ``Message.TTL`` as sent (checked against ``max_ttl`` by the API); None when absent.
    ttl: Any = None


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


def parse_send(body: bytes) -> SendRequest:
    """Validate a ``/sendmessage`` body (bytes as received)."""
    return parse_send_object(decode_json_body(body))


def parse_send_object(doc: Any) -> SendRequest:
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
    text = json.dumps(obj, ensure_ascii=False)
    if not text.isascii():
        text = _ASTRAL.sub(_surrogates, text)
    # Lone surrogates from JSON input ("\ud800") cannot be encoded as UTF-8:
    # they become JSON escapes again (only possible inside strings).
    return text.encode("utf-8", "backslashreplace")


def render_addin_json(message: Message) -> bytes:
    return dumps_for_addin(addin_object(message))


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
