"""
The SQL both stores share: every :class:`pns4ones.store.Store` method as an
``adbapi`` interaction over a DB-API cursor, written once.

What differs between SQLite and PostgreSQL is a small :class:`Dialect`: the
placeholder style, how a write transaction begins (``BEGIN IMMEDIATE`` on
SQLite, implicit on PostgreSQL), how a consistent read begins, and how a list
parameter is matched (``json_each`` on SQLite, ``= ANY`` on PostgreSQL).  The
rest (upserts with ``ON CONFLICT``, ``RETURNING``) is SQL both understand.

A subclass provides ``_run(interaction, *args)`` (run it on its pool) and may
override ``_announce(cursor)``, called in every write transaction that changes
what the nodes keep in memory (PostgreSQL notifies the other nodes there).
Writes that do not (taking kept messages, purges, keeping a message where
others already wait) are not announced: a burst of them would otherwise make
every node reload its registry over and over.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, TypeVar

from twisted.internet.defer import Deferred, fail, succeed

from .. import crypto
from ..jsondoc import JSONObject
from ..wire import ClientKey, WireError
from . import (
    AdminAccount,
    Application,
    AuditEntry,
    KeptCount,
    KeptInfo,
    KeptMessage,
    KeptOutcome,
    KeptTarget,
    Snapshot,
    StoreError,
    TokenRecord,
    UnknownApplication,
)
from .export import EXPORT_FORMAT, SEALED_VERSION, check_export
from .sealing import PROBE, KeyRing, SealingError, SecretKey, key_id_of, seal

T = TypeVar("T")

#: A result row: each column of the type the query selects (str, int, float, bytes, None), which no static type says.
Row: TypeAlias = Sequence[Any]
#: The arguments of a statement.
Params: TypeAlias = Sequence[object]


class Cursor(Protocol):
    """What the interactions use of a DB-API cursor (adbapi's ``Transaction`` over sqlite3's or psycopg's)."""

    @property
    def rowcount(self) -> int: ...
    def execute(self, sql: str, args: Params = ..., /) -> Cursor: ...
    def executemany(self, sql: str, rows: Sequence[Params], /) -> object: ...
    def fetchone(self) -> Row | None: ...
    def fetchall(self) -> Sequence[Row]: ...


class Execute(Protocol):
    """Runs one statement written with the dialect's placeholders (a migration's connection)."""

    def __call__(self, sql: str, args: Params = ..., /) -> Cursor: ...


_APP_COLUMNS = "id, title, server_key, client_key, created_at"
#: The columns whose values are sealed (store/sealing.py), each bound to its row's id.
SEALED_COLUMNS = ("server_key", "client_key")


@dataclass(frozen=True)
class Dialect:
    name: str
    #: First statement of a write transaction (None: the driver opens one).
    begin_write: str | None
    #: First statement of a multi-statement consistent read, and its end.
    begin_read: str | None
    end_read: str | None
    #: Placeholder of the driver (the shared SQL is written with ``?``).
    placeholder: str
    #: SQL matching ``target`` against a list parameter, and how to pass the list.
    in_list: str
    list_param: Callable[[list[str]], object]
    #: Serializes takers of one user's kept messages (two sessions of a user on two nodes), or None when writes are serial anyway.
    user_lock: str | None = None
    #: Appended to the read of the ``sealing`` row in a write transaction: waits for a key rotation under way.
    share_lock: str = ""

    def sql(self, text: str, _cache: dict[tuple[str, str], str] = {}) -> str:  # noqa: B006 - a deliberate cache
        key = (self.placeholder, text)
        out = _cache.get(key)
        if out is None:
            out = _cache[key] = text.replace("?", self.placeholder) if self.placeholder != "?" else text
        return out


SQLITE = Dialect(
    "sqlite",
    begin_write="BEGIN IMMEDIATE",
    begin_read="BEGIN",
    end_read="COMMIT",
    placeholder="?",
    in_list="target IN (SELECT value FROM json_each(?))",
    list_param=json.dumps,
)

POSTGRES = Dialect(
    "postgresql",
    begin_write=None,
    begin_read="SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
    end_read=None,
    placeholder="%s",
    in_list="target = ANY(?)",
    list_param=list,
    user_lock="SELECT pg_advisory_xact_lock(hashtextextended(?, 0))",
    share_lock=" FOR SHARE",
)


class SQLStore:
    """
    Every role of :class:`pns4ones.store.Store`, once, over :attr:`dialect`.
    Server keys and client keys are sealed on write and opened on read with
    :attr:`keyring` (store/sealing.py): nothing above the store sees a sealed value.
    """

    dialect: Dialect
    keyring: KeyRing
    location: str
    migrated_from: int
    schema_version: int
    #: An embedded store is always there; PostgreSQL's goes False while it is unreachable.
    available = True
    unavailable_reason = ""

    # -- plumbing (subclasses provide _run) ---------------------------------------------

    def _run(self, interaction: Callable[..., T], *args: object) -> Deferred[T]:
        """Run ``interaction(cursor, *args)`` in a transaction of the store's pool."""
        raise NotImplementedError

    def _announce(self, cursor: Cursor) -> None:
        """Called last in every write transaction that changes what nodes keep in memory."""

    def _x(self, cursor: Cursor, sql: str, args: Params = ()) -> Cursor:
        return cursor.execute(self.dialect.sql(sql), args)

    def _one(self, cursor: Cursor, sql: str, args: Params = ()) -> Row:
        """The row of a query that always answers one (COUNT, RETURNING, the ``sealing`` row of an opened store)."""
        row = self._x(cursor, sql, args).fetchone()
        if row is None:
            raise StoreError(f"the database answered no row to: {sql}")
        return row

    def _many(self, cursor: Cursor, sql: str, rows: Sequence[Params]) -> int:
        if not rows:
            return 0
        cursor.executemany(self.dialect.sql(sql), rows)
        return max(cursor.rowcount, 0)

    def _write(self, fn: Callable[..., T], *args: object, announce: bool = True) -> Deferred[T]:
        begin = self.dialect.begin_write

        def txn(cursor: Cursor) -> T:
            if begin:
                cursor.execute(begin)
            result = fn(cursor, *args)
            if announce:
                self._announce(cursor)
            return result

        return self._run(txn)

    # -- sealing -----------------------------------------------------------------------

    def _app(self, row: Row) -> Application:
        """An ``applications`` row (id, title, server_key, client_key, created_at) with its keys opened."""
        ring = self.keyring
        server_key = ring.open(row[2], "applications", "server_key", row[0])
        client_key = ring.open(row[3], "applications", "client_key", row[0])
        return Application(row[0], row[1], server_key, ClientKey.decode(client_key), row[4])

    def _sealing_key(self, cursor: Cursor) -> SecretKey:
        """The key new values are sealed with: the one the store names (waiting for a rotation under way to finish)."""
        row = self._x(cursor, "SELECT key_id FROM sealing WHERE id = 1" + self.dialect.share_lock).fetchone()
        if row is None:
            raise SealingError("the store has no sealing key yet: open it with this version of pns4ones first")
        key = self.keyring.get(row[0])
        if key is None:
            raise SealingError(
                f"the store seals with key {row[0]}, which the key file {self.keyring.path} does not hold: copy it from the node that has it"
            )
        return key

    def _seal_app(self, key: SecretKey, app_id: str, column: str, value: str) -> str:
        return seal(key, value, "applications", column, app_id)

    def rotate_secrets_key(self, new: SecretKey, now: float) -> Deferred[int]:
        """
        Seal every secret of the store under ``new`` (which the key file must
        hold already), in one transaction, and make it the store's key; the
        number of values sealed anew.  Writers of secrets wait for it (the
        ``sealing`` row is updated first: PostgreSQL locks it; SQLite has one writer).
        """

        def rotate(cursor: Cursor) -> int:
            if self.keyring.get(new.id) is None:
                raise SealingError(f"key {new.id} is not in the key file {self.keyring.path}")
            self._x(
                cursor,
                "UPDATE sealing SET key_id = ?, probe = ?, sealed_at = ? WHERE id = 1",
                (new.id, seal(new, PROBE, "sealing", "probe", "1"), now),
            )
            count = 0
            for app_id, *values in self._x(cursor, "SELECT id, server_key, client_key FROM applications").fetchall():
                sealed = [
                    seal(new, self.keyring.open(value, "applications", column, app_id), "applications", column, app_id)
                    for column, value in zip(SEALED_COLUMNS, values)
                ]
                self._x(cursor, "UPDATE applications SET server_key = ?, client_key = ? WHERE id = ?", (*sealed, app_id))
                count += len(sealed)
            return count

        return self._write(rotate).addCallback(lambda count: self._scrub().addCallback(lambda _: count))

    def _scrub(self) -> Deferred[None]:
        """After :meth:`rotate_secrets_key`: drop what the database keeps of the old values (each store knows how)."""
        return succeed(None)

    def sealing_key_id(self) -> Deferred[str]:
        """The id of the key the store seals with."""
        return self._read(lambda c: self._one(c, "SELECT key_id FROM sealing WHERE id = 1")[0])

    def _read(self, fn: Callable[..., T], *args: object) -> Deferred[T]:
        return self._run(fn, *args)

    def _consistent(self, fn: Callable[[Cursor], T]) -> Callable[[Cursor], T]:
        """``fn`` in one consistent view of every table."""

        def read(cursor: Cursor) -> T:
            if self.dialect.begin_read:
                cursor.execute(self.dialect.begin_read)
            result = fn(cursor)
            if self.dialect.end_read:
                cursor.execute(self.dialect.end_read)
            return result

        return read

    # -- reads -------------------------------------------------------------------

    def _snapshot(self, cursor: Cursor) -> Snapshot:
        x = self._x
        apps = tuple(self._app(r) for r in x(cursor, f"SELECT {_APP_COLUMNS} FROM applications ORDER BY created_at, id").fetchall())
        tokens = tuple(
            TokenRecord(bytes(r[0]), r[1], bytes(r[2]), r[3], r[4])
            for r in x(cursor, "SELECT digest, app_id, token_id, issued_at, expires_at FROM tokens").fetchall()
        )
        memberships = tuple(
            (r[0], r[1], r[2], r[3]) for r in x(cursor, "SELECT app_id, ib_id, group_name, user_id FROM group_members").fetchall()
        )
        kept_ibs = frozenset((r[0], r[1]) for r in x(cursor, "SELECT DISTINCT app_id, ib_id FROM kept_messages").fetchall())
        return Snapshot(apps, tokens, memberships, kept_ibs)

    def snapshot(self) -> Deferred[Snapshot]:
        return self._read(self._consistent(self._snapshot))

    def list_applications(self) -> Deferred[list[Application]]:
        return self._read(
            lambda c: [self._app(r) for r in self._x(c, f"SELECT {_APP_COLUMNS} FROM applications ORDER BY created_at, id").fetchall()]
        )

    def get_application(self, app_id: str) -> Deferred[Application]:
        return self._read(self._get, app_id)

    def _get(self, cursor: Cursor, app_id: str) -> Application:
        row = self._x(cursor, f"SELECT {_APP_COLUMNS} FROM applications WHERE id = ?", (app_id,)).fetchone()
        if row is None:
            raise UnknownApplication(app_id)
        return self._app(row)

    def get_token(self, digest: bytes) -> Deferred[TokenRecord | None]:
        """The token with this digest (issued by any node), or None."""

        def read(cursor: Cursor) -> TokenRecord | None:
            r = self._x(cursor, "SELECT digest, app_id, token_id, issued_at, expires_at FROM tokens WHERE digest = ?", (digest,)).fetchone()
            return TokenRecord(bytes(r[0]), r[1], bytes(r[2]), r[3], r[4]) if r else None

        return self._read(read)

    def get_admin(self) -> Deferred[AdminAccount | None]:
        def read(cursor: Cursor) -> AdminAccount | None:
            row = self._x(cursor, "SELECT login, password_hash FROM admin_account WHERE id = 1").fetchone()
            return AdminAccount(row[0], row[1]) if row else None

        return self._read(read)

    # -- writes ------------------------------------------------------------------

    def create_application(self, title: str, now: float) -> Deferred[Application]:
        def create(cursor: Cursor) -> Application:
            app = Application(str(uuid.uuid4()), title, crypto.random_key(), ClientKey.generate(), now)
            key = self._sealing_key(cursor)
            self._x(
                cursor,
                "INSERT INTO applications (id, title, server_key, client_key, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    app.id,
                    app.title,
                    self._seal_app(key, app.id, "server_key", app.server_key),
                    self._seal_app(key, app.id, "client_key", app.client_key.encode()),
                    now,
                    now,
                ),
            )
            return app

        return self._write(create)

    def rotate_server_key(self, app_id: str, now: float) -> Deferred[Application]:
        def rotate(cursor: Cursor) -> Application:
            self._get(cursor, app_id)
            sealed = self._seal_app(self._sealing_key(cursor), app_id, "server_key", crypto.random_key())
            self._x(cursor, "UPDATE applications SET server_key = ?, updated_at = ? WHERE id = ?", (sealed, now, app_id))
            self._x(cursor, "DELETE FROM tokens WHERE app_id = ?", (app_id,))
            return self._get(cursor, app_id)

        return self._write(rotate)

    def rotate_client_key(self, app_id: str, now: float) -> Deferred[Application]:
        def rotate(cursor: Cursor) -> Application:
            self._get(cursor, app_id)
            sealed = self._seal_app(self._sealing_key(cursor), app_id, "client_key", ClientKey.generate().encode())
            self._x(cursor, "UPDATE applications SET client_key = ?, updated_at = ? WHERE id = ?", (sealed, now, app_id))
            return self._get(cursor, app_id)

        return self._write(rotate)

    def remove_application(self, app_id: str) -> Deferred[Application]:
        def remove(cursor: Cursor) -> Application:
            app = self._get(cursor, app_id)
            self._x(cursor, "DELETE FROM applications WHERE id = ?", (app_id,))
            return app

        return self._write(remove)

    def reset_tokens(self, app_id: str) -> Deferred[int]:
        def reset(cursor: Cursor) -> int:
            self._get(cursor, app_id)
            return self._x(cursor, "DELETE FROM tokens WHERE app_id = ?", (app_id,)).rowcount

        return self._write(reset)

    def add_token(self, token: TokenRecord) -> Deferred[None]:
        def add(cursor: Cursor) -> None:
            self._get(cursor, token.app_id)
            self._x(
                cursor,
                "INSERT INTO tokens (digest, app_id, token_id, issued_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                (token.digest, token.app_id, token.token_id, token.issued_at, token.expires_at),
            )

        return self._write(add)

    def purge_tokens(self, expired_before: float) -> Deferred[int]:
        return self._write(lambda c: self._x(c, "DELETE FROM tokens WHERE expires_at < ?", (expired_before,)).rowcount, announce=False)

    def set_admin(self, account: AdminAccount, now: float) -> Deferred[None]:
        def put(cursor: Cursor) -> None:
            self._x(
                cursor,
                "INSERT INTO admin_account (id, login, password_hash, updated_at) VALUES (1, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET login = excluded.login, password_hash = excluded.password_hash, updated_at = excluded.updated_at",
                (account.login, account.password_hash, now),
            )

        return self._write(put)

    # -- groups ------------------------------------------------------------------------

    def set_group(self, app_id: str, ib_id: str, group: str, user_ids: list[str], now: float) -> Deferred[None]:
        def put(cursor: Cursor) -> None:
            self._get(cursor, app_id)
            self._x(cursor, "DELETE FROM group_members WHERE app_id = ? AND ib_id = ? AND group_name = ?", (app_id, ib_id, group))
            self._many(
                cursor,
                "INSERT INTO group_members (app_id, ib_id, group_name, user_id, added_at) VALUES (?, ?, ?, ?, ?)",
                [(app_id, ib_id, group, u, now) for u in user_ids],
            )

        return self._write(put)

    def add_group_members(self, app_id: str, ib_id: str, group: str, user_ids: list[str], now: float) -> Deferred[int]:
        def add(cursor: Cursor) -> int:
            self._get(cursor, app_id)
            return self._many(
                cursor,
                "INSERT INTO group_members (app_id, ib_id, group_name, user_id, added_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                [(app_id, ib_id, group, u, now) for u in user_ids],
            )

        return self._write(add)

    def remove_group_member(self, app_id: str, ib_id: str, group: str, user_id: str) -> Deferred[int]:
        return self._write(
            lambda c: (
                self._x(
                    c,
                    "DELETE FROM group_members WHERE app_id = ? AND ib_id = ? AND group_name = ? AND user_id = ?",
                    (app_id, ib_id, group, user_id),
                ).rowcount
            )
        )

    def remove_group(self, app_id: str, ib_id: str, group: str) -> Deferred[int]:
        return self._write(
            lambda c: (
                self._x(c, "DELETE FROM group_members WHERE app_id = ? AND ib_id = ? AND group_name = ?", (app_id, ib_id, group)).rowcount
            )
        )

    def list_groups(self, app_id: str, ib_id: str | None = None) -> Deferred[list[tuple[str, str, int]]]:
        def read(cursor: Cursor) -> list[tuple[str, str, int]]:
            self._get(cursor, app_id)
            sql = "SELECT ib_id, group_name, COUNT(*) FROM group_members WHERE app_id = ?"
            args: tuple[str, ...] = (app_id,)
            if ib_id is not None:
                sql += " AND ib_id = ?"
                args += (ib_id,)
            return [
                (r[0], r[1], r[2]) for r in self._x(cursor, sql + " GROUP BY ib_id, group_name ORDER BY ib_id, group_name", args).fetchall()
            ]

        return self._read(read)

    def group_members(self, app_id: str, ib_id: str, group: str) -> Deferred[list[str]]:
        def read(cursor: Cursor) -> list[str]:
            self._get(cursor, app_id)
            rows = self._x(
                cursor,
                "SELECT user_id FROM group_members WHERE app_id = ? AND ib_id = ? AND group_name = ? ORDER BY user_id",
                (app_id, ib_id, group),
            ).fetchall()
            return [r[0] for r in rows]

        return self._read(read)

    # -- kept messages (store and forward) ------------------------------------------------------

    def _drop_oldest(self, cursor: Cursor, where: str, args: tuple[object, ...], limit: int) -> int:
        (count,) = self._one(cursor, f"SELECT COUNT(*) FROM kept_messages WHERE {where}", args)
        excess = count - limit
        if excess <= 0:
            return 0
        self._x(
            cursor,
            f"DELETE FROM kept_messages WHERE id IN (SELECT id FROM kept_messages WHERE {where} ORDER BY id LIMIT ?)",
            (*args, excess),
        )
        return excess

    def keep_message(self, message: KeptMessage, received_by: list[str], max_per_user: int, max_per_app: int) -> Deferred[KeptOutcome]:
        m = message

        def keep(cursor: Cursor) -> KeptOutcome:
            self._get(cursor, m.app_id)
            (waiting,) = self._one(
                cursor,
                "SELECT COUNT(*) FROM (SELECT 1 FROM kept_messages WHERE app_id = ? AND ib_id = ? LIMIT 1) AS w",
                (m.app_id, m.ib_id),
            )
            (message_id,) = self._one(
                cursor,
                "INSERT INTO kept_messages (app_id, ib_id, type, target, payload, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (m.app_id, m.ib_id, m.type, m.target, m.payload, m.created_at, m.expires_at),
            )
            self._many(
                cursor,
                "INSERT INTO kept_received (message_id, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(message_id, u) for u in received_by],
            )
            dropped_user = 0
            if m.type == "user":
                dropped_user = self._drop_oldest(
                    cursor, "app_id = ? AND ib_id = ? AND type = 'user' AND target = ?", (m.app_id, m.ib_id, m.target), max_per_user
                )
            dropped_app = self._drop_oldest(cursor, "app_id = ?", (m.app_id,), max_per_app)
            if dropped_user or dropped_app:
                self._x(
                    cursor,
                    "INSERT INTO kept_stats (app_id, dropped) VALUES (?, ?) ON CONFLICT (app_id) DO UPDATE SET dropped = kept_stats.dropped + excluded.dropped",
                    (m.app_id, dropped_user + dropped_app),
                )
            if not waiting:  # registrations in this information base now look for kept messages
                self._announce(cursor)
            return KeptOutcome(message_id, dropped_user, dropped_app)

        return self._write(keep, announce=False)

    def take_kept(self, app_id: str, ib_id: str, user_id: str, groups: list[str], now: float) -> Deferred[list[bytes]]:
        """The unexpired kept messages for this user not received yet, oldest first; recorded as received."""
        d = self.dialect

        def take(cursor: Cursor) -> list[bytes]:
            if d.user_lock:  # then the query below sees what another taker committed
                self._x(cursor, d.user_lock, (json.dumps(["pns4ones-kept", app_id, ib_id, user_id]),))
            rows = self._x(
                cursor,
                "SELECT id, type, payload FROM kept_messages AS k WHERE app_id = ? AND ib_id = ? AND expires_at > ? "
                f"AND ((type = 'user' AND target = ?) OR type = 'all' OR (type = 'group' AND {d.in_list})) "
                "AND NOT EXISTS (SELECT 1 FROM kept_received AS r WHERE r.message_id = k.id AND r.user_id = ?) ORDER BY id",
                (app_id, ib_id, now, user_id, d.list_param(groups), user_id),
            ).fetchall()
            self._many(cursor, "DELETE FROM kept_messages WHERE id = ?", [(r[0],) for r in rows if r[1] == "user"])
            self._many(
                cursor,
                "INSERT INTO kept_received (message_id, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(r[0], user_id) for r in rows if r[1] != "user"],
            )
            return [bytes(r[2]) for r in rows]

        return self._write(take, announce=False)

    def purge_kept(self, now: float) -> Deferred[int]:
        def purge(cursor: Cursor) -> int:
            counts = self._x(cursor, "SELECT app_id, COUNT(*) FROM kept_messages WHERE expires_at <= ? GROUP BY app_id", (now,)).fetchall()
            self._many(
                cursor,
                "INSERT INTO kept_stats (app_id, expired) VALUES (?, ?) ON CONFLICT (app_id) DO UPDATE SET expired = kept_stats.expired + excluded.expired",
                [(r[0], r[1]) for r in counts],
            )
            return self._x(cursor, "DELETE FROM kept_messages WHERE expires_at <= ?", (now,)).rowcount

        return self._write(purge, announce=False)

    def kept_ibs(self) -> Deferred[frozenset[tuple[str, str]]]:
        return self._read(
            lambda c: frozenset((r[0], r[1]) for r in self._x(c, "SELECT DISTINCT app_id, ib_id FROM kept_messages").fetchall())
        )

    def kept_counts(self) -> Deferred[list[KeptCount]]:
        def read(cursor: Cursor) -> list[KeptCount]:
            rows = self._x(
                cursor,
                "SELECT a.id, (SELECT COUNT(*) FROM kept_messages k WHERE k.app_id = a.id), COALESCE(s.dropped, 0), COALESCE(s.expired, 0) "
                "FROM applications a LEFT JOIN kept_stats s ON s.app_id = a.id ORDER BY a.created_at, a.id",
            ).fetchall()
            return [KeptCount(r[0], r[1], r[2], r[3]) for r in rows]

        return self._read(read)

    # -- the admin panel's console: rename, kept messages per recipient, the audit log ----------

    def rename_application(self, app_id: str, title: str, now: float) -> Deferred[Application]:
        def rename(cursor: Cursor) -> Application:
            self._get(cursor, app_id)
            self._x(cursor, "UPDATE applications SET title = ?, updated_at = ? WHERE id = ?", (title, now, app_id))
            return self._get(cursor, app_id)

        return self._write(rename)

    def kept_summary(self, app_id: str, now: float, limit: int, offset: int = 0) -> Deferred[tuple[int, list[KeptTarget]]]:
        """Unexpired kept messages of an application per recipient (information base, type, target): one page and the total."""
        where = "FROM kept_messages WHERE app_id = ? AND expires_at > ? GROUP BY ib_id, type, target"

        def read(cursor: Cursor) -> tuple[int, list[KeptTarget]]:
            self._get(cursor, app_id)
            (total,) = self._one(cursor, f"SELECT COUNT(*) FROM (SELECT 1 {where}) AS g", (app_id, now))
            rows = self._x(
                cursor,
                f"SELECT ib_id, type, target, COUNT(*), MIN(created_at), MIN(expires_at), MAX(expires_at) {where} "
                "ORDER BY ib_id, type, target LIMIT ? OFFSET ?",
                (app_id, now, limit, offset),
            ).fetchall()
            return total, [KeptTarget(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]

        return self._read(self._consistent(read))

    def _for_user(self, user_id: str, groups: list[str]) -> tuple[str, tuple[object, ...]]:
        """What :meth:`take_kept` would hand this user: the WHERE clause after ``app_id``, ``ib_id`` and expiry, and its arguments."""
        d = self.dialect
        return (
            f"AND ((type = 'user' AND target = ?) OR type = 'all' OR (type = 'group' AND {d.in_list})) "
            "AND NOT EXISTS (SELECT 1 FROM kept_received AS r WHERE r.message_id = k.id AND r.user_id = ?)",
            (user_id, d.list_param(groups), user_id),
        )

    def kept_for_user(
        self, app_id: str, ib_id: str, user_id: str, groups: list[str], now: float, limit: int, offset: int = 0
    ) -> Deferred[tuple[int, list[KeptInfo]]]:
        """The unexpired kept messages this user would get on connecting (not received yet), oldest first: one page and the total."""
        clause, args = self._for_user(user_id, groups)
        where = f"FROM kept_messages AS k WHERE app_id = ? AND ib_id = ? AND expires_at > ? {clause}"

        def read(cursor: Cursor) -> tuple[int, list[KeptInfo]]:
            self._get(cursor, app_id)
            (total,) = self._one(cursor, f"SELECT COUNT(*) {where}", (app_id, ib_id, now, *args))
            rows = self._x(
                cursor,
                f"SELECT id, type, target, created_at, expires_at, payload {where} ORDER BY id LIMIT ? OFFSET ?",
                (app_id, ib_id, now, *args, limit, offset),
            ).fetchall()
            return total, [KeptInfo(r[0], r[1], r[2], r[3], r[4], bytes(r[5])) for r in rows]

        return self._read(self._consistent(read))

    def delete_kept_for_user(
        self, app_id: str, ib_id: str, user_id: str, groups: list[str], now: float, ids: list[int] | None = None
    ) -> Deferred[int]:
        """
        Take back what this user would get (``ids`` only, or all): his own
        messages are deleted, those for a group or everyone are marked received
        by him (the others still get them).  The number of messages withdrawn.
        """
        d = self.dialect
        clause, args = self._for_user(user_id, groups)
        wanted = None if ids is None else set(ids)

        def delete(cursor: Cursor) -> int:
            self._get(cursor, app_id)
            if d.user_lock:  # serialized with a taker of this user's messages (take_kept)
                self._x(cursor, d.user_lock, (json.dumps(["pns4ones-kept", app_id, ib_id, user_id]),))
            rows = self._x(
                cursor,
                f"SELECT id, type FROM kept_messages AS k WHERE app_id = ? AND ib_id = ? AND expires_at > ? {clause}",
                (app_id, ib_id, now, *args),
            ).fetchall()
            rows = [r for r in rows if wanted is None or r[0] in wanted]
            self._many(cursor, "DELETE FROM kept_messages WHERE id = ?", [(r[0],) for r in rows if r[1] == "user"])
            self._many(
                cursor,
                "INSERT INTO kept_received (message_id, user_id) VALUES (?, ?) ON CONFLICT DO NOTHING",
                [(r[0], user_id) for r in rows if r[1] != "user"],
            )
            return len(rows)

        return self._write(delete, announce=False)

    def delete_kept_target(self, app_id: str, ib_id: str, type: str, target: str) -> Deferred[int]:
        """Delete every message kept for one recipient (a user, a group, or everyone of the information base)."""

        def delete(cursor: Cursor) -> int:
            self._get(cursor, app_id)
            return self._x(
                cursor,
                "DELETE FROM kept_messages WHERE app_id = ? AND ib_id = ? AND type = ? AND target = ?",
                (app_id, ib_id, type, target),
            ).rowcount

        return self._write(delete, announce=False)

    def add_audit(self, entry: AuditEntry, max_rows: int) -> Deferred[int]:
        """Record an administrator action (its id); the oldest records beyond ``max_rows`` go."""
        e = entry

        def add(cursor: Cursor) -> int:
            (entry_id,) = self._one(
                cursor,
                "INSERT INTO audit_log (at, actor, source, address, action, app_id, detail) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (e.at, e.actor, e.source, e.address, e.action, e.app_id, e.detail),
            )
            self._x(cursor, "DELETE FROM audit_log WHERE id <= ?", (entry_id - max_rows,))
            return int(entry_id)

        return self._write(add, announce=False)

    def list_audit(self, limit: int, offset: int = 0) -> Deferred[tuple[int, list[AuditEntry]]]:
        """The audit log, newest first: one page and the total."""

        def read(cursor: Cursor) -> tuple[int, list[AuditEntry]]:
            (total,) = self._one(cursor, "SELECT COUNT(*) FROM audit_log")
            rows = self._x(
                cursor,
                "SELECT id, at, actor, source, address, action, app_id, detail FROM audit_log ORDER BY id DESC LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
            return total, [AuditEntry(r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[0]) for r in rows]

        return self._read(self._consistent(read))

    # -- export and import (pns4ones-admin export/import) -----------------------------------

    def export_data(self) -> Deferred[JSONObject]:
        """Everything the store holds as a JSON-ready document, secrets sealed as in the store (importing needs the key file)."""

        def read(cursor: Cursor) -> JSONObject:
            x = self._x
            apps = [
                {"id": r[0], "title": r[1], "server_key": r[2], "client_key": r[3], "created_at": r[4], "updated_at": r[5]}
                for r in x(
                    cursor, "SELECT id, title, server_key, client_key, created_at, updated_at FROM applications ORDER BY created_at, id"
                ).fetchall()
            ]
            tokens = [
                {"digest": bytes(r[0]).hex(), "app_id": r[1], "token_id": bytes(r[2]).hex(), "issued_at": r[3], "expires_at": r[4]}
                for r in x(
                    cursor, "SELECT digest, app_id, token_id, issued_at, expires_at FROM tokens ORDER BY app_id, issued_at, digest"
                ).fetchall()
            ]
            groups: list[JSONObject] = []
            for r in x(
                cursor, "SELECT app_id, ib_id, group_name, user_id, added_at FROM group_members ORDER BY app_id, ib_id, group_name, user_id"
            ).fetchall():
                if not groups or (groups[-1]["app_id"], groups[-1]["ib_id"], groups[-1]["group"]) != (r[0], r[1], r[2]):
                    groups.append({"app_id": r[0], "ib_id": r[1], "group": r[2], "members": []})
                groups[-1]["members"].append({"user_id": r[3], "added_at": r[4]})
            received: dict[int, list[str]] = {}
            for r in x(cursor, "SELECT message_id, user_id FROM kept_received ORDER BY message_id, user_id").fetchall():
                received.setdefault(r[0], []).append(r[1])
            kept = [
                {
                    "app_id": r[1], "ib_id": r[2], "type": r[3], "target": r[4], "payload": base64.b64encode(bytes(r[5])).decode("ascii"),
                    "created_at": r[6], "expires_at": r[7], "received_by": received.get(r[0], []),
                }
                for r in x(cursor, "SELECT id, app_id, ib_id, type, target, payload, created_at, expires_at FROM kept_messages ORDER BY id").fetchall()
            ]  # fmt: skip
            stats = [
                {"app_id": r[0], "dropped": r[1], "expired": r[2]}
                for r in x(cursor, "SELECT app_id, dropped, expired FROM kept_stats ORDER BY app_id").fetchall()
            ]
            row = x(cursor, "SELECT login, password_hash, updated_at FROM admin_account WHERE id = 1").fetchone()
            admin = {"login": row[0], "password_hash": row[1], "updated_at": row[2]} if row else None
            (key_id,) = self._one(cursor, "SELECT key_id FROM sealing WHERE id = 1")
            return {
                "format": EXPORT_FORMAT, "version": SEALED_VERSION, "sealed_with": key_id,
                "applications": apps, "tokens": tokens, "groups": groups, "kept_messages": kept, "kept_stats": stats, "admin": admin,
            }  # fmt: skip

        return self._read(self._consistent(read))

    def import_data(self, doc: object, replace: bool = False) -> Deferred[int]:
        """
        Load an :meth:`export_data` document, in one transaction; the number of
        applications imported.  Refused (:class:`StoreError`) when the store
        has applications already, unless ``replace`` (which empties it first).
        """
        try:
            data = check_export(doc)
        except StoreError:
            return fail()

        def load(cursor: Cursor) -> int:
            x = self._x
            key = self._sealing_key(cursor)
            apps = [self._imported_keys(key, a, data["sealed"]) for a in data["applications"]]
            (count,) = self._one(cursor, "SELECT COUNT(*) FROM applications")
            if count and not replace:
                raise StoreError(
                    f"the target store has {count} application(s) already: import into an empty store, or pass --replace to overwrite everything"
                )
            if replace:
                for table in ("kept_received", "kept_messages", "kept_stats", "group_members", "tokens", "applications", "admin_account"):
                    x(cursor, f"DELETE FROM {table}")
            self._many(
                cursor,
                "INSERT INTO applications (id, title, server_key, client_key, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                [(a["id"], a["title"], a["server_key"], a["client_key"], a["created_at"], a["updated_at"]) for a in apps],
            )
            self._many(
                cursor,
                "INSERT INTO tokens (digest, app_id, token_id, issued_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                [(t["digest"], t["app_id"], t["token_id"], t["issued_at"], t["expires_at"]) for t in data["tokens"]],
            )
            self._many(
                cursor,
                "INSERT INTO group_members (app_id, ib_id, group_name, user_id, added_at) VALUES (?, ?, ?, ?, ?)",
                [(g["app_id"], g["ib_id"], g["group"], m["user_id"], m["added_at"]) for g in data["groups"] for m in g["members"]],
            )
            for k in data["kept_messages"]:
                (message_id,) = self._one(
                    cursor,
                    "INSERT INTO kept_messages (app_id, ib_id, type, target, payload, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                    (k["app_id"], k["ib_id"], k["type"], k["target"], k["payload"], k["created_at"], k["expires_at"]),
                )
                self._many(
                    cursor, "INSERT INTO kept_received (message_id, user_id) VALUES (?, ?)", [(message_id, u) for u in k["received_by"]]
                )
            self._many(
                cursor,
                "INSERT INTO kept_stats (app_id, dropped, expired) VALUES (?, ?, ?)",
                [(s["app_id"], s["dropped"], s["expired"]) for s in data["kept_stats"]],
            )
            admin = data["admin"]
            if admin is not None:
                x(
                    cursor,
                    "INSERT INTO admin_account (id, login, password_hash, updated_at) VALUES (1, ?, ?, ?)",
                    (admin["login"], admin["password_hash"], admin["updated_at"]),
                )
            return len(data["applications"])

        return self._write(load)

    def _imported_keys(self, key: SecretKey, app: JSONObject, sealed: bool) -> JSONObject:
        """An exported application with its keys sealed under ``key`` for this store (kept as they are when sealed so already)."""
        out = dict(app)
        for column in SEALED_COLUMNS:
            value = app[column]
            if sealed:
                try:
                    plain = self.keyring.open(value, "applications", column, app["id"])
                except SealingError as e:
                    raise StoreError(
                        f"cannot open the export's {column} of application {app['id']} ({e}); an export is sealed with the key file "
                        f"of the installation that made it: add its line(s) to {self.keyring.path} and import again"
                    ) from None
            else:
                plain = value
            if column == "client_key":
                try:
                    ClientKey.decode(plain)
                except WireError:
                    raise StoreError(f"not a pns4ones export: client_key of application {app['id']} is not a client key") from None
            out[column] = value if sealed and key_id_of(value) == key.id else self._seal_app(key, app["id"], column, plain)
        return out


def migrate_secrets(execute: Execute, keyring: KeyRing, now: float) -> int:
    """
    The start-up migration after the SQL ones, in their transaction (``execute(sql,
    args)`` runs SQL written with the dialect's placeholders): make sure the
    store has a sealing key that the key file holds (a new store, or one made
    before sealing, takes the key file's newest key, creating the file if there
    is none), then seal every secret still in plaintext.  The number of values sealed.
    """
    row = execute("SELECT key_id, probe FROM sealing WHERE id = 1").fetchone()
    if row is None:
        key = keyring.newest() or keyring.create()
        execute(
            "INSERT INTO sealing (id, key_id, probe, sealed_at) VALUES (1, ?, ?, ?)",
            (key.id, seal(key, PROBE, "sealing", "probe", "1"), now),
        )
    else:
        found = keyring.get(row[0])
        if found is None:
            where = "does not exist" if not keyring.exists() else "does not hold it"
            raise SealingError(
                f"the store's secrets are sealed with key {row[0]}, and the key file {keyring.path} {where}: "
                "copy the key file from a node that shares this store (or restore it from where you keep it)"
            )
        key = found
        if keyring.open(row[1], "sealing", "probe", "1") != PROBE:
            raise SealingError(f"the key file {keyring.path} does not open this store's secrets")
    count = 0
    for app_id, *values in execute("SELECT id, server_key, client_key FROM applications").fetchall():
        if all(key_id_of(v) is not None for v in values):
            continue
        sealed = [v if key_id_of(v) is not None else seal(key, v, "applications", c, app_id) for c, v in zip(SEALED_COLUMNS, values)]
        execute("UPDATE applications SET server_key = ?, client_key = ? WHERE id = ?", (*sealed, app_id))
        count += sum(key_id_of(v) is None for v in values)
    return count
