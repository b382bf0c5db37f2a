"""
Client side of pns4ones: send through the HTTP API, listen like the 1C add-in.

Blocking (standard library + cryptography): :class:`Sender`, :class:`Listener`,
:class:`Subscriber` (one connection, exactly as the add-in).  Twisted (extra
``[twisted]``): :mod:`pns4ones_client.tx` (``TwistedSender``, ``TwistedListener``).
"""

from ._api import SendResult, message, recipient
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
    "ClientKey",
    "FrameDecoder",
    "Listener",
    "PayloadTooLarge",
    "ProtocolError",
    "RateLimited",
    "SendError",
    "SendResult",
    "Sender",
    "ServiceError",
    "Subscriber",
    "listen",
    "message",
    "recipient",
    "registration_frame",
]
