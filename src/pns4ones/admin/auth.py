"""
The admin panel's credentials, sessions and login throttle: no HTTP here.

* Passwords: Argon2id from ``cryptography`` (OWASP parameters: 19 MiB, 2
  iterations, 1 lane), a fresh 16-byte salt per hash, stored as a PHC string.
  Hashing takes ~60 ms: callers run it in a thread (:func:`hash_password_async`).
* Sessions live in memory (a restart logs the administrators out).  The cookie
  carries a random token; the table is keyed by its SHA-256, so a lookup does not
  compare secrets byte by byte.  A session expires after ``idle`` seconds without
  a request and at the latest ``lifetime`` seconds after the login.
* CSRF: every session has its own random token; before a login the token is an
  HMAC of a random pre-session cookie under a per-process secret.
* Failed logins: after ``free`` failures in a row every further attempt waits
  ``2 ** (failures - free)`` seconds (at most ``max_delay``) after the last one.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

#: OWASP Password Storage Cheat Sheet, Argon2id: m=19 MiB, t=2, p=1.
ARGON2_MEMORY_KIB = 19 * 1024
ARGON2_ITERATIONS = 2
ARGON2_LANES = 1
SALT_BYTES = 16
HASH_BYTES = 32

PASSWORD_MIN = 8
PASSWORD_MAX = 1024
LOGIN_MAX = 64


def hash_password(password: str) -> str:
    kdf = Argon2id(
        salt=secrets.token_bytes(SALT_BYTES),
        length=HASH_BYTES,
        iterations=ARGON2_ITERATIONS,
        lanes=ARGON2_LANES,
        memory_cost=ARGON2_MEMORY_KIB,
    )
    return kdf.derive_phc_encoded(password.encode("utf-8", "surrogatepass"))


def verify_password(password: str, encoded: str) -> bool:
    try:
        Argon2id.verify_phc_encoded(password.encode("utf-8", "surrogatepass"), encoded)
    except (InvalidKey, ValueError):
        return False
    return True


def hash_password_async(password: str) -> Deferred[str]:
    return deferToThread(hash_password, password)


def verify_password_async(password: str, encoded: str) -> Deferred[bool]:
    return deferToThread(verify_password, password, encoded)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii", "replace")).digest()


@dataclass(slots=True)
class Session:
    login: str
    csrf: str
    created_at: float
    seen_at: float
    #: One-shot notes for the next page: (kind, text, section of the page; "" = its top).
    flash: list[tuple[str, str, str]] = field(default_factory=list)
    #: One-shot input of refused (or resent) forms, by form, to fill them again.
    forms: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Digest of the administrator's password hash at login: a new password (panel or CLI) ends the session.
    account: bytes = b""


class Sessions:
    """Logged-in administrators, in memory."""

    def __init__(self, clock: Any, idle: float = 1800.0, lifetime: float = 12 * 3600.0, limit: int = 100) -> None:
        self.clock = clock
        self.idle = idle
        self.lifetime = lifetime
        self.limit = limit
        self._sessions: dict[bytes, Session] = {}
        self._secret = secrets.token_bytes(32)

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, login: str) -> tuple[str, Session]:
        self.expire()
        while len(self._sessions) >= self.limit:  # bounded: drop the oldest
            oldest = min(self._sessions, key=lambda k: self._sessions[k].seen_at)
            del self._sessions[oldest]
        now = self.clock.seconds()
        token = secrets.token_urlsafe(32)
        session = Session(login, secrets.token_urlsafe(32), now, now)
        self._sessions[_digest(token)] = session
        return token, session

    def get(self, token: str | None, touch: bool = True) -> Session | None:
        """The live session of ``token``; ``touch=False`` (background polls) does not keep it alive."""
        if not token:
            return None
        key = _digest(token)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock.seconds()
        if now - session.seen_at > self.idle or now - session.created_at > self.lifetime:
            del self._sessions[key]
            return None
        if touch:
            session.seen_at = now
        return session

    def end(self, token: str | None) -> None:
        if token:
            self._sessions.pop(_digest(token), None)

    def end_all(self) -> None:
        self._sessions.clear()

    def expire(self) -> None:
        now = self.clock.seconds()
        for key, s in list(self._sessions.items()):
            if now - s.seen_at > self.idle or now - s.created_at > self.lifetime:
                del self._sessions[key]

    def anonymous_csrf(self, pre_session: str) -> str:
        """The CSRF token of a browser that is not logged in (setup and login forms)."""
        return hmac.new(self._secret, b"pre-session\x00" + pre_session.encode("ascii", "replace"), hashlib.sha256).hexdigest()


class Throttle:
    """Backoff after failed logins (one administrator account, loopback peers only)."""

    def __init__(self, clock: Any, free: int = 5, max_delay: float = 300.0) -> None:
        self.clock = clock
        self.free = free
        self.max_delay = max_delay
        self.failures = 0
        self.last_failure = 0.0

    def wait(self) -> float:
        """Seconds until the next attempt is allowed (0: now)."""
        if self.failures < self.free:
            return 0.0
        delay = min(2.0 ** (self.failures - self.free), self.max_delay)
        return max(0.0, self.last_failure + delay - self.clock.seconds())

    def failed(self) -> None:
        self.failures += 1
        self.last_failure = self.clock.seconds()

    def succeeded(self) -> None:
        self.failures = 0
