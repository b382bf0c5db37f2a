"""
The message hub behind a small interface: who is subscribed where, and fan-out.

* :mod:`.interface`: :class:`Session`, :class:`SessionInfo`, :class:`Hub` and
  the values they exchange (:class:`Delivery`, :class:`Replay`, :class:`Catchup`).
* :mod:`.outbound`: :class:`Outbound`, one message rendered once, encrypted
  once per key.
* :mod:`.routing`: the recipient rule (user, group, all), once for every hub.
* :mod:`.recovery`: message ids and the recovery window (pure).
* :mod:`.local`: :class:`~.local.LocalHub`, one process; :mod:`.redis`:
  :class:`~.redis.RedisHub`, several nodes sharing one Redis.

The hub indexes sessions by (application, information base) and then by user and
group, so finding the recipients of a send costs the same with 10 or 100,000
connections.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .interface import (
    Catchup,
    Clock,
    Delivery,
    Hub,
    HubUnavailable,
    MembersOf,
    Replay,
    Session,
    SessionInfo,
    next_session_id,
)
from .outbound import Outbound

if TYPE_CHECKING:
    from ..config import Config

__all__ = [
    "Catchup",
    "Clock",
    "Delivery",
    "Hub",
    "HubUnavailable",
    "MembersOf",
    "Outbound",
    "Replay",
    "Session",
    "SessionInfo",
    "next_session_id",
    "open_hub",
]


def open_hub(config: Config, members: MembersOf, reactor: Clock) -> Hub:
    """The hub ``config.hub`` names: the in-process one by default."""
    if config.hub == "local":
        from .local import LocalHub

        return LocalHub(members, reactor, config.recovery_window, config.recovery_messages)
    from .redis import RedisHub

    return RedisHub.from_config(config, members, reactor)
