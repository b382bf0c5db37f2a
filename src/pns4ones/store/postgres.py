"""
The shared store: PostgreSQL through psycopg 3, for several nodes serving one
installation (``store = postgresql://USER@HOST:PORT/DB``).

Why a thread pool (``twisted.enterprise.adbapi`` over psycopg's blocking API)
and not psycopg's async API under the asyncio reactor: the SQLite store
already runs its SQL as ``adbapi`` interactions, so both stores share the same
code (``_sql.py``, a small dialect apart); and the node keeps the epoll
reactor, whose hot paths (add-in frames, ``/sendmessage``) the asyncio reactor
would slow down.  The store is never on the hot path: sends are routed from
memory, the store is read at start and when something changes.

* Schema as versioned files ``schema_pg/NNN_*.sql``, applied at start inside
  one transaction under ``pg_advisory_xact_lock`` (two nodes starting at once
  apply them once), recorded in ``schema_version``; then, in the same
  transaction, the secrets still in plaintext are sealed
  (``_sql.migrate_secrets``; every node needs the same key file).
* Every write transaction that changes what the nodes keep in memory ends with
  ``pg_notify('pns4ones_changes', <source>)`` and advances the sequence
  ``pns4ones_change_seq`` (see ``_sql.py`` for the writes that do not).  A thread holds its own
  connection ``LISTEN``ing (the node reloads its registry at once when another
  node or the CLI changed something); the sequence is polled every
  ``store_poll_interval`` as the fallback.
* PostgreSQL unreachable: the store goes *unavailable* (logged once), calls
  fail at once with :class:`StoreUnavailable` (the API answers 503), a probe
  reconnects with backoff; when it answers the store is available again
  (logged once), pooled connections made before the outage are replaced, and
  the registry is reloaded (notifications may have been missed).
* The password comes from the URL, ``store_password_file`` or libpq's own
  environment (``PGPASSWORD``, ``PGPASSFILE``, ``PGHOST``...); logs and
  messages only ever show the URL through :func:`redact_url`.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Protocol, TypedDict, TypeVar

import psycopg
from psycopg.rows import TupleRow
from twisted.enterprise import adbapi
from twisted.internet import task
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..reactor import IStoreReactor, checked
from ..txinternals import DBAPIConnection, QuietPool
from . import StoreError, StoreUnavailable, redact_url
from ._sql import POSTGRES, Cursor, Params, SQLStore, migrate_secrets
from .sealing import KEY_FILE_NAME, KeyRing, SealingError

CHANNEL = "pns4ones_changes"
#: pg_advisory_xact_lock key of the migrations ("pns4ones" in ASCII, as a bigint).
MIGRATION_LOCK = 0x706E73346F6E6573
CONNECT_TIMEOUT = 5
#: Reconnection backoff (seconds): first wait, and the most between attempts.
BACKOFF_FIRST = 0.25
BACKOFF_MAX = 5.0
#: Connection errors: the store is unreachable (anything else is a query error).
T = TypeVar("T")

CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError, adbapi.ConnectionLost)


def migrations() -> list[tuple[int, str, str]]:
    out = []
    for entry in resources.files("pns4ones.store").joinpath("schema_pg").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            out.append((int(name[:3]), name, entry.read_text(encoding="utf-8")))
    return sorted(out)


def migrate(conn: psycopg.Connection, keyring: KeyRing) -> tuple[int, int]:
    """Apply pending migrations and seal secrets in one transaction; (version before, after)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (version integer PRIMARY KEY, name text NOT NULL, applied_at double precision NOT NULL)"
        )
        row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        before = int(row[0]) if row is not None else 0
        version = before
        for number, name, sql in migrations():
            if number > version:
                conn.execute(sql.encode("utf-8"))
                conn.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (%s, %s, %s)", (number, name, time.time()))
                version = number

        def execute(sql: str, args: Params = ()) -> Cursor:
            return conn.execute(POSTGRES.sql(sql), args)

        sealed = migrate_secrets(execute, keyring, time.time())
    if sealed:  # the plaintext keys of a store made before sealing: out of the table's files (dumps never had dead rows)
        autocommit = conn.autocommit
        conn.autocommit = True
        try:
            conn.execute("VACUUM FULL applications")
        finally:
            conn.autocommit = autocommit
    return before, version


class _ConnectArgs(TypedDict, total=False):
    """The connection parameters given beside the URL."""

    connect_timeout: int
    application_name: str
    password: str


class PooledCursor(Cursor, Protocol):
    """The cursor an interaction gets (adbapi's ``Transaction``), on its pool thread's connection, which it can replace."""

    def reconnect(self) -> None: ...
    def reopen(self) -> None: ...


class _Pool(QuietPool):
    def broken(self, conn: DBAPIConnection) -> bool:
        return isinstance(conn, psycopg.Connection) and bool(conn.closed or conn.broken)


class PostgresStore(SQLStore):
    """:class:`pns4ones.store.Store` on PostgreSQL."""

    log = Logger()
    dialect = POSTGRES

    def __init__(
        self,
        url: str,
        password_file: str = "",
        reactor: IStoreReactor | None = None,
        pool_size: int = 4,
        *,
        key_file: Path | str | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = checked(default_reactor, IStoreReactor)
        self.reactor = reactor
        self.url = url
        self.location = redact_url(url)
        self._connect_args: _ConnectArgs = {"connect_timeout": CONNECT_TIMEOUT, "application_name": "pns4ones"}
        if password_file:
            try:
                self._connect_args["password"] = Path(password_file).read_text(encoding="utf-8").strip("\r\n")
            except (OSError, UnicodeDecodeError) as e:
                raise StoreError(f"option 'store_password_file': cannot read {password_file}: {e}") from None
        if key_file is None:  # the data directory the service and the CLI use when none is given
            from ..config import default_data_dir

            key_file = default_data_dir() / KEY_FILE_NAME
        self.keyring = KeyRing(key_file)
        try:
            with self.connect() as conn:
                self.migrated_from, self.schema_version = migrate(conn, self.keyring)
        except psycopg.Error as e:
            raise StoreError(f"cannot open the store {self.location}: {_message(e)}") from None
        except SealingError as e:
            raise SealingError(f"cannot open the store {self.location}: {e}") from None
        #: Identifies this process's own change notifications (it has applied its changes already).
        self._source = uuid.uuid4().hex
        self._generation = 0
        self._generations: dict[int, int] = {}
        self._pool = _Pool(
            "psycopg", url, cp_reconnect=True, cp_min=1, cp_max=pool_size, cp_reactor=reactor, cp_openfun=self._opened, **self._connect_args
        )
        #: False while PostgreSQL cannot be reached (``/ready`` says so).
        self.available = True
        self.unavailable_reason = ""
        self._down_since = 0.0
        self._backoff = BACKOFF_FIRST
        self._probe_call: IDelayedCall | None = None
        self._on_change: Callable[[], object] | None = None
        self._reloading = False
        self._again = False
        self._poll: task.LoopingCall | None = None
        self._seen: int | None = None
        #: The highest change announced by a notification (the poll need not reload for it again).
        self._notified = 0
        #: Change-sequence values of this process's own writes (set.add is atomic: written from pool threads).
        self._own: set[int] = set()
        self._settle = False
        self._listener: threading.Thread | None = None
        self._stopping = threading.Event()
        self._closed = False

    def connect(self, autocommit: bool = False) -> psycopg.Connection[TupleRow]:
        """A new connection of its own (migrations, the listener, the CLI)."""
        return psycopg.connect(self.url, autocommit=autocommit, **self._connect_args)

    # -- running interactions; availability -------------------------------------------------

    def _opened(self, conn: psycopg.Connection[TupleRow]) -> None:
        self._generations[id(conn)] = self._generation

    def _fresh(self, trans: PooledCursor, interaction: Callable[..., T], *args: object) -> T:
        """In the pool's thread: replace a connection made before the last outage, then run."""
        if self._generations.get(id(self._pool.connect())) != self._generation:  # (the pool thread's connection: trans's)
            trans.reconnect()
            trans.reopen()
        return interaction(trans, *args)

    def _run(self, interaction: Callable[..., T], *args: object) -> Deferred[T]:
        if not self.available:
            return fail(StoreUnavailable(self._unavailable_text()))
        d: Deferred[T] = self._pool.runInteraction(self._fresh, interaction, *args)
        return d.addErrback(self._failed)

    def _scrub(self) -> Deferred[None]:
        """After rewriting every secret: VACUUM FULL rewrites ``applications`` without its dead row versions (the old values)."""

        def vacuum() -> None:
            with self.connect(autocommit=True) as conn:
                conn.execute("VACUUM FULL applications")

        return deferToThread(vacuum)

    def _unavailable_text(self) -> str:
        return f"the store (PostgreSQL at {self.location}) is unreachable: {self.unavailable_reason}; reconnecting"

    def _failed(self, failure: Failure) -> Failure:
        if failure.check(*CONNECTION_ERRORS):
            self._down(_message(failure.value))
            return Failure(StoreUnavailable(self._unavailable_text()))
        return failure

    def _down(self, reason: str) -> None:
        if not self.available or self._closed:
            return
        self.available = False
        self.unavailable_reason = reason
        self._down_since = time.monotonic()
        self._generation += 1
        self._backoff = BACKOFF_FIRST
        self.log.error(
            "store {location} unavailable: {reason}; answering 503 where the store is needed, reconnecting",
            location=self.location,
            reason=reason,
            event="store-down",
        )
        self._schedule_probe()

    def _schedule_probe(self) -> None:
        if self._closed or (self._probe_call is not None and self._probe_call.active()):
            return
        self._probe_call = self.reactor.callLater(self._backoff, self._probe)
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _probe(self) -> None:
        self._probe_call = None
        if self.available or self._closed:
            return

        def answered(_: object) -> None:
            self._up()

        def still_down(failure: Failure) -> None:
            if not failure.check(*CONNECTION_ERRORS):
                self.log.failure("probing the store failed unexpectedly", failure)
            else:
                self.unavailable_reason = _message(failure.value)
            self._schedule_probe()

        self._pool.runInteraction(self._fresh, lambda c: c.execute("SELECT 1").fetchone()).addCallbacks(answered, still_down)

    def _up(self) -> None:
        if self.available or self._closed:
            return
        self.available = True
        self.unavailable_reason = ""
        self.log.info(
            "store {location} available again after {seconds:.1f} s",
            location=self.location,
            seconds=time.monotonic() - self._down_since,
            event="store-up",
        )
        self._changed()  # changes made meanwhile were not announced to us

    def probe_now(self) -> None:
        """Try to reconnect at once (the listener reconnected)."""
        if not self.available:
            if self._probe_call is not None and self._probe_call.active():
                self._probe_call.cancel()
            self._probe_call = None
            self._probe()

    # -- writes announce themselves -----------------------------------------------------------

    def _announce(self, cursor: Cursor) -> None:
        (value,) = self._one(
            cursor,
            "SELECT v FROM (SELECT nextval('pns4ones_change_seq') AS v) AS s, LATERAL pg_notify(%s, %s || ':' || v)",
            (CHANNEL, self._source),
        )
        self._own.add(value)  # our own change: the poll need not reload for it

    # -- change notification ----------------------------------------------------------

    def start_watching(self, on_change: Callable[[], object], interval: float) -> None:
        self._on_change = on_change
        self._stopping.clear()
        self._poll = task.LoopingCall(self._poll_changes)
        self._poll.clock = self.reactor
        self._poll.start(interval, now=True)
        self._listener = threading.Thread(target=self._listen, name="pns4ones-store-listener", daemon=True)
        self._listener.start()

    def stop_watching(self) -> None:
        self._on_change = None
        self._stopping.set()
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None

    def _changed(self) -> None:
        """Reload (``on_change``); changes announced during a reload cause one more."""
        if self._on_change is None:
            return
        if self._reloading:
            self._again = True
            return
        self._reloading = True

        def failed(failure: Failure) -> None:
            if not failure.check(StoreUnavailable, *CONNECTION_ERRORS):
                self.log.failure("reloading after a change in the store failed", failure)

        def done(_: object) -> None:
            self._reloading = False
            if self._again:
                self._again = False
                self._changed()

        maybeDeferred(self._on_change).addErrback(failed).addBoth(done)

    def _poll_changes(self) -> Deferred[None] | None:
        """The fallback of notifications: the change sequence moved (or moved last time: a commit may have lagged)."""
        if not self.available:
            return None

        def seen(value: int) -> None:
            known = max(self._seen, self._notified) if self._seen is not None else None
            moved = known is not None and value > known and not self._only_own(known, value)
            self._own = {v for v in self._own if v > value}
            if moved or self._settle:
                self._changed()
            self._settle = moved
            self._seen = value

        return self._run(lambda c: self._one(c, "SELECT last_value FROM pns4ones_change_seq")[0]).addCallbacks(seen, lambda f: None)

    def _only_own(self, seen: int, value: int) -> bool:
        """Every change between the last poll and this one was made by this process."""
        return value > seen and value - seen <= 1000 and all(v in self._own for v in range(seen + 1, value + 1))

    def _listen(self) -> None:
        """The listener thread: LISTEN on a connection of its own; reconnect with backoff."""
        backoff = BACKOFF_FIRST
        lost_reason = ""
        call = self.reactor.callFromThread
        while not self._stopping.is_set():
            try:
                conn = self.connect(autocommit=True)
            except psycopg.Error as e:
                if not lost_reason:
                    lost_reason = _message(e)
                    call(
                        self.log.warn,
                        "store change notifications lost ({reason}); reconnecting",
                        reason=lost_reason,
                        event="store-listen-lost",
                    )
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            try:
                with conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    backoff = BACKOFF_FIRST
                    if lost_reason:
                        lost_reason = ""
                        call(self.log.info, "store change notifications restored", event="store-listen-restored")
                        call(self.probe_now)
                    call(self._changed)  # anything committed before LISTEN took effect
                    while not self._stopping.is_set():
                        for note in conn.notifies(timeout=0.5):
                            source, _, number = note.payload.partition(":")
                            if number.isdigit():
                                self._notified = max(self._notified, int(number))
                            if source != self._source:
                                call(self._changed)
            except psycopg.Error as e:
                if not self._stopping.is_set():
                    lost_reason = _message(e)
                    call(
                        self.log.warn,
                        "store change notifications lost ({reason}); reconnecting",
                        reason=lost_reason,
                        event="store-listen-lost",
                    )
                    call(self._down, lost_reason)
                    self._stopping.wait(backoff)

    def close(self) -> Deferred[None]:
        self.stop_watching()
        self._closed = True
        if self._probe_call is not None and self._probe_call.active():
            self._probe_call.cancel()
        if self._listener is not None:
            self._listener.join(1.0)
        self._pool.close()
        from twisted.internet.defer import succeed

        return succeed(None)


def _message(error: BaseException | None) -> str:
    """psycopg's message on one line (libpq's carry newlines)."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:300]
