"""
The admin panel's credentials, sessions and login throttle: no HTTP here.

* Passwords: Argon2id from ``cryptography`` (OWASP parameters: 19 MiB, 2
  iterations, 1 lane), a fresh 16-byte salt per hash, stored as a PHC string.
  Hashing takes ~60 ms: callers run it on one of two threads of its own
  (:func:`hash_password_async`).
* Sessions live in memory (a restart logs the administrators out).  The cookie
  carries a random token; the table is keyed by its SHA-256, so a lookup does not
  compare secrets byte by byte.  A session expires after ``idle`` seconds without
  a request and at the latest ``lifetime`` seconds after the login.
* CSRF: every session has its own random token; before a login the token is an
  HMAC of a random pre-session cookie under a per-process secret.
* Failed logins: :class:`Throttle`, taken before the password check, per
  client address and overall, with a bound on concurrent checks.
"""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from ..reactor import IStoreReactor, checked

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


#: Threads that hash and verify passwords: at most this many Argon2id computations at once.
HASH_THREADS = 2
_pools: list[ThreadPool] = []


#: glibc's mallopt() parameter: the size from which blocks are mmap()ed (and unmapped when freed).
_M_MMAP_THRESHOLD = -3


def _mmap_large_blocks() -> None:
    """
    Have the C library serve blocks of 1 MiB and more with mmap(), returned to
    the system when freed.  By default glibc learns from the first freed Argon2id
    buffer (19 MiB) to keep such blocks in each thread's malloc arena instead:
    measured, two hashing threads then held 77 MiB after a burst of logins for
    good, ten threads 380 MiB; with this, the process returns to its size.
    Process-wide (few other blocks are that large); nothing happens where the C
    library is not glibc.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 1 << 20)


def _hash_pool() -> ThreadPool:
    """
    Argon2id's own two threads, not the reactor's shared pool: at most two
    hashes (19 MiB each) in memory at once, whatever the callers do.
    """
    if not _pools:
        from twisted.internet import reactor

        _mmap_large_blocks()
        pool = ThreadPool(minthreads=0, maxthreads=HASH_THREADS, name="pns4ones-argon2")
        pool.start()
        checked(reactor, IStoreReactor).addSystemEventTrigger("during", "shutdown", pool.stop)
        _pools.append(pool)
    return _pools[0]


def hash_password_async(password: str) -> Deferred[str]:
    from twisted.internet import reactor

    return deferToThreadPool(checked(reactor, IStoreReactor), _hash_pool(), hash_password, password)


def verify_password_async(password: str, encoded: str) -> Deferred[bool]:
    from twisted.internet import reactor

    return deferToThreadPool(checked(reactor, IStoreReactor), _hash_pool(), verify_password, password, encoded)


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

    def __init__(self, clock: IReactorTime, idle: float = 1800.0, lifetime: float = 12 * 3600.0, limit: int = 100) -> None:
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


@dataclass(frozen=True, slots=True)
class Refusal:
    """A login attempt refused before any password check: ``reason`` is ``throttled`` or ``busy``; ``wait`` seconds to suggest."""

    reason: str
    wait: float


@dataclass(slots=True)
class _Backoff:
    failures: int = 0
    last: float = 0.0
    checking: int = 0


class Attempt:
    """A login attempt admitted by :meth:`Throttle.begin`: counted as a failure until it says otherwise."""

    __slots__ = ("_done", "_throttle", "peer")

    def __init__(self, throttle: Throttle, peer: str) -> None:
        self._throttle = throttle
        self.peer = peer
        self._done = False

    @property
    def failures(self) -> int:
        """Failures in a row from this attempt's address (this one included)."""
        return self._throttle._record(self.peer).failures

    def failed(self) -> None:
        """The password was wrong: the failure stands."""
        self._finish(refund=False, reset=False)

    def succeeded(self) -> None:
        """The right password: this address's failures and the overall ones are forgiven."""
        self._finish(refund=False, reset=True)

    def abandoned(self) -> None:
        """No password was checked (the store could not answer): the attempt does not count."""
        self._finish(refund=True, reset=False)

    def _finish(self, refund: bool, reset: bool) -> None:
        if self._done:
            return
        self._done = True
        self._throttle._finish(self.peer, refund, reset)


class Throttle:
    """
    The failed-login throttle, taken *before* the password check, per client
    address and overall.

    * :meth:`begin` counts an attempt as a failure from the moment it starts
      (:meth:`Attempt.succeeded` forgives it), so attempts made in parallel see
      each other: thirty at once count thirty, they do not all pass the check
      made before the first one failed.
    * Per address: ``free`` failures in a row, then every attempt waits
      ``2 ** (failures - free)`` seconds (at most ``max_delay``) after the last.
      Overall the same with ``overall_free`` and ``overall_max_delay``, since a
      client can take many addresses (all of 127.0.0.0/8 on loopback).
    * At most ``concurrency`` password checks at once (Argon2id takes ~60 ms of
      a core and 19 MiB each) and one per address: an attempt past that is
      refused at once (``busy``), so a flood never queues work that slows the
      panel for an administrator on another connection.
    * The per-address table is bounded (``max_addresses``): records with no
      delay left go first, then the oldest.
    """

    def __init__(
        self,
        clock: IReactorTime,
        free: int = 5,
        max_delay: float = 300.0,
        overall_free: int = 20,
        overall_max_delay: float = 60.0,
        concurrency: int = 2,
        max_addresses: int = 1024,
    ) -> None:
        self.clock = clock
        self.free = free
        self.max_delay = max_delay
        self.overall_free = overall_free
        self.overall_max_delay = overall_max_delay
        self.concurrency = concurrency
        self.max_addresses = max_addresses
        self._overall = _Backoff()
        self._by_peer: dict[str, _Backoff] = {}

    def _delay(self, backoff: _Backoff, free: int, max_delay: float) -> float:
        if backoff.failures < free:
            return 0.0
        delay = min(2.0 ** min(backoff.failures - free, 64), max_delay)
        return max(0.0, backoff.last + delay - self.clock.seconds())

    def wait(self, peer: str) -> float:
        """Seconds until ``peer`` may try again (0: now), per address and overall."""
        record = self._by_peer.get(peer)
        own = self._delay(record, self.free, self.max_delay) if record is not None else 0.0
        return max(own, self._delay(self._overall, self.overall_free, self.overall_max_delay))

    @property
    def failures(self) -> int:
        """Failures in a row overall."""
        return self._overall.failures

    def begin(self, peer: str) -> Attempt | Refusal:
        """Admit an attempt from ``peer`` (then check the password) or refuse it at once."""
        wait = self.wait(peer)
        if wait > 0:
            return Refusal("throttled", wait)
        record = self._by_peer.get(peer)
        if self._overall.checking >= self.concurrency or (record is not None and record.checking):
            return Refusal("busy", 1.0)
        if record is None:
            record = self._by_peer[peer] = self._new_record()
        now = self.clock.seconds()
        for backoff in (record, self._overall):
            backoff.failures += 1
            backoff.last = now
            backoff.checking += 1
        return Attempt(self, peer)

    def _new_record(self) -> _Backoff:
        if len(self._by_peer) >= self.max_addresses:
            for peer, old in list(self._by_peer.items()):
                if not old.checking and self._delay(old, self.free, self.max_delay) == 0 and old.failures < self.free:
                    del self._by_peer[peer]
            while len(self._by_peer) >= self.max_addresses:
                idle = [(r.last, p) for p, r in self._by_peer.items() if not r.checking]
                if not idle:
                    break
                del self._by_peer[min(idle)[1]]
        return _Backoff()

    def _record(self, peer: str) -> _Backoff:
        return self._by_peer.get(peer) or _Backoff()

    def _finish(self, peer: str, refund: bool, reset: bool) -> None:
        record = self._by_peer.get(peer)
        for backoff in (record, self._overall):
            if backoff is None:
                continue
            backoff.checking = max(0, backoff.checking - 1)
            if reset:
                backoff.failures = 0
            elif refund:
                backoff.failures = max(0, backoff.failures - 1)
