"""
The messages in Redis, without I/O: the Lua scripts, ids, the payload, and
what a stream read means.

* ``{P}msg:{app}:{ib}`` (pub/sub): every message of an (application,
  information base), once, as ``STREAM-ID PAYLOAD``;
* ``{P}stream:{app}:{ib}`` (stream): the same payloads, capped by
  ``recovery_messages`` and ``recovery_window``: the recovery window of every
  node.  Message ids are the stream ids ``MS-SEQ`` as ``MS * 1000 + SEQ``.
* PAYLOAD is ``{"o":ORIGIN,"t":TYPE,"to":TARGET,"m":ADDIN-JSON}`` with the
  add-in JSON last and verbatim: a receiving node takes those bytes as they
  are (:meth:`pns4ones.hub.Outbound.rendered`), it never parses and re-renders
  them.  ``,"m":`` cannot occur before the real member: the members before it
  are JSON strings, where a quote is always escaped.

Invariants: ids of one stream only grow, and the pub/sub channel carries them
in that order (one script adds to the stream and publishes).  What a node
gets from a read and what it receives live meanwhile are merged by id: each
message once, in order (:func:`replay_backlog`, :class:`Gates`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from ...messages import Recipient
from ..interface import Replay
from ..outbound import Outbound

Key = tuple[str, str]
#: A decoded Redis reply, as the command answers: str, int, None, or a list of replies (txredisapi
#: publishes no types).  What the scripts answer is read here, which checks its shape as it goes.
Reply: TypeAlias = Any
#: A message as a node routes it: (id, recipient, the message).
Caught = tuple[int, Recipient, Outbound]

PUBLISH_SCRIPT = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'd', ARGV[2])
local ms, seq = string.match(id, '^(%d+)-(%d+)$')
if tonumber(seq) >= 1000 then
  -- more than 1000 messages in a millisecond here: the next millisecond's id, so MS*1000+SEQ stays unique
  redis.call('XDEL', KEYS[1], id)
  id = redis.call('XADD', KEYS[1], string.format('%d-0', tonumber(ms) + 1), 'd', ARGV[2])
end
redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', tonumber(ms) - tonumber(ARGV[4])))
redis.call('PUBLISH', ARGV[1], id .. ' ' .. ARGV[2])
return id
"""

REPLAY_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d', now - tonumber(ARGV[2])))
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local f = {}
for i = 1, #info, 2 do f[info[i]] = info[i + 1] end
local first = ''
if f['first-entry'] then first = f['first-entry'][1] end
local entries = {}
if ARGV[3] ~= '0' then entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[1], '+', 'COUNT', ARGV[3]) end
return {1, f['last-generated-id'], tostring(f['entries-added']), tostring(f['length']), first, entries}
"""

#: The stream's last id ("0-0" when it does not exist): where a node's knowledge of it starts.
LAST_ID_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return '0-0' end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do if info[i] == 'last-generated-id' then return info[i + 1] end end
return '0-0'
"""


def stream_id_to_int(stream_id: str | bytes) -> int:
    text = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
    ms, _, seq = text.partition("-")
    return int(ms) * 1000 + int(seq)


def int_to_stream_id(message_id: int) -> str:
    return f"{message_id // 1000}-{message_id % 1000}"


def recipient_of(kind: str, ib_id: str, target: str) -> Recipient:
    if kind == "user":
        return Recipient("user", ib_id, user_id=target)
    if kind == "group":
        return Recipient("group", ib_id, group=target)
    return Recipient("all", ib_id)


def encode_payload(origin: bytes, recipient: Recipient, plaintext: bytes) -> bytes:
    """``origin``: the publishing node's name as a JSON string."""
    return b'{"o":%s,"t":"%s","to":%s,"m":%s}' % (
        origin,
        recipient.type.encode(),
        json.dumps(recipient.target, ensure_ascii=False).encode("utf-8"),
        plaintext,
    )


def decode_payload(ib_id: str, payload: str) -> tuple[str, Recipient, bytes]:
    """(origin, recipient, the add-in JSON as published); ValueError, KeyError or TypeError if malformed."""
    head, sep, rest = payload.partition(',"m":')
    if not sep or not rest.endswith("}"):
        raise ValueError("no add-in JSON in the payload")
    doc = json.loads(head + "}")
    if not isinstance(doc, dict):
        raise TypeError("the payload is not a JSON object")
    return str(doc["o"]), recipient_of(doc["t"], ib_id, doc["to"]), rest[:-1].encode("utf-8")


@dataclass(frozen=True, slots=True)
class StreamRead:
    """What :data:`REPLAY_SCRIPT` answered, for a read after ``since``."""

    #: Not None: ids after ``since`` up to this one were trimmed (older than the window), or the stream was lost.
    missed: int | None
    #: (id, recipient, add-in JSON) after ``since`` (or after ``missed``), in id order.
    entries: Sequence[tuple[int, Recipient, bytes]]
    #: The stream's last id (0: no stream).
    last_id: int


def read_stream(ib_id: str, since: int | None, reply: Reply) -> StreamRead:
    """The meaning of a :data:`REPLAY_SCRIPT` reply; malformed entries are skipped."""
    if not reply or int(reply[0]) != 1:
        # no stream (never sent to, or Redis lost it): messages may be missing
        return StreamRead(0 if since is not None and since > 0 else None, (), 0)
    _, last, added, length, first, entries = reply
    last_id = stream_id_to_int(last)
    if since is None:
        return StreamRead(None, (), last_id)
    floor = 0
    if int(added) > int(length):  # some were trimmed: everything before the first entry
        floor = stream_id_to_int(first) - 1 if first else last_id
    missed = None
    if since < floor or since > last_id:
        missed = floor
        since = floor
    out = []
    for entry_id, fields in entries or ():
        message_id = stream_id_to_int(entry_id)
        if message_id <= since:
            continue
        try:
            _, recipient, plaintext = decode_payload(ib_id, dict(zip(fields[::2], fields[1::2]))["d"])
        except (ValueError, KeyError, TypeError):
            continue
        out.append((message_id, recipient, plaintext))
    return StreamRead(missed, out, last_id)


def replay_backlog(read: StreamRead, since: int | None, caught: Sequence[Caught], wanted: Callable[[Recipient], bool]) -> Replay:
    """
    What a resuming session gets: the read's entries for it, then what was routed
    while the stream was read (``caught``) and came after them; resume from the last.
    """
    backlog = [Outbound.rendered(plaintext, message_id) for message_id, recipient, plaintext in read.entries if wanted(recipient)]
    last_written = backlog[-1].id if backlog else max(read.last_id, since or 0)
    for message_id, recipient, message in caught:
        if message_id > last_written and wanted(recipient):
            backlog.append(message)
            last_written = message_id
    return Replay(read.missed, backlog, max(read.last_id, last_written))


class Gates:
    """
    The channels whose messages a node holds back while it reads from their
    streams what it missed during an outage of its link.

    Invariants: a gated key's messages are queued, never routed; :meth:`open`
    merges the read's entries with the queue by id, keeps only ids above the
    last one routed, each once, in id order.
    """

    def __init__(self) -> None:
        self._queued: dict[Key, list[Caught]] = {}
        #: Gated keys whose stream is being read.
        self.reading: set[Key] = set()

    def __bool__(self) -> bool:
        return bool(self._queued)

    def __contains__(self, key: object) -> bool:
        return key in self._queued

    def __iter__(self) -> Iterator[Key]:
        return iter(list(self._queued))

    def __len__(self) -> int:
        return len(self._queued)

    def close(self, key: Key) -> None:
        """Hold ``key``'s messages back (what was queued already stays)."""
        self._queued.setdefault(key, [])

    def queue(self, key: Key, item: Caught) -> bool:
        """Queue ``item`` if ``key`` is gated; False if it is not (route it)."""
        queued = self._queued.get(key)
        if queued is None:
            return False
        queued.append(item)
        return True

    def open(self, key: Key, since: int, missed: Sequence[Caught]) -> list[Caught]:
        """Ungate ``key``: the read's entries (``missed``) and the queue, merged, above ``since``, in id order."""
        self.reading.discard(key)
        merged: dict[int, Caught] = {item[0]: item for item in missed}
        for item in self._queued.pop(key, []):
            merged.setdefault(item[0], item)
        return [merged[message_id] for message_id in sorted(merged) if message_id > since]

    def drop(self, key: Key) -> bool:
        """Forget ``key`` (no session needs it any more); True if it was gated."""
        self.reading.discard(key)
        return self._queued.pop(key, None) is not None
