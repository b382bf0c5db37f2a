"""
The embedded store: SQLite in the data directory, through Twisted's ``adbapi``
thread pool (one connection, so writes are serialized and the reactor never
waits on the disk).

* WAL mode, ``busy_timeout``; every change is one ``BEGIN IMMEDIATE``
  transaction, so a ``kill -9`` of the server or of the CLI never leaves a
  half-made change, and the two writing at once both succeed.
* Schema as versioned files ``schema/NNN_*.sql``, applied in order by
  ``PRAGMA user_version``; then, in the same transaction, the secrets still in
  plaintext are sealed (``_sql.migrate_secrets``, key file ``secrets.key``).
* Changes made by another process (the admin CLI) are noticed by polling
  ``PRAGMA data_version``, which changes only when another connection commits.
* The database file is created with mode 0600, its directory 0700;
  ``secure_delete`` zeroes overwritten content, and sealing a store made
  before sealing rebuilds the file (``VACUUM``), so no plaintext key lingers.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Generator
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from twisted.enterprise import adbapi
from twisted.internet import task
from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..reactor import IStoreReactor
from . import StoreError
from ._sql import SQLITE, SQLStore, migrate_secrets
from .sealing import KEY_FILE_NAME, KeyRing, SealingError

T = TypeVar("T")

DB_NAME = "pns4ones.db"
BUSY_TIMEOUT_MS = 10_000


def _migrations() -> list[tuple[int, str]]:
    out = []
    for entry in resources.files("pns4ones.store").joinpath("schema").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            out.append((int(name[:3]), entry.read_text(encoding="utf-8")))
    return sorted(out)


def prepare_database(path: Path, keyring: KeyRing) -> tuple[int, int]:
    """Create the directory and file with private modes; apply pending migrations and seal secrets: (version before, after)."""
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute("BEGIN IMMEDIATE")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        before = version
        for number, sql in _migrations():
            if number > version:
                for statement in sql.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
                version = number
        sealed = migrate_secrets(conn.execute, keyring, time.time())
        conn.execute("COMMIT")
        if sealed:
            # The plaintext keys of a store made before sealing may linger in free pages (from
            # earlier updates) and in old page images: rebuild the file and empty the WAL.
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return before, version
    except sqlite3.DatabaseError as e:
        raise StoreError(f"cannot open the store {path}: {e}") from e
    except SealingError as e:
        raise SealingError(f"cannot open the store {path}: {e}") from None
    finally:
        conn.close()


def _open_connection(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # Overwritten and deleted content is zeroed, not left in free pages (old sealed keys, kept messages).
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")


class SQLiteStore(SQLStore):
    """:class:`pns4ones.store.Store` on SQLite (the SQL itself is in ``_sql.py``)."""

    log = Logger()
    dialect = SQLITE

    def __init__(
        self, data_dir: Path | str, reactor: IStoreReactor | None = None, path: Path | str | None = None, key_file: Path | str | None = None
    ) -> None:
        self.path = Path(path) if path is not None else Path(data_dir) / DB_NAME
        self.location = str(self.path)
        self.keyring = KeyRing(key_file if key_file is not None else Path(data_dir) / KEY_FILE_NAME)
        self.migrated_from, self.schema_version = prepare_database(self.path, self.keyring)
        kwargs: dict[str, IStoreReactor] = {}
        if reactor is not None:
            kwargs["cp_reactor"] = reactor
        self._pool = adbapi.ConnectionPool(
            "sqlite3",
            str(self.path),
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_open_connection,
            **kwargs,
        )
        self._watch: task.LoopingCall | None = None
        self._data_version: int | None = None
        self._closed = False

    def _run(self, interaction: Callable[..., T], *args: object) -> Deferred[T]:
        d: Deferred[T] = self._pool.runInteraction(interaction, *args)
        return d

    def _scrub(self) -> Deferred[None]:
        """After rewriting every secret: old page images leave the WAL (a reader may delay it: best effort)."""
        return self._run(lambda c: c.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall() and None)

    # -- change notification ----------------------------------------------------------

    def start_watching(self, on_change: Callable[[], object], interval: float) -> None:
        @inlineCallbacks
        def poll() -> Generator[Deferred[object], Any, None]:
            version = yield self._read(lambda c: self._one(c, "PRAGMA data_version")[0])
            if self._data_version is not None and version != self._data_version:
                self._data_version = version
                yield maybeDeferred(on_change)
            self._data_version = version

        def failed(failure: Failure) -> None:
            self.log.failure("watching the store failed", failure)

        self._watch = task.LoopingCall(poll)
        self._watch.start(interval, now=True).addErrback(failed)

    def stop_watching(self) -> None:
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        self._watch = None

    def close(self) -> Deferred[None]:
        """Close the pool (a second call does nothing)."""
        self.stop_watching()
        if not self._closed:
            self._closed = True
            self._pool.close()
        from twisted.internet.defer import succeed

        return succeed(None)
