"""
One message on its way out, shared by every session that writes it.

Invariants:

* The add-in JSON is rendered at most once per message in the whole cluster:
  on the node that takes the send (lazily, only if somebody needs it); other
  nodes and kept messages build their :class:`Outbound` from those bytes
  (:meth:`Outbound.rendered`) and never parse them.
* The add-in frame is encrypted once per application key, the web JSON built
  once: every session writes the same bytes.
* Once rendered, the :class:`Message` is let go: the recovery window keeps
  each message for minutes, and the bytes are all a transport or a replay
  needs (the recovery export reads the message back from them).
"""

from __future__ import annotations

from ..messages import Message, render_addin_json
from ..wire import ClientKey, encode_frame


class Outbound:
    """A message with its id (0: none, see :mod:`pns4ones.hub.recovery`) and the bytes each transport writes."""

    __slots__ = ("_frame", "_frame_key", "_message", "_plaintext", "_web", "_web_text", "frame_size", "id")

    def __init__(self, message: Message, message_id: int = 0) -> None:
        self._message: Message | None = message
        self._plaintext: bytes | None = None
        self.id = message_id
        self._frame_key: ClientKey | None = None
        self._frame = b""
        #: Bytes of the last add-in frame built (0: none), for the metrics.
        self.frame_size = 0
        self._web: bytes | None = None
        self._web_text: str | None = None

    @classmethod
    def rendered(cls, plaintext: bytes, message_id: int = 0) -> Outbound:
        """From the add-in JSON already rendered (by the node that took the send, or kept in the store)."""
        self = cls.__new__(cls)
        self._message = None
        self._plaintext = plaintext
        self.id = message_id
        self._frame_key = None
        self._frame = b""
        self.frame_size = 0
        self._web = None
        self._web_text = None
        return self

    @property
    def message(self) -> Message | None:
        """The message it was made from; None once rendered (or made from rendered bytes)."""
        return self._message

    @property
    def plaintext(self) -> bytes:
        """The add-in JSON (what the add-in decrypts), rendered on first use."""
        plaintext = self._plaintext
        if plaintext is None:
            assert self._message is not None
            plaintext = self._plaintext = render_addin_json(self._message)
            self._message = None  # (see the module's invariants)
        return plaintext

    def addin_frame(self, key: ClientKey) -> bytes:
        """The encrypted add-in frame for ``key`` (the last key's frame is kept)."""
        last = self._frame_key
        if key is last or (last is not None and key == last):
            return self._frame
        plaintext = self._plaintext
        if plaintext is None:  # (the property plaintext, inline: once per message)
            assert self._message is not None
            plaintext = self._plaintext = render_addin_json(self._message)
            self._message = None
        frame = self._frame = encode_frame(key, plaintext)
        self.frame_size = len(frame)
        self._frame_key = key
        return frame

    def web_json(self) -> bytes:
        """``{"id": N, ...the add-in JSON...}`` as UTF-8 (one line: no raw newlines); without ``id`` when it is 0."""
        web = self._web
        if web is None:
            body = self.plaintext
            if not self.id:
                web = body
            else:
                head = b'{"id":%d' % self.id
                web = head + b"}" if body == b"{}" else head + b"," + body[1:]
            self._web = web
        return web

    def web_text(self) -> str:
        """:meth:`web_json` as text (WebSocket text messages)."""
        text = self._web_text
        if text is None:
            text = self._web_text = self.web_json().decode("utf-8")
        return text
