"""
Subscription tickets (pure, no I/O): short-lived credentials that let one
client subscribe as one user over WebSocket or Server-Sent Events.

A ticket is ``pt1.<payload>.<mac>`` (base64url, no padding):

* payload: compact JSON ``{"a": app_id, "i": ib_id, "u": user_id, "g": [groups],
  "e": expires_at, "t": <digest of the access token that asked for it>}``;
* mac: HMAC-SHA256 over ``pt1.<payload>`` with a per-application secret derived
  from the application's server key (``HMAC(server_key, "pns4ones-ticket")``).

Invalidation needs no extra state: rotating the server key changes the secret;
removing the application removes the key; ``reset_token`` (and a server-key
rotation, which revokes tokens too) removes the access token the ticket names,
and a ticket is accepted only while that token is still in the registry.

Clients must treat tickets as opaque; the payload is signed, not encrypted, and
holds only what the ticket's bearer may know anyway (its own ids and groups).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass

from . import crypto

PREFIX = "pt1."
#: Longest accepted ticket text (a bound before any decoding).
MAX_TICKET_LENGTH = 8192


class TicketError(Exception):
    """A ticket that is not accepted; ``reason`` is safe to show the client."""

    def __init__(self, reason: str, status: int = 401) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@dataclass(frozen=True, slots=True)
class Ticket:
    app_id: str
    ib_id: str
    user_id: str
    groups: tuple[str, ...]
    expires_at: int
    token_digest: bytes


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def secret_for(server_key: str) -> bytes:
    """The application's ticket-signing secret (changes with the server key)."""
    return crypto.hmac_sha256(server_key.encode("utf-8"), b"pns4ones-ticket")


def issue(server_key: str, ticket: Ticket) -> str:
    payload = json.dumps(
        {
            "a": ticket.app_id,
            "i": ticket.ib_id,
            "u": ticket.user_id,
            "g": list(ticket.groups),
            "e": ticket.expires_at,
            "t": _b64(ticket.token_digest),
        },
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    signed = PREFIX + _b64(payload)
    return signed + "." + _b64(crypto.hmac_sha256(secret_for(server_key), signed.encode("ascii")))


def verify(text: str, server_key_of: Callable[[str], str | None], now: float) -> Ticket:
    """
    The ticket ``text`` stands for, after checking its signature with the key
    ``server_key_of(app_id)`` returns and its expiry; :class:`TicketError` otherwise.
    (Whether its access token is still alive is the caller's check.)
    """
    if not text:
        raise TicketError("missing ticket (Authorization: Bearer ... or ?ticket=...)")
    if len(text) > MAX_TICKET_LENGTH or not text.startswith(PREFIX) or text.count(".") != 2:
        raise TicketError("malformed ticket")
    signed, _, mac_text = text.rpartition(".")
    try:
        payload = json.loads(_unb64(signed[len(PREFIX) :]))
        mac = _unb64(mac_text)
        ticket = Ticket(
            app_id=payload["a"],
            ib_id=payload["i"],
            user_id=payload["u"],
            groups=tuple(payload["g"]),
            expires_at=payload["e"],
            token_digest=_unb64(payload["t"]),
        )
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
        raise TicketError("malformed ticket") from None
    if not all(isinstance(v, str) for v in (ticket.app_id, ticket.ib_id, ticket.user_id, *ticket.groups)) or not isinstance(
        ticket.expires_at, int
    ):
        raise TicketError("malformed ticket")
    server_key = server_key_of(ticket.app_id)
    if server_key is None or not crypto.verify_hmac_sha256(secret_for(server_key), signed.encode("ascii"), mac):
        raise TicketError("invalid ticket (forged, or its application was removed or its server key rotated)")
    if ticket.expires_at <= now:
        raise TicketError("ticket expired: ask the 1C server for a new one", status=403)
    return ticket
