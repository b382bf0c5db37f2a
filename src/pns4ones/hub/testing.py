"""
A :class:`~pns4ones.hub.Session` that records what it is given, for tests of
the hubs and of the core (as ``txacme.testing`` ships its fakes): it keeps
the contract (held messages come after the catch-up) and nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..wire import ClientKey
from .interface import Catchup, next_session_id
from .outbound import Outbound

if TYPE_CHECKING:
    from .interface import Session


class RecordingSession:
    """A live subscription whose "connection" is a list of what it was written, in order."""

    transport_name = "test"
    peer = "127.0.0.1"
    node: str | None = None

    def __init__(
        self,
        user_id: str,
        groups: tuple[str, ...] = (),
        ib_id: str = "ib",
        app_id: str = "app",
        keys: ClientKey | None = None,
        connected_at: float = 0.0,
    ) -> None:
        self.app_id, self.ib_id, self.user_id = app_id, ib_id, user_id
        self.groups = groups
        self.group = groups[0] if groups else ""
        self.keys = keys
        self.connected_at = connected_at
        self.session_id = next_session_id(self.transport_name)
        #: Messages written, in order.
        self.got: list[Outbound] = []
        #: The catch-ups released, in order.
        self.catchups: list[Catchup] = []
        self.ended: str | None = None
        self.refuse = False
        self._held: list[Outbound] | None = None

    @property
    def delivered(self) -> int:
        return len(self.got)

    @property
    def holding(self) -> bool:
        return self._held is not None

    def ids(self) -> list[int]:
        return [m.id for m in self.got]

    def plaintexts(self) -> list[bytes]:
        return [m.plaintext for m in self.got]

    def deliver(self, message: Outbound) -> bool:
        if self.ended is not None or self.refuse:
            return False
        if self._held is not None:
            self._held.append(message)
        else:
            self.got.append(message)
        return True

    def hold(self) -> None:
        self._held = []

    def release(self, catchup: Catchup) -> None:
        held, self._held = self._held or [], None
        self.catchups.append(catchup)
        for message in [*catchup.messages(), *held]:
            self.deliver(message)

    def end(self, reason: str) -> None:
        self.ended = reason

    def going_away(self, reason: str) -> None:
        self.end(reason)


if TYPE_CHECKING:

    def _is_a_session(session: RecordingSession) -> Session:
        """mypy checks here that the recording session keeps the whole Session contract."""
        return session
