"""pns4ones: a push-notification service for 1C:Enterprise, on Twisted."""

__version__ = "0.1.0"
