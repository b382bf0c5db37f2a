"""
Client side of pns4ones: send through the HTTP API, listen like the 1C add-in.

Blocking (standard library + cryptography): :class:`Sender` (the whole send
API: messages with or without a TTL, batches, groups, presence, tickets),
:class:`Listener`, :class:`Subscriber` (one connection, exactly as the add-in).
Twisted (extra ``[twisted]``): :mod:`pns4ones_client.tx` (``TwistedSender``,
``TwistedListener``).
"""

from ._api import BatchResult, Group, Presence, SendResult, Ticket, UserPresence, envelope, message, recipient
from .backoff import Backoff
from .errors import AuthenticationError, BadRequest, PayloadTooLarge, RateLimited, SendError, ServiceError
from .listener import Listener, listen
from .protocol import ClientKey, FrameDecoder, ProtocolError, registration_frame
from .sender import Sender
from .subscriber import Subscriber

__all__ = [
    "AuthenticationError",
    "Backoff",
    "BadRequest",
    "BatchResult",
    "ClientKey",
    "FrameDecoder",
    "Group",
    "Listener",
    "PayloadTooLarge",
    "Presence",
    "ProtocolError",
    "RateLimited",
    "SendError",
    "SendResult",
    "Sender",
    "ServiceError",
    "Subscriber",
    "Ticket",
    "UserPresence",
    "envelope",
    "listen",
    "message",
    "recipient",
    "registration_frame",
]
