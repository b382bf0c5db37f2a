"""
What the hub and the sessions promise each other and the rest of the service.

A :class:`Session` is one live subscription on this node: the add-in's TCP
connection (transport ``tcp``), a WebSocket (``ws``) or a Server-Sent Events
stream (``sse``).  A :class:`SessionInfo` is what is known of any subscription,
also of one on another node (``node`` names it).  A :class:`Hub` routes a
message to the sessions it concerns, on this node and, for a hub between
nodes, on the others.

Every ability the code uses is declared here; an implementation that lacks one
fails the type check and the contract tests (``tests/test_hub_contract.py``),
not a ``getattr`` at run time.

Invariants:

* A session joins and leaves only through :meth:`pns4ones.core.Core.subscribe`
  and :meth:`~pns4ones.core.Core.unsubscribe`; the core alone calls
  :meth:`Hub.attach` and :meth:`Hub.detach`.
* Between :meth:`Session.hold` and :meth:`Session.release`, ``deliver`` queues:
  the catch-up (kept messages, then the replay) is written first, then what was
  queued, in order.
* Message ids only grow within an (application, information base); id 0 means
  "no id" (a kept message, which is not in the recovery window).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from ..messages import Recipient
from ..wire import ClientKey
from .outbound import Outbound

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

#: Server-side group membership: (application, information base, group) -> user ids.
MembersOf = Callable[[str, str, str], Collection[str]]

_session_numbers = itertools.count(1)


class Clock(Protocol):
    """The part of a reactor (``IReactorTime``, or ``twisted.internet.task.Clock``) the hubs use: time is passed in."""

    def seconds(self) -> float: ...
    def callLater(self, delay: float, callable: Callable[..., object], *args: object, **kw: object) -> IDelayedCall: ...


def next_session_id(transport_name: str) -> str:
    """A session id unique within this process: ``tcp-17``, ``ws-18``, ..."""
    return f"{transport_name}-{next(_session_numbers)}"


class SessionInfo(Protocol):
    """What is known of a live subscription, here or on another node (``/presence``, the admin console)."""

    @property
    def session_id(self) -> str:
        """Unique within its node."""

    @property
    def app_id(self) -> str: ...
    @property
    def ib_id(self) -> str: ...
    @property
    def user_id(self) -> str: ...
    @property
    def group(self) -> str:
        """The first of ``groups``, or ""."""

    @property
    def groups(self) -> tuple[str, ...]:
        """The groups it registered with (the add-in: its one group; a ticket: several)."""

    @property
    def transport_name(self) -> str:
        """``tcp``, ``ws``, ``sse``, or ``remote`` (on another node, kind unknown here)."""

    @property
    def peer(self) -> str:
        """The client's address ("" when on another node)."""

    @property
    def connected_at(self) -> float:
        """When it connected (seconds since the epoch; 0.0 when on another node)."""

    @property
    def node(self) -> str | None:
        """The node it is on; None: this node."""

    @property
    def delivered(self) -> int:
        """Messages written to it (0 when on another node)."""


class Session(SessionInfo, Protocol):
    """A live subscription on this node, as the hub and the core drive it."""

    @property
    def keys(self) -> ClientKey | None:
        """The client key its add-in frames are encrypted with (None: not registered)."""

    def deliver(self, message: Outbound) -> bool:
        """Write (or queue) ``message``; False if the session could not take it (ended, cut off)."""

    def hold(self) -> None:
        """Queue what :meth:`deliver` gets until :meth:`release` (the session is joining)."""

    def release(self, catchup: Catchup) -> None:
        """Write ``catchup`` (with the transport's own events around it), then what was queued; deliver directly from now on."""

    def end(self, reason: str) -> None:
        """Close the subscription after writing what is queued (key rotated, application removed, shutdown)."""

    def going_away(self, reason: str) -> None:
        """This process stops serving it (a restart): tell the client, which may resume elsewhere, and close."""


@dataclass(frozen=True, slots=True)
class Replay:
    """What a hub says a (re)joining session missed after its resume point."""

    #: Not None: messages after the resume point up to this id may be lost (older than the recovery window).
    missed: int | None
    #: The messages addressed to it after the resume point, in id order.
    backlog: Sequence[Outbound]
    #: Where the session resumes from once the backlog is written.
    resume_id: int


@dataclass(frozen=True, slots=True)
class Catchup:
    """What a joining session writes before live messages, in this order: ``kept``, then ``backlog``."""

    #: Messages kept (TTL) for its user while nobody was online, oldest first; their id is 0.
    kept: Sequence[Outbound]
    #: The replay after ``since`` (web transports), in id order.
    backlog: Sequence[Outbound]
    #: The resume point the session asked for (None: a new subscription).
    since: int | None = None
    #: See :attr:`Replay.missed`.
    missed: int | None = None
    #: See :attr:`Replay.resume_id`.
    resume_id: int = 0

    def messages(self) -> Iterator[Outbound]:
        yield from self.kept
        yield from self.backlog


@dataclass
class Delivery:
    """
    What a send reached: the answer of ``/sendmessage`` (and of :meth:`Hub.publish`,
    before keeping).  A value: never changed once made (not frozen, as the values of
    :mod:`pns4ones.messages` and for the same reason: built once per send).  Its
    ``__init__``, ``__slots__``, ``__eq__`` and ``__repr__`` are written out, its fields
    declare no defaults: so the compiled build makes it an extension type
    (``interface.pxd``), as those values.  ``reached`` is neither compared nor shown.
    """

    __slots__ = ("dropped", "message_id", "reached", "sessions", "stored", "users")
    #: Live sessions written to (on every node).
    sessions: int
    #: Distinct users among them.
    users: int
    #: Kept for users who were not reached (a TTL); default False.
    stored: bool
    #: Older kept messages dropped to stay within the bounds; default 0.
    dropped: int
    #: The hub's id of the message (0, the default: none).
    message_id: int
    #: The user ids reached live, for store and forward (who must not get the kept copy); not part of the answer.
    reached: Collection[str]

    def __init__(
        self,
        sessions: int,
        users: int,
        stored: bool = False,
        dropped: int = 0,
        message_id: int = 0,
        reached: Collection[str] = frozenset(),
    ) -> None:
        self.sessions = sessions
        self.users = users
        self.stored = stored
        self.dropped = dropped
        self.message_id = message_id
        self.reached = reached

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Delivery)
        return (self.sessions, self.users, self.stored, self.dropped, self.message_id) == (
            other.sessions,
            other.users,
            other.stored,
            other.dropped,
            other.message_id,
        )

    def __repr__(self) -> str:
        return (
            f"Delivery(sessions={self.sessions!r}, users={self.users!r}, stored={self.stored!r}, "
            f"dropped={self.dropped!r}, message_id={self.message_id!r})"
        )


class HubUnavailable(Exception):
    """The hub between nodes cannot take a message now (sends answer 503)."""


class Hub(Protocol):
    """Routing of messages to the sessions they concern (see :mod:`pns4ones.hub`)."""

    #: Metrics hook, once per message routed on this node: (application, sessions written, frame bytes).
    on_routed: Callable[[str, int, int], None]

    def start(self) -> None:
        """Begin serving (a hub between nodes connects)."""

    def close(self) -> Deferred[None]:
        """Stop serving (a hub between nodes says goodbye and disconnects); never fails."""

    def status(self) -> tuple[bool, str]:
        """For ``/ready``: (ready, why)."""

    def metric_families(self) -> Iterable[Metric]:
        """The hub's own metrics, at scrape time."""

    def attach(self, session: Session) -> None:
        """Start routing to ``session`` (idempotent)."""

    def detach(self, session: Session) -> None:
        """Stop routing to ``session`` (idempotent)."""

    def publish(self, app_id: str, recipient: Recipient, message: Outbound) -> Delivery | Deferred[Delivery]:
        """
        Give ``message`` its id and route it to every session it concerns; fails
        with :class:`HubUnavailable`.  A :class:`Delivery` at once when nothing is
        awaited (the in-process hub: no Deferred per send), a Deferred otherwise.
        """

    def replay(self, session: Session, since: int | None) -> Deferred[Replay]:
        """
        What ``session`` missed after ``since`` (None: nothing, a new subscription).
        The caller attaches the session in the callback: no gap, no duplicate.
        """

    def sessions(self, app_id: str | None = None) -> Iterator[Session]:
        """This node's sessions (of one application)."""

    def remote_sessions(self, app_id: str, ib_id: str) -> dict[str, list[SessionInfo]]:
        """The other nodes' sessions of one information base, by user ({} for a hub of one node)."""

    def counts(self) -> dict[str, dict[str, int]]:
        """This node's sessions: application -> information base -> count."""

    def __len__(self) -> int:
        """This node's sessions."""
