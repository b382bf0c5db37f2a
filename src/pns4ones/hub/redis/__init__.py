"""
The hub between nodes over Redis (``hub = redis://...``), one concern per module:

* :mod:`.url`: what the ``hub`` option says;
* :mod:`.link`: the two connections to Redis, reconnection, the link's state;
* :mod:`.stream`: the messages in Redis (scripts, ids, payload, stream reads), pure;
* :mod:`.presence`: who is online on which node, pure (time passed in);
* :mod:`.sync`: presence over the link (publishing ours, mirroring theirs);
* :mod:`.hub`: :class:`RedisHub`, which puts them together: channels,
  publish and receive, recovery (a resuming web client; the node itself after
  an outage of its link).

``{P}`` in key names is ``pns4ones:{db}:`` (pub/sub channels are not per
database in Redis).  Redis 7 or later (XTRIM MINID, XINFO STREAM's
entries-added).
"""

from .hub import RedisHub
from .presence import RemoteSession
from .url import RedisURL

__all__ = ["RedisHub", "RedisURL", "RemoteSession"]
