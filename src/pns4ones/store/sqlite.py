"""
The embedded store: SQLite in the data directory, through Twisted's ``adbapi``
thread pool (one connection, so writes are serialized and the reactor never
waits on the disk).

* WAL mode, ``busy_timeout``; every change is one ``BEGIN IMMEDIATE``
  transaction, so a ``kill -9`` of the server or of the CLI never leaves a
  half-made change, and the two writing at once both succeed.
* Schema as versioned files ``schema/NNN_*.sql``, applied in order by
  ``PRAGMA user_version``.
* Changes made by another process (the admin CLI) are noticed by polling
  ``PRAGMA data_version``, which changes only when another connection commits.
* The database file is created with mode 0600, its directory 0700.
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from twisted.enterprise import adbapi
from twisted.internet import task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger

from .. import crypto
from ..wire import ClientKey
from . import AdminAccount, Application, KeptCount, KeptMessage, KeptOutcome, Snapshot, StoreError, TokenRecord, UnknownApplication

DB_NAME = "pns4ones.db"
BUSY_TIMEOUT_MS = 10_000


def _migrations() -> list[tuple[int, str]]:
    out = []
    for entry in resources.files("pns4ones.store").joinpath("schema").iterdir():
        name = entry.name
        if name.endswith(".sql") and name[:3].isdigit():
            out.append((int(name[:3]), entry.read_text(encoding="utf-8")))
    return sorted(out)


def prepare_database(path: Path) -> None:
    """Create the directory and file with private modes; apply pending migrations."""
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("BEGIN IMMEDIATE")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        for number, sql in _migrations():
            if number > version:
                for statement in sql.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as e:
        raise StoreError(f"cannot open the store {path}: {e}") from e
    finally:
        conn.close()


def _open_connection(conn: sqlite3.Connection) -> None:
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")


def _app(row: Any) -> Application:
    return Application(row[0], row[1], row[2], ClientKey.decode(row[3]), row[4])


_APP_COLUMNS = "id, title, server_key, client_key, created_at"


class SQLiteStore:
    """:class:`pns4ones.store.Store` on SQLite."""

    log = Logger()

    def __init__(self, data_dir: Path | str, reactor: Any = None, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else Path(data_dir) / DB_NAME
        self.location = str(self.path)
        prepare_database(self.path)
        kwargs: dict[str, Any] = {}
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

    # -- plumbing --------------------------------------------------------------

    def _write(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        def txn(cursor: Any) -> Any:
            cursor.execute("BEGIN IMMEDIATE")
            return fn(cursor, *args)

        return self._pool.runInteraction(txn)

    def _read(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        return self._pool.runInteraction(fn, *args)

    # -- reads -------------------------------------------------------------------

    def snapshot(self) -> Deferred[Snapshot]:
        def read(cursor: Any) -> Snapshot:
            cursor.execute("BEGIN")  # one consistent view of both tables
            apps = tuple(_app(r) for r in cursor.execute(f"SELECT {_APP_COLUMNS} FROM applications ORDER BY created_at, id").fetchall())
            tokens = tuple(
                TokenRecord(bytes(r[0]), r[1], bytes(r[2]), r[3], r[4])
                for r in cursor.execute("SELECT digest, app_id, token_id, issued_at, expires_at FROM tokens").fetchall()
            )
            memberships = tuple(
                (r[0], r[1], r[2], r[3]) for r in cursor.execute("SELECT app_id, ib_id, group_name, user_id FROM group_members").fetchall()
            )
            kept_ibs = frozenset((r[0], r[1]) for r in cursor.execute("SELECT DISTINCT app_id, ib_id FROM kept_messages").fetchall())
            cursor.execute("COMMIT")
            return Snapshot(apps, tokens, memberships, kept_ibs)

        return self._read(read)

    def list_applications(self) -> Deferred[list[Application]]:
        return self._read(lambda c: [_app(r) for r in c.execute(f"SELECT {_APP_COLUMNS} FROM applications ORDER BY created_at, id").fetchall()])

    def get_application(self, app_id: str) -> Deferred[Application]:
        return self._read(self._get, app_id)

    @staticmethod
    def _get(cursor: Any, app_id: str) -> Application:
        row = cursor.execute(f"SELECT {_APP_COLUMNS} FROM applications WHERE id = ?", (app_id,)).fetchone()
        if row is None:
            raise UnknownApplication(app_id)
        return _app(row)

    def get_admin(self) -> Deferred[AdminAccount | None]:
        def read(cursor: Any) -> AdminAccount | None:
            row = cursor.execute("SELECT login, password_hash FROM admin_account WHERE id = 1").fetchone()
            return AdminAccount(row[0], row[1]) if row else None

        return self._read(read)

    # -- writes ------------------------------------------------------------------

    def create_application(self, title: str, now: float) -> Deferred[Application]:
        def create(cursor: Any) -> Application:
            app = Application(str(uuid.uuid4()), title, crypto.random_key(), ClientKey.generate(), now)
            cursor.execute(
                "INSERT INTO applications (id, title, server_key, client_key, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (app.id, app.title, app.server_key, app.client_key.encode(), now, now),
            )
            return app

        return self._write(create)

    def rotate_server_key(self, app_id: str, now: float) -> Deferred[Application]:
        def rotate(cursor: Any) -> Application:
            self._get(cursor, app_id)
            cursor.execute("UPDATE applications SET server_key = ?, updated_at = ? WHERE id = ?", (crypto.random_key(), now, app_id))
            cursor.execute("DELETE FROM tokens WHERE app_id = ?", (app_id,))
            return self._get(cursor, app_id)

        return self._write(rotate)

    def rotate_client_key(self, app_id: str, now: float) -> Deferred[Application]:
        def rotate(cursor: Any) -> Application:
            self._get(cursor, app_id)
            cursor.execute("UPDATE applications SET client_key = ?, updated_at = ? WHERE id = ?", (ClientKey.generate().encode(), now, app_id))
            return self._get(cursor, app_id)

        return self._write(rotate)

    def remove_application(self, app_id: str) -> Deferred[Application]:
        def remove(cursor: Any) -> Application:
            app = self._get(cursor, app_id)
            cursor.execute("DELETE FROM applications WHERE id = ?", (app_id,))
            return app

        return self._write(remove)

    def reset_tokens(self, app_id: str) -> Deferred[int]:
        def reset(cursor: Any) -> int:
            self._get(cursor, app_id)
            return cursor.execute("DELETE FROM tokens WHERE app_id = ?", (app_id,)).rowcount

        return self._write(reset)

    def add_token(self, token: TokenRecord) -> Deferred[None]:
        def add(cursor: Any) -> None:
            self._get(cursor, token.app_id)
            cursor.execute(
                "INSERT INTO tokens (digest, app_id, token_id, issued_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (token.digest, token.app_id, token.token_id, token.issued_at, token.expires_at),
            )

        return self._write(add)

    def purge_tokens(self, expired_before: float) -> Deferred[int]:
        return self._write(lambda c: c.execute("DELETE FROM tokens WHERE expires_at < ?", (expired_before,)).rowcount)

    def set_admin(self, account: AdminAccount, now: float) -> Deferred[None]:
        def put(cursor: Any) -> None:
            cursor.execute(
                "INSERT INTO admin_account (id, login, password_hash, updated_at) VALUES (1, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET login = excluded.login, password_hash = excluded.password_hash, updated_at = excluded.updated_at",
                (account.login, account.password_hash, now),
            )

        return self._write(put)

    # -- groups ------------------------------------------------------------------------

    def set_group(self, app_id: str, ib_id: str, group: str, user_ids: list[str], now: float) -> Deferred[None]:
        def put(cursor: Any) -> None:
            self._get(cursor, app_id)
            cursor.execute("DELETE FROM group_members WHERE app_id = ? AND ib_id = ? AND group_name = ?", (app_id, ib_id, group))
            cursor.executemany(
                "INSERT INTO group_members (app_id, ib_id, group_name, user_id, added_at) VALUES (?, ?, ?, ?, ?)",
                [(app_id, ib_id, group, u, now) for u in user_ids],
            )

        return self._write(put)

    def add_group_members(self, app_id: str, ib_id: str, group: str, user_ids: list[str], now: float) -> Deferred[int]:
        def add(cursor: Any) -> int:
            self._get(cursor, app_id)
            cursor.executemany(
                "INSERT OR IGNORE INTO group_members (app_id, ib_id, group_name, user_id, added_at) VALUES (?, ?, ?, ?, ?)",
                [(app_id, ib_id, group, u, now) for u in user_ids],
            )
            return cursor.rowcount

        return self._write(add)

    def remove_group_member(self, app_id: str, ib_id: str, group: str, user_id: str) -> Deferred[int]:
        return self._write(
            lambda c: c.execute(
                "DELETE FROM group_members WHERE app_id = ? AND ib_id = ? AND group_name = ? AND user_id = ?", (app_id, ib_id, group, user_id)
            ).rowcount
        )

    def remove_group(self, app_id: str, ib_id: str, group: str) -> Deferred[int]:
        return self._write(
            lambda c: c.execute("DELETE FROM group_members WHERE app_id = ? AND ib_id = ? AND group_name = ?", (app_id, ib_id, group)).rowcount
        )

    def list_groups(self, app_id: str, ib_id: str | None = None) -> Deferred[list[tuple[str, str, int]]]:
        def read(cursor: Any) -> list[tuple[str, str, int]]:
            self._get(cursor, app_id)
            sql = "SELECT ib_id, group_name, COUNT(*) FROM group_members WHERE app_id = ?"
            args: tuple[str, ...] = (app_id,)
            if ib_id is not None:
                sql += " AND ib_id = ?"
                args += (ib_id,)
            return [(r[0], r[1], r[2]) for r in cursor.execute(sql + " GROUP BY ib_id, group_name ORDER BY ib_id, group_name", args).fetchall()]

        return self._read(read)

    def group_members(self, app_id: str, ib_id: str, group: str) -> Deferred[list[str]]:
        def read(cursor: Any) -> list[str]:
            self._get(cursor, app_id)
            rows = cursor.execute(
                "SELECT user_id FROM group_members WHERE app_id = ? AND ib_id = ? AND group_name = ? ORDER BY user_id", (app_id, ib_id, group)
            ).fetchall()
            return [r[0] for r in rows]

        return self._read(read)

    # -- kept messages (store and forward) ------------------------------------------------------

    @staticmethod
    def _drop_oldest(cursor: Any, where: str, args: tuple[Any, ...], limit: int) -> int:
        (count,) = cursor.execute(f"SELECT COUNT(*) FROM kept_messages WHERE {where}", args).fetchone()
        excess = count - limit
        if excess <= 0:
            return 0
        cursor.execute(f"DELETE FROM kept_messages WHERE id IN (SELECT id FROM kept_messages WHERE {where} ORDER BY id LIMIT ?)", (*args, excess))
        return excess

    def keep_message(self, message: KeptMessage, received_by: list[str], max_per_user: int, max_per_app: int) -> Deferred[KeptOutcome]:
        m = message

        def keep(cursor: Any) -> KeptOutcome:
            self._get(cursor, m.app_id)
            cursor.execute(
                "INSERT INTO kept_messages (app_id, ib_id, type, target, payload, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (m.app_id, m.ib_id, m.type, m.target, m.payload, m.created_at, m.expires_at),
            )
            message_id = cursor.lastrowid
            cursor.executemany("INSERT OR IGNORE INTO kept_received (message_id, user_id) VALUES (?, ?)", [(message_id, u) for u in received_by])
            dropped_user = 0
            if m.type == "user":
                dropped_user = self._drop_oldest(cursor, "app_id = ? AND ib_id = ? AND type = 'user' AND target = ?", (m.app_id, m.ib_id, m.target), max_per_user)
            dropped_app = self._drop_oldest(cursor, "app_id = ?", (m.app_id,), max_per_app)
            if dropped_user or dropped_app:
                cursor.execute(
                    "INSERT INTO kept_stats (app_id, dropped) VALUES (?, ?) ON CONFLICT (app_id) DO UPDATE SET dropped = dropped + excluded.dropped",
                    (m.app_id, dropped_user + dropped_app),
                )
            return KeptOutcome(message_id, dropped_user, dropped_app)

        return self._write(keep)

    def take_kept(self, app_id: str, ib_id: str, user_id: str, groups: list[str], now: float) -> Deferred[list[bytes]]:
        """The unexpired kept messages for this user not received yet, oldest first; recorded as received."""

        def take(cursor: Any) -> list[bytes]:
            rows = cursor.execute(
                "SELECT id, type, payload FROM kept_messages AS k WHERE app_id = ? AND ib_id = ? AND expires_at > ? "
                "AND ((type = 'user' AND target = ?) OR type = 'all' OR (type = 'group' AND target IN (SELECT value FROM json_each(?)))) "
                "AND NOT EXISTS (SELECT 1 FROM kept_received AS r WHERE r.message_id = k.id AND r.user_id = ?) ORDER BY id",
                (app_id, ib_id, now, user_id, json.dumps(groups), user_id),
            ).fetchall()
            for_user = [(r[0],) for r in rows if r[1] == "user"]
            cursor.executemany("DELETE FROM kept_messages WHERE id = ?", for_user)
            cursor.executemany("INSERT OR IGNORE INTO kept_received (message_id, user_id) VALUES (?, ?)", [(r[0], user_id) for r in rows if r[1] != "user"])
            return [bytes(r[2]) for r in rows]

        return self._write(take)

    def purge_kept(self, now: float) -> Deferred[int]:
        def purge(cursor: Any) -> int:
            counts = cursor.execute("SELECT app_id, COUNT(*) FROM kept_messages WHERE expires_at <= ? GROUP BY app_id", (now,)).fetchall()
            cursor.executemany(
                "INSERT INTO kept_stats (app_id, expired) VALUES (?, ?) ON CONFLICT (app_id) DO UPDATE SET expired = expired + excluded.expired",
                [(r[0], r[1]) for r in counts],
            )
            return cursor.execute("DELETE FROM kept_messages WHERE expires_at <= ?", (now,)).rowcount

        return self._write(purge)

    def kept_ibs(self) -> Deferred[frozenset[tuple[str, str]]]:
        return self._read(lambda c: frozenset((r[0], r[1]) for r in c.execute("SELECT DISTINCT app_id, ib_id FROM kept_messages").fetchall()))

    def kept_counts(self) -> Deferred[list[KeptCount]]:
        def read(cursor: Any) -> list[KeptCount]:
            rows = cursor.execute(
                "SELECT a.id, (SELECT COUNT(*) FROM kept_messages k WHERE k.app_id = a.id), COALESCE(s.dropped, 0), COALESCE(s.expired, 0) "
                "FROM applications a LEFT JOIN kept_stats s ON s.app_id = a.id ORDER BY a.created_at, a.id"
            ).fetchall()
            return [KeptCount(r[0], r[1], r[2], r[3]) for r in rows]

        return self._read(read)

    # -- change notification ----------------------------------------------------------

    def start_watching(self, on_change: Callable[[], object], interval: float) -> None:
        @inlineCallbacks
        def poll() -> Any:
            version = yield self._read(lambda c: c.execute("PRAGMA data_version").fetchone()[0])
            if self._data_version is not None and version != self._data_version:
                self._data_version = version
                yield on_change()
            self._data_version = version

        def failed(failure: Any) -> None:
            self.log.failure("watching the store failed", failure)

        self._watch = task.LoopingCall(poll)
        self._watch.start(interval, now=True).addErrback(failed)

    def stop_watching(self) -> None:
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        self._watch = None

    def close(self) -> Deferred[None]:
        self.stop_watching()
        self._pool.close()
        from twisted.internet.defer import succeed

        return succeed(None)
