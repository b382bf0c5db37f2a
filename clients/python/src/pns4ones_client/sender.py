"""
A blocking sender on the standard library (``urllib``), usable from any script,
web application or thread::

    sender = Sender("https://pns.example.com:36696", server_key)
    sender.send_to_user(ib_id, user_id, "New order", "No. 1234", data={"order": "1234"})

It asks ``/auth`` once and reuses the token until shortly before it expires; on
a ``401``/``403`` it asks again once and repeats the call.  Refusals raise a
:class:`~pns4ones_client.errors.SendError` subclass carrying the server's reason.

The whole send API: messages (``ttl=`` keeps them for users not connected),
batches (``send_batch``), groups, presence and subscription tickets.
"""

from __future__ import annotations

import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

from . import _api
from ._api import BatchResult, Group, Presence, Request, SendResult, Ticket, UserPresence
from .errors import AuthenticationError, SendError, ServiceError, error_from_response

T = TypeVar("T")

USER_AGENT = "pns4ones-client/0.1 (python)"


class Sender:
    """
    Send messages through a pns4ones (or PNS4OneS) send API.

    ``ca_file`` trusts that CA (PEM) for HTTPS instead of the system's trust
    store; ``clock`` is the wall clock (tests pass a frozen one).  Thread-safe.
    Counters: ``auth_requests`` (calls of /auth), ``refused`` (sends answered
    401/403 and repeated with a fresh token).
    """

    def __init__(
        self,
        base_url: str,
        server_key: str,
        *,
        ca_file: str | None = None,
        timeout: float = 10.0,
        refresh_margin: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = _api.check_base_url(base_url)
        if not server_key:
            raise ValueError("the server key is required")
        self.server_key = server_key
        self.timeout = timeout
        self.clock = clock
        self._tokens = _api.TokenCache(refresh_margin)
        self._lock = threading.Lock()
        handlers: list[Any] = []
        if self.base_url.startswith("https:"):
            handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(cafile=ca_file)))
        self._opener = urllib.request.build_opener(*handlers)
        self.auth_requests = 0
        self.refused = 0

    # -- sending ------------------------------------------------------------------------

    def send(self, recipient: Mapping[str, Any], message: Mapping[str, Any], ttl: float | None = None) -> SendResult:
        """
        Send ``{"Recipient": recipient, "Message": message}`` as the API documents
        them; ``ttl`` (seconds): keep it for recipients not connected now.
        """
        return self._call(_api.send_request(recipient, message, ttl), _api.parse_send_result)

    def send_to_user(self, ib_id: str, user_id: str, title: str = "", body: str = "", **options: Any) -> SendResult:
        """Every session of one user; ``options``: topic, data, important, icon, action, ttl."""
        return self.send(_api.recipient("user", ib_id, user_id=user_id), _api.message(title, body, **options))

    def send_to_group(self, ib_id: str, group: str, title: str = "", body: str = "", **options: Any) -> SendResult:
        return self.send(_api.recipient("group", ib_id, group=group), _api.message(title, body, **options))

    def send_to_all(self, ib_id: str, title: str = "", body: str = "", **options: Any) -> SendResult:
        return self.send(_api.recipient("all", ib_id), _api.message(title, body, **options))

    def send_batch(self, items: Iterable[Mapping[str, Any] | tuple[Mapping[str, Any], Mapping[str, Any]]]) -> BatchResult:
        """
        ``POST /sendmessages``: many messages in one request, each a
        ``{"Recipient", "Message"}`` body or a (recipient, message) pair; one
        result per message (a refused one is its SendError, the others stand).
        """
        return self._call(_api.batch_request(items), _api.parse_batch_result)

    # -- groups (the application's own, per information base) -----------------------------

    def groups(self, ib_id: str) -> dict[str, int]:
        """The groups of an information base: name -> member count."""
        return self._call(_api.groups_request(ib_id), _api.parse_groups)

    def group(self, ib_id: str, group: str) -> Group:
        """One group and its members (none for a group that does not exist)."""
        return self._call(_api.group_request("GET", ib_id, group), _api.parse_group)

    def set_group(self, ib_id: str, group: str, user_ids: Iterable[str]) -> Group:
        """Make ``user_ids`` the group's members (created if new)."""
        return self._call(_api.group_request("PUT", ib_id, group, user_ids), _api.parse_group)

    def add_to_group(self, ib_id: str, group: str, user_ids: Iterable[str]) -> Group:
        """Add members (``raw["added"]``: how many were new)."""
        return self._call(_api.add_members_request(ib_id, group, user_ids), _api.parse_group)

    def remove_from_group(self, ib_id: str, group: str, user_id: str) -> Group:
        """Remove one member (``raw["removed"]``: whether it was one)."""
        return self._call(_api.remove_member_request(ib_id, group, user_id), _api.parse_group)

    def delete_group(self, ib_id: str, group: str) -> int:
        """Delete a group; the number of members it had."""
        return self._call(_api.group_request("DELETE", ib_id, group), _api.parse_removed)

    # -- presence and tickets ------------------------------------------------------------

    def presence(self, ib_id: str) -> Presence:
        """Who of an information base is connected now, with how many sessions."""
        return self._call(_api.presence_request(ib_id), _api.parse_presence)

    def user_presence(self, ib_id: str, user_id: str) -> UserPresence:
        """One user's live sessions."""
        return self._call(_api.presence_request(ib_id, user_id), _api.parse_user_presence)

    def ticket(self, ib_id: str, user_id: str, groups: Iterable[str] = (), ttl: int | None = None) -> Ticket:
        """A ticket with which a browser or script subscribes as this user over WebSocket/SSE (``ttl``: seconds it is valid)."""
        return self._call(_api.ticket_request(ib_id, user_id, groups, ttl), _api.parse_ticket)

    # -- tokens -------------------------------------------------------------------------

    def token(self) -> str:
        """The cached access token, or a fresh one from /auth."""
        with self._lock:
            token = self._tokens.current(self.clock())
            if token is None:
                status, body, headers = self._request("GET", f"/auth?server_key={quote(self.server_key, safe='')}")
                self.auth_requests += 1
                if status != 200:
                    raise error_from_response(status, body, headers)
                now = self.clock()
                token, expires_at = _api.parse_auth(body, headers.get("Date"), now)
                self._tokens.store(token, expires_at, now)
            return token

    # -- HTTP ---------------------------------------------------------------------------

    def _call(self, request: Request, parse: Callable[[bytes], T]) -> T:
        """``request`` with the access token; once more with a fresh one after a 401/403; the answer parsed."""
        token = self.token()
        try:
            return parse(self._authorized(request, token))
        except AuthenticationError:
            self.refused += 1
            self._tokens.drop(token)
        return parse(self._authorized(request, self.token()))

    def _authorized(self, request: Request, token: str) -> bytes:
        headers = {"Authorization": f"Bearer {token}"}
        if request.body is not None:
            headers["Content-Type"] = "application/json; charset=utf-8"
        status, answer, answer_headers = self._request(request.method, request.path, request.body, headers)
        if status != 200:
            raise error_from_response(status, answer, answer_headers)
        return answer

    def _request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
        request = urllib.request.Request(
            self.base_url + path, data=body, method=method, headers={"User-Agent": USER_AGENT, **(headers or {})}
        )
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                return response.status, response.read(), response.headers
        except urllib.error.HTTPError as e:
            with e:
                return e.code, e.read(), e.headers
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise ServiceError(None, "unreachable", f"{method} {self.base_url}{path.split('?')[0]}: {reason}") from e


__all__ = ["BatchResult", "SendError", "SendResult", "Sender"]
