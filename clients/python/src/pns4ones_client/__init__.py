"""Client side of pns4ones: the add-in's subscription protocol (and, later, senders)."""

from .protocol import ClientKey, FrameDecoder, ProtocolError, registration_frame
from .subscriber import Subscriber

__all__ = ["ClientKey", "FrameDecoder", "ProtocolError", "Subscriber", "registration_frame"]
