"""
The send API's requests and answers, without I/O, shared by the blocking and
the Twisted sender: request bodies, ``/auth`` answers, the token cache.

Invariants: a cached token is handed out only while the local clock is more
than ``margin`` before its expiry; the expiry is computed from the server's own
clock (its ``Date`` header), so a skewed client clock does not matter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from .errors import ServiceError

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
) -> dict[str, Any]:
    """``Message`` of /sendmessage; empty parts are left out, as the server would drop them anyway."""
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
    return out


def send_body(recipient_doc: dict[str, Any], message_doc: dict[str, Any]) -> bytes:
    return json.dumps({"Recipient": recipient_doc, "Message": message_doc}, ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class SendResult:
    """What a 200 from /sendmessage reports: live subscriptions and distinct users reached."""

    sessions: int
    users: int


def parse_send_result(body: bytes) -> SendResult:
    try:
        doc = json.loads(body.decode("utf-8-sig")) if body.strip() else {}
    except (ValueError, UnicodeDecodeError):
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    # The original answered an empty body: unknown counts are -1.
    return SendResult(int(doc.get("sessions", -1)), int(doc.get("users", -1)))


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
