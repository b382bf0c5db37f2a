"""
The message hub behind a small interface: who is subscribed where, and fan-out.

A :class:`Session` is any live subscription: the add-in's TCP connection
(transport ``tcp``), a WebSocket (``ws``) or a Server-Sent Events stream (``sse``).
A session may also have ``groups`` (several groups, from a ticket); ``group`` is
then the first of them.
The hub indexes sessions by (application, information base) and then by user and
group, so finding the recipients of a send costs the same with 10 or 100,000
connections.  :class:`LocalHub` serves one process; a networked hub can wrap its
routing to serve several nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from ..messages import Message, Recipient, render_addin_json
from ..wire import ClientKey, encode_frame


class Session(Protocol):
    """A live subscription as the hub sees it."""

    app_id: str
    ib_id: str
    user_id: str
    group: str
    keys: ClientKey | None
    transport_name: str

    def deliver(self, message: Outbound) -> bool:
        """Queue ``message``; False if the session could not take it."""

    def end(self, reason: str) -> None:
        """Close the subscription (key rotated, application removed, shutdown)."""

    # Optional (store and forward): ``hold()`` makes ``deliver`` buffer; ``release(first)``
    # writes ``first`` (kept messages) and then the buffered ones.  Sessions without them
    # get kept messages after attaching, where a live message may come first.


class Outbound:
    """
    One message on its way out: its JSON is rendered once, and its add-in frame
    encrypted once per application key; every session writes the same bytes.
    ``id`` is the message's id (see :mod:`pns4ones.hub.recovery`); the web
    transports send the add-in JSON with it spliced in, built once.
    """

    __slots__ = ("_frame", "_frame_key", "_web", "_web_text", "id", "message", "plaintext")

    def __init__(self, message: Message, message_id: int = 0) -> None:
        self.message = message
        self.plaintext = render_addin_json(message)
        self.id = message_id
        self._frame_key: ClientKey | None = None
        self._frame = b""
        self._web: bytes | None = None
        self._web_text: str | None = None

    def web_json(self) -> bytes:
        """``{"id": N, ...the add-in JSON...}`` as UTF-8 (one line: no raw newlines)."""
        web = self._web
        if web is None:
            head = b'{"id":%d' % self.id
            body = self.plaintext
            web = self._web = head + b"}" if body == b"{}" else head + b"," + body[1:]
        return web

    def web_text(self) -> str:
        text = self._web_text
        if text is None:
            text = self._web_text = self.web_json().decode("utf-8")
        return text

    def addin_frame(self, key: ClientKey) -> bytes:
        if key is not self._frame_key and key != self._frame_key:
            self._frame = encode_frame(key, self.plaintext)
            self._frame_key = key
        return self._frame


@dataclass(frozen=True, slots=True)
class Report:
    """What a send reached: live sessions written to and distinct users."""

    sessions: int
    users: int
    #: The user ids reached (for store and forward: who must not get the kept copy).
    reached: frozenset[str] | set[str] = frozenset()


class Hub(Protocol):
    def attach(self, session: Session) -> None: ...
    def detach(self, session: Session) -> None: ...
    def publish(self, app_id: str, recipient: Recipient, message: Message) -> Deferred[Report]: ...
    def replay(self, session: Session, since: int | None) -> Deferred[tuple[int | None, list[Outbound], int]]:
        """(floor if messages may be missed, backlog, resume id); attach in the callback: no gap, no duplicate."""

    def sessions(self, app_id: str | None = None) -> Iterator[Session]: ...
    def counts(self) -> dict[str, dict[str, int]]: ...
    def __len__(self) -> int: ...


def distinct_users(sessions: Iterable[Session]) -> int:
    return len({s.user_id for s in sessions})


class HubUnavailable(Exception):
    """The hub between nodes cannot take a message now (sends answer 503)."""


def open_hub(config: Any, members: Callable[[str, str, str], Any], reactor: Any) -> Any:
    """The hub ``config.hub`` names: the in-process one by default."""
    if config.hub == "local":
        from .local import LocalHub

        return LocalHub(members, reactor, config.recovery_window, config.recovery_messages)
    from .redis import RedisHub

    return RedisHub(config, members, reactor)
