"""
The send API's requests and answers, without I/O, shared by the blocking and
the Twisted sender: each call as a :class:`Request` and the parser of its
answer, ``/auth`` answers, the token cache.

Invariants: a cached token is handed out only while the local clock is more
than ``margin`` before its expiry; the expiry is computed from the server's own
clock (its ``Date`` header), so a skewed client clock does not matter.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit

from .errors import SendError, ServiceError, error_from_doc

#: Seconds from 0001-01-01 to 1970-01-01: the original service's ``expires_in`` counted from the former.
LEGACY_EPOCH_OFFSET = 62135596800
RECIPIENT_TYPES = ("user", "group", "all")


def check_base_url(base_url: str) -> str:
    """``http(s)://host[:port][/prefix]`` without the trailing slash; ValueError otherwise."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http:// or https:// URL of the send API: {base_url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"the send API URL takes no query or fragment: {base_url!r}")
    return base_url.strip().rstrip("/")


def recipient(kind: str, ib_id: str, user_id: str = "", group: str = "") -> dict[str, str]:
    """``Recipient`` of /sendmessage: ``user`` needs ``user_id``, ``group`` needs ``group``."""
    if kind not in RECIPIENT_TYPES:
        raise ValueError(f"recipient type must be one of {', '.join(RECIPIENT_TYPES)}, not {kind!r}")
    if not ib_id:
        raise ValueError("the information base id (IbId) is required")
    out = {"Type": kind, "IbId": ib_id}
    if kind == "user":
        if not user_id:
            raise ValueError("a user recipient needs the user id (UserId)")
        out["UserId"] = user_id
    elif kind == "group":
        if not group:
            raise ValueError("a group recipient needs the group (UserGroup)")
        out["UserGroup"] = group
    return out


def message(
    title: str = "",
    body: str = "",
    *,
    topic: str = "",
    data: dict[str, str] | None = None,
    important: bool = False,
    icon: str = "",
    action: str = "",
    ttl: float | None = None,
) -> dict[str, Any]:
    """
    ``Message`` of /sendmessage; empty parts are left out, as the server would
    drop them anyway.  ``ttl``: seconds the service keeps the message for
    recipients who are not connected now (kept messages; at most the server's
    ``max_ttl``), delivered when they connect; None or 0: online only.
    """
    out: dict[str, Any] = {}
    if topic:
        out["Topic"] = topic
    if title or body or icon or action or important:
        notification: dict[str, Any] = {"Title": title, "Body": body, "Important": bool(important)}
        if icon:
            notification["Icon"] = icon
        if action:
            notification["Action"] = action
        out["Notification"] = notification
    if data:
        bad = [k for k, v in data.items() if not isinstance(v, str)]
        if bad:
            raise ValueError(f"Data values must be strings: {', '.join(map(str, bad))}")
        out["Data"] = dict(data)
    if ttl is not None:
        out["TTL"] = check_ttl(ttl)
    return out


def check_ttl(ttl: float) -> float:
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl < 0:
        raise ValueError(f"ttl must be a number of seconds, 0 or more, not {ttl!r}")
    return ttl


def envelope(recipient_doc: Mapping[str, Any], message_doc: Mapping[str, Any], ttl: float | None = None) -> dict[str, Any]:
    """One /sendmessage body; ``ttl`` (seconds) overrides the message's TTL."""
    message_doc = dict(message_doc)
    if ttl is not None:
        message_doc["TTL"] = check_ttl(ttl)
    return {"Recipient": dict(recipient_doc), "Message": message_doc}


def _json(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


def send_body(recipient_doc: dict[str, Any], message_doc: dict[str, Any]) -> bytes:
    return _json({"Recipient": recipient_doc, "Message": message_doc})


# -- the calls ----------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One call of the send API: method, path (segments percent-encoded) and JSON body."""

    method: str
    path: str
    body: bytes | None = None


def segment(value: str, what: str) -> str:
    """A path segment (an information base, group or user id) percent-encoded as UTF-8."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} is required")
    return quote(value, safe="")


def send_request(recipient_doc: Mapping[str, Any], message_doc: Mapping[str, Any], ttl: float | None = None) -> Request:
    return Request("POST", "/sendmessage", _json(envelope(recipient_doc, message_doc, ttl)))


def batch_request(items: Iterable[Mapping[str, Any] | tuple[Mapping[str, Any], Mapping[str, Any]]]) -> Request:
    """``POST /sendmessages``: each item a ``{"Recipient", "Message"}`` body or a (recipient, message) pair."""
    bodies = [envelope(*item) if isinstance(item, tuple) else dict(item) for item in items]
    if not bodies:
        raise ValueError("a batch needs at least one message")
    return Request("POST", "/sendmessages", _json(bodies))


def groups_request(ib_id: str) -> Request:
    return Request("GET", f"/groups/{segment(ib_id, 'IbId')}")


def group_request(method: str, ib_id: str, group: str, user_ids: Iterable[str] | None = None) -> Request:
    """GET (members), PUT (replace the members with ``user_ids``) or DELETE one group."""
    body = _json({"UserIds": list(user_ids)}) if user_ids is not None else None
    return Request(method, f"/groups/{segment(ib_id, 'IbId')}/{segment(group, 'Group')}", body)


def add_members_request(ib_id: str, group: str, user_ids: Iterable[str]) -> Request:
    return Request("POST", f"/groups/{segment(ib_id, 'IbId')}/{segment(group, 'Group')}/members", _json({"UserIds": list(user_ids)}))


def remove_member_request(ib_id: str, group: str, user_id: str) -> Request:
    return Request("DELETE", f"/groups/{segment(ib_id, 'IbId')}/{segment(group, 'Group')}/members/{segment(user_id, 'UserId')}")


def presence_request(ib_id: str, user_id: str | None = None) -> Request:
    path = f"/presence/{segment(ib_id, 'IbId')}"
    return Request("GET", path if user_id is None else f"{path}/{segment(user_id, 'UserId')}")


def ticket_request(ib_id: str, user_id: str, groups: Iterable[str] = (), ttl: int | None = None) -> Request:
    doc: dict[str, Any] = {"IbId": ib_id, "UserId": user_id, "UserGroups": list(groups)}
    if ttl is not None:
        doc["TTL"] = ttl
    return Request("POST", "/tickets", _json(doc))


# -- the answers ----------------------------------------------------------------------


def parse_object(body: bytes) -> dict[str, Any]:
    """A JSON object answer; ServiceError when it is not one."""
    try:
        doc = json.loads(body.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError):
        doc = None
    if not isinstance(doc, dict):
        raise ServiceError(200, "bad_answer", f"the service did not answer a JSON object: {body[:200]!r}")
    return doc


@dataclass(frozen=True)
class SendResult:
    """
    What a 200 from /sendmessage reports: live sessions and distinct users
    reached now; ``stored``: kept for recipients not connected (a TTL was
    given); ``dropped``: older kept messages dropped to make room.  ``raw`` is
    the whole answer: fields a newer service adds are there, and readable as
    attributes (``result.some_new_field``) and by key (``result["some_new_field"]``).
    """

    sessions: int
    users: int
    stored: bool = False
    dropped: int = 0
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __getattr__(self, name: str) -> Any:
        raw = self.__dict__.get("raw", {})
        if name in raw:
            return raw[name]
        raise AttributeError(name)

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> SendResult:
        # The original answered an empty body: unknown counts are -1.
        return cls(
            int(doc.get("sessions", -1)), int(doc.get("users", -1)), bool(doc.get("stored", False)), int(doc.get("dropped", 0)), dict(doc)
        )


def parse_send_result(body: bytes) -> SendResult:
    try:
        doc = json.loads(body.decode("utf-8-sig")) if body.strip() else {}
    except (ValueError, UnicodeDecodeError):
        doc = {}
    return SendResult.from_doc(doc if isinstance(doc, dict) else {})


@dataclass(frozen=True)
class BatchResult:
    """
    The answer of ``POST /sendmessages``: one entry per message, in order, a
    :class:`SendResult` or the :class:`~pns4ones_client.errors.SendError` that
    message got (a bad message does not stop the others); ``sessions`` and
    ``accepted`` over the batch.
    """

    results: tuple[SendResult | SendError, ...]
    sessions: int
    accepted: int
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def errors(self) -> list[tuple[int, SendError]]:
        """(index, error) of every message the service refused."""
        return [(i, r) for i, r in enumerate(self.results) if isinstance(r, SendError)]


def parse_batch_result(body: bytes) -> BatchResult:
    doc = parse_object(body)
    results: list[SendResult | SendError] = []
    for item in doc.get("results", []):
        item = item if isinstance(item, dict) else {}
        status = int(item.get("status", 0))
        results.append(SendResult.from_doc(item) if status == 200 else error_from_doc(status, item))
    return BatchResult(tuple(results), int(doc.get("sessions", 0)), int(doc.get("accepted", 0)), doc)


@dataclass(frozen=True)
class Group:
    """A group of an information base and its members (``raw``: the whole answer, e.g. ``added``/``removed``)."""

    ib_id: str
    group: str
    user_ids: tuple[str, ...]
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


def parse_group(body: bytes) -> Group:
    doc = parse_object(body)
    return Group(str(doc.get("IbId", "")), str(doc.get("Group", "")), tuple(doc.get("UserIds", [])), doc)


def parse_groups(body: bytes) -> dict[str, int]:
    """``GET /groups/<ib>``: group name -> member count."""
    return {str(g["Group"]): int(g["members"]) for g in parse_object(body).get("groups", [])}


def parse_removed(body: bytes) -> int:
    return int(parse_object(body).get("removed", 0))


@dataclass(frozen=True)
class Presence:
    """Who of an information base is connected now: user id -> live sessions."""

    ib_id: str
    users: Mapping[str, int]
    online: int
    sessions: int


def parse_presence(body: bytes) -> Presence:
    doc = parse_object(body)
    users = {str(u["UserId"]): int(u["sessions"]) for u in doc.get("users", [])}
    return Presence(str(doc.get("IbId", "")), users, int(doc.get("online", len(users))), int(doc.get("sessions", sum(users.values()))))


@dataclass(frozen=True)
class UserPresence:
    """One user's live sessions (dicts with transport, group, peer, connected_since; node on another node)."""

    ib_id: str
    user_id: str
    online: bool
    sessions: tuple[Mapping[str, Any], ...]


def parse_user_presence(body: bytes) -> UserPresence:
    doc = parse_object(body)
    return UserPresence(str(doc.get("IbId", "")), str(doc.get("UserId", "")), bool(doc.get("online")), tuple(doc.get("sessions", [])))


@dataclass(frozen=True)
class Ticket:
    """A subscription ticket for WebSocket/SSE (hand it to the browser or script that subscribes) and when it expires."""

    ticket: str
    expires_in: int
    expires_at: int


def parse_ticket(body: bytes) -> Ticket:
    doc = parse_object(body)
    if not isinstance(doc.get("ticket"), str):
        raise ServiceError(200, "bad_answer", "/tickets did not answer a ticket")
    return Ticket(doc["ticket"], int(doc.get("expires_in", 0)), int(doc.get("expires_at", 0)))


def parse_auth(body: bytes, date_header: str | None, now: float) -> tuple[str, float]:
    """``(token, local expiry)`` from a 200 of /auth; ``expires_in`` in unix time, the original's form or seconds."""
    try:
        doc = json.loads(body.decode("utf-8-sig"))
        token = doc["access_token"]
        expires_in = float(doc["expires_in"])
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        raise ServiceError(200, "bad_auth_answer", "/auth did not answer {access_token, expires_in}") from None
    if not isinstance(token, str) or not token:
        raise ServiceError(200, "bad_auth_answer", "/auth answered an empty access_token")
    if expires_in > LEGACY_EPOCH_OFFSET / 2:  # the original's seconds since 0001-01-01
        expires_in -= LEGACY_EPOCH_OFFSET
    if expires_in < 1e9:  # a lifetime in seconds (OAuth style), not a moment
        return token, now + expires_in
    server_now = now
    if date_header:
        try:
            server_now = parsedate_to_datetime(date_header).timestamp()
        except (TypeError, ValueError):
            pass
    return token, now + (expires_in - server_now)


class TokenCache:
    """One application's access token, refreshed ``margin`` seconds (at most a fifth of its life) before expiry."""

    def __init__(self, margin: float = 60.0) -> None:
        self.margin = margin
        self.token: str | None = None
        self._refresh_at = 0.0

    def current(self, now: float) -> str | None:
        return self.token if self.token is not None and now < self._refresh_at else None

    def store(self, token: str, expires_at: float, now: float) -> None:
        life = max(0.0, expires_at - now)
        self.token = token
        self._refresh_at = expires_at - min(self.margin, life / 5)

    def drop(self, token: str) -> None:
        """Forget ``token`` (refused by the server) unless another request already replaced it."""
        if self.token == token:
            self.token = None
