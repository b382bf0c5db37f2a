"""
The store in memory: every role of :class:`pns4ones.store.Store` over plain
dictionaries, for fast tests of what sits above the store (``Core``, the API)
and as the reference of what the SQL stores do.  ``tests/test_postgres.py``
runs one contract on it, on SQLite and on PostgreSQL.

Invariants (the SQL schema's, kept by hand):

* Every change is one transaction: it checks everything first, or works on a
  copy that replaces the tables only when it succeeded, so a failed change
  leaves nothing half-done.
* Rows that name an application (tokens, group members, kept messages and
  their counts) go with it; a change naming an unknown application fails with
  :class:`~pns4ones.store.UnknownApplication` as in SQL.
* Kept message ids only grow (SQLite's ``AUTOINCREMENT``), also across an
  ``import --replace``.
* Several :class:`MemoryStore` handles may share one :class:`MemoryDatabase`,
  as connections share one database: a handle that watches is told (on the
  next reactor turn) about the changes others make to what nodes keep in
  memory, the same writes the SQL stores announce (see ``_sql.py``); never
  about its own.

Answers are ``Deferred``\\s that have already fired: there is no I/O to wait for.
"""

from __future__ import annotations

import base64
import copy
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import crypto
from ..jsondoc import JSONObject
from ..wire import ClientKey
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
from .export import EXPORT_FORMAT, EXPORT_VERSION, check_export

T = TypeVar("T")

#: ``location`` of every in-memory store.
LOCATION = "memory"


class Call(Protocol):
    def active(self) -> bool: ...
    def cancel(self) -> None: ...


class Clock(Protocol):
    """The part of a reactor (or ``task.Clock``) the store uses."""

    def callLater(self, delay: float, f: Callable[[], object], /) -> Call: ...


@dataclass
class _Kept:
    message: KeptMessage
    received: set[str] = field(default_factory=set)


@dataclass
class _Stats:
    dropped: int = 0
    expired: int = 0


@dataclass
class _Tables:
    """The rows, as the SQL schema has them."""

    #: id -> (application, updated_at)
    applications: dict[str, tuple[Application, float]] = field(default_factory=dict)
    tokens: dict[bytes, TokenRecord] = field(default_factory=dict)
    #: (app_id, ib_id, group) -> user_id -> added_at
    members: dict[tuple[str, str, str], dict[str, float]] = field(default_factory=dict)
    #: id -> kept message, in increasing id order
    kept: dict[int, _Kept] = field(default_factory=dict)
    stats: dict[str, _Stats] = field(default_factory=dict)
    #: (account, updated_at)
    admin: tuple[AdminAccount, float] | None = None
    #: The audit log, oldest first (ids only grow).
    audit: list[AuditEntry] = field(default_factory=list)


class MemoryDatabase:
    """The data several :class:`MemoryStore` handles share (one database, several connections)."""

    def __init__(self) -> None:
        self.tables = _Tables()
        self.last_kept_id = 0
        self.last_audit_id = 0
        self.handles: list[MemoryStore] = []

    def announce(self, source: MemoryStore) -> None:
        for handle in self.handles:
            if handle is not source:
                handle._changed_elsewhere()


class MemoryStore:
    """:class:`pns4ones.store.Store` in memory (see the module's invariants)."""

    log = Logger()
    location = LOCATION
    available = True
    unavailable_reason = ""
    #: No schema to migrate.
    migrated_from = 0
    schema_version = 0

    def __init__(self, database: MemoryDatabase | None = None, clock: Clock | None = None) -> None:
        self.database = database if database is not None else MemoryDatabase()
        self._clock = clock
        self._on_change: Callable[[], object] | None = None
        self._pending: Call | None = None
        self.database.handles.append(self)

    @property
    def _t(self) -> _Tables:
        return self.database.tables

    def _answer(self, fn: Callable[..., T], *args: object) -> Deferred[T]:
        try:
            return succeed(fn(*args))
        except Exception:
            return fail(Failure())

    def _app(self, app_id: str) -> Application:
        row = self._t.applications.get(app_id)
        if row is None:
            raise UnknownApplication(app_id)
        return row[0]

    def _announce(self) -> None:
        self.database.announce(self)

    # -- Registry ------------------------------------------------------------------------

    def snapshot(self) -> Deferred[Snapshot]:
        def read() -> Snapshot:
            t = self._t
            memberships = tuple((a, i, g, u) for (a, i, g), users in t.members.items() for u in users)
            return Snapshot(tuple(self._ordered_apps()), tuple(t.tokens.values()), memberships, self._kept_ibs())

        return self._answer(read)

    def add_token(self, token: TokenRecord) -> Deferred[None]:
        def add() -> None:
            self._app(token.app_id)
            if token.digest in self._t.tokens:
                raise StoreError("a token with this digest exists already")
            self._t.tokens[token.digest] = token
            self._announce()

        return self._answer(add)

    def get_token(self, digest: bytes) -> Deferred[TokenRecord | None]:
        return succeed(self._t.tokens.get(digest))

    def purge_tokens(self, expired_before: float) -> Deferred[int]:
        return succeed(self._drop_tokens(lambda t: t.expires_at < expired_before))

    def _drop_tokens(self, which: Callable[[TokenRecord], bool]) -> int:
        tokens = self._t.tokens
        gone = [d for d, t in tokens.items() if which(t)]
        for digest in gone:
            del tokens[digest]
        return len(gone)

    # -- Admin -----------------------------------------------------------------------------

    def _ordered_apps(self) -> list[Application]:
        return sorted((a for a, _ in self._t.applications.values()), key=lambda a: (a.created_at, a.id))

    def list_applications(self) -> Deferred[list[Application]]:
        return succeed(self._ordered_apps())

    def get_application(self, app_id: str) -> Deferred[Application]:
        return self._answer(self._app, app_id)

    def create_application(self, title: str, now: float) -> Deferred[Application]:
        def create() -> Application:
            app = Application(str(uuid.uuid4()), title, crypto.random_key(), ClientKey.generate(), now)
            if any(a.server_key == app.server_key for a, _ in self._t.applications.values()):
                raise StoreError("server key collision")  # 256 random bits: never, but the schema says UNIQUE
            self._t.applications[app.id] = (app, now)
            self._announce()
            return app

        return self._answer(create)

    def _replace_app(self, app: Application, now: float) -> Application:
        self._t.applications[app.id] = (app, now)
        self._announce()
        return app

    def rotate_server_key(self, app_id: str, now: float) -> Deferred[Application]:
        def rotate() -> Application:
            app = self._app(app_id)
            self._drop_tokens(lambda t: t.app_id == app_id)
            return self._replace_app(Application(app.id, app.title, crypto.random_key(), app.client_key, app.created_at), now)

        return self._answer(rotate)

    def rotate_client_key(self, app_id: str, now: float) -> Deferred[Application]:
        def rotate() -> Application:
            app = self._app(app_id)
            return self._replace_app(Application(app.id, app.title, app.server_key, ClientKey.generate(), app.created_at), now)

        return self._answer(rotate)

    def remove_application(self, app_id: str) -> Deferred[Application]:
        def remove() -> Application:
            app = self._app(app_id)
            t = self._t
            del t.applications[app_id]
            self._drop_tokens(lambda r: r.app_id == app_id)
            for key in [k for k in t.members if k[0] == app_id]:
                del t.members[key]
            for message_id in [i for i, k in t.kept.items() if k.message.app_id == app_id]:
                del t.kept[message_id]
            t.stats.pop(app_id, None)
            self._announce()
            return app

        return self._answer(remove)

    def rename_application(self, app_id: str, title: str, now: float) -> Deferred[Application]:
        def rename() -> Application:
            app = self._app(app_id)
            return self._replace_app(Application(app.id, title, app.server_key, app.client_key, app.created_at), now)

        return self._answer(rename)

    def reset_tokens(self, app_id: str) -> Deferred[int]:
        def reset() -> int:
            self._app(app_id)
            count = self._drop_tokens(lambda t: t.app_id == app_id)
            self._announce()
            return count

        return self._answer(reset)

    def get_admin(self) -> Deferred[AdminAccount | None]:
        admin = self._t.admin
        return succeed(admin[0] if admin is not None else None)

    def set_admin(self, account: AdminAccount, now: float) -> Deferred[None]:
        self._t.admin = (account, now)
        self._announce()
        return succeed(None)

    # -- Groups ----------------------------------------------------------------------------

    def set_group(self, app_id: str, ib_id: str, group: str, user_ids: list[str], now: float) -> Deferred[None]:
        def put() -> None:
            self._app(app_id)
            if len(set(user_ids)) != len(user_ids):
                raise StoreError("the same user id twice in one group")
            key = (app_id, ib_id, group)
            if user_ids:
                self._t.members[key] = dict.fromkeys(user_ids, now)
            else:
                self._t.members.pop(key, None)
            self._announce()

        return self._answer(put)

    def add_group_members(self, app_id: str, ib_id: str, group: str, user_ids: list[str], now: float) -> Deferred[int]:
        def add() -> int:
            self._app(app_id)
            if not user_ids:
                return 0
            members = self._t.members.setdefault((app_id, ib_id, group), {})
            added = 0
            for user_id in user_ids:
                if user_id not in members:
                    members[user_id] = now
                    added += 1
            self._announce()
            return added

        return self._answer(add)

    def remove_group_member(self, app_id: str, ib_id: str, group: str, user_id: str) -> Deferred[int]:
        key = (app_id, ib_id, group)
        members = self._t.members.get(key, {})
        removed = 1 if members.pop(user_id, None) is not None else 0
        if not members:
            self._t.members.pop(key, None)
        self._announce()
        return succeed(removed)

    def remove_group(self, app_id: str, ib_id: str, group: str) -> Deferred[int]:
        removed = len(self._t.members.pop((app_id, ib_id, group), {}))
        self._announce()
        return succeed(removed)

    def list_groups(self, app_id: str, ib_id: str | None = None) -> Deferred[list[tuple[str, str, int]]]:
        def read() -> list[tuple[str, str, int]]:
            self._app(app_id)
            return sorted((i, g, len(users)) for (a, i, g), users in self._t.members.items() if a == app_id and ib_id in (None, i))

        return self._answer(read)

    def group_members(self, app_id: str, ib_id: str, group: str) -> Deferred[list[str]]:
        def read() -> list[str]:
            self._app(app_id)
            return sorted(self._t.members.get((app_id, ib_id, group), {}))

        return self._answer(read)

    # -- KeptMessages ----------------------------------------------------------------------

    def _kept_ibs(self) -> frozenset[tuple[str, str]]:
        return frozenset((k.message.app_id, k.message.ib_id) for k in self._t.kept.values())

    def _drop_oldest(self, which: Callable[[KeptMessage], bool], limit: int) -> int:
        kept = self._t.kept
        ids = [i for i, k in kept.items() if which(k.message)]
        excess = len(ids) - limit
        for message_id in ids[: max(excess, 0)]:
            del kept[message_id]
        return max(excess, 0)

    def keep_message(self, message: KeptMessage, received_by: list[str], max_per_user: int, max_per_app: int) -> Deferred[KeptOutcome]:
        m = message

        def keep() -> KeptOutcome:
            self._app(m.app_id)
            t = self._t
            waiting = any(k.message.app_id == m.app_id and k.message.ib_id == m.ib_id for k in t.kept.values())
            self.database.last_kept_id += 1
            message_id = self.database.last_kept_id
            t.kept[message_id] = _Kept(m, set(received_by))
            dropped_user = 0
            if m.type == "user":
                dropped_user = self._drop_oldest(
                    lambda k: k.app_id == m.app_id and k.ib_id == m.ib_id and k.type == "user" and k.target == m.target, max_per_user
                )
            dropped_app = self._drop_oldest(lambda k: k.app_id == m.app_id, max_per_app)
            if dropped_user or dropped_app:
                t.stats.setdefault(m.app_id, _Stats()).dropped += dropped_user + dropped_app
            if not waiting:  # registrations in this information base now look for kept messages
                self._announce()
            return KeptOutcome(message_id, dropped_user, dropped_app)

        return self._answer(keep)

    def take_kept(self, app_id: str, ib_id: str, user_id: str, groups: list[str], now: float) -> Deferred[list[bytes]]:
        kept = self._t.kept
        wanted = set(groups)
        out: list[bytes] = []
        for message_id, k in list(kept.items()):
            m = k.message
            if m.app_id != app_id or m.ib_id != ib_id or m.expires_at <= now or user_id in k.received:
                continue
            if m.type == "user" and m.target == user_id:
                del kept[message_id]
            elif m.type == "all" or (m.type == "group" and m.target in wanted):
                k.received.add(user_id)
            else:
                continue
            out.append(m.payload)
        return succeed(out)

    def purge_kept(self, now: float) -> Deferred[int]:
        t = self._t
        expired = [(i, k.message.app_id) for i, k in t.kept.items() if k.message.expires_at <= now]
        for message_id, app_id in expired:
            del t.kept[message_id]
            t.stats.setdefault(app_id, _Stats()).expired += 1
        return succeed(len(expired))

    def kept_ibs(self) -> Deferred[frozenset[tuple[str, str]]]:
        return succeed(self._kept_ibs())

    def kept_counts(self) -> Deferred[list[KeptCount]]:
        t = self._t
        out = []
        for app in self._ordered_apps():
            stats = t.stats.get(app.id, _Stats())
            count = sum(1 for k in t.kept.values() if k.message.app_id == app.id)
            out.append(KeptCount(app.id, count, stats.dropped, stats.expired))
        return succeed(out)

    def kept_summary(self, app_id: str, now: float, limit: int, offset: int = 0) -> Deferred[tuple[int, list[KeptTarget]]]:
        def read() -> tuple[int, list[KeptTarget]]:
            self._app(app_id)
            groups: dict[tuple[str, str, str], list[KeptMessage]] = {}
            for k in self._t.kept.values():
                m = k.message
                if m.app_id == app_id and m.expires_at > now:
                    groups.setdefault((m.ib_id, m.type, m.target), []).append(m)
            rows = [
                KeptTarget(
                    ib, kind, target, len(ms), min(m.created_at for m in ms), min(m.expires_at for m in ms), max(m.expires_at for m in ms)
                )
                for (ib, kind, target), ms in sorted(groups.items())
            ]
            return len(rows), rows[offset : offset + limit]

        return self._answer(read)

    def _waiting_for(self, app_id: str, ib_id: str, user_id: str, groups: list[str], now: float) -> list[tuple[int, _Kept]]:
        """What :meth:`take_kept` would hand this user, in id order."""
        wanted = set(groups)
        out = []
        for message_id, k in self._t.kept.items():
            m = k.message
            if m.app_id != app_id or m.ib_id != ib_id or m.expires_at <= now or user_id in k.received:
                continue
            if (m.type == "user" and m.target == user_id) or m.type == "all" or (m.type == "group" and m.target in wanted):
                out.append((message_id, k))
        return out

    def kept_for_user(
        self, app_id: str, ib_id: str, user_id: str, groups: list[str], now: float, limit: int, offset: int = 0
    ) -> Deferred[tuple[int, list[KeptInfo]]]:
        def read() -> tuple[int, list[KeptInfo]]:
            self._app(app_id)
            rows = self._waiting_for(app_id, ib_id, user_id, groups, now)
            page = [
                KeptInfo(i, k.message.type, k.message.target, k.message.created_at, k.message.expires_at, k.message.payload)
                for i, k in rows[offset : offset + limit]
            ]
            return len(rows), page

        return self._answer(read)

    def delete_kept_for_user(
        self, app_id: str, ib_id: str, user_id: str, groups: list[str], now: float, ids: list[int] | None = None
    ) -> Deferred[int]:
        def delete() -> int:
            self._app(app_id)
            rows = [(i, k) for i, k in self._waiting_for(app_id, ib_id, user_id, groups, now) if ids is None or i in ids]
            for message_id, k in rows:
                if k.message.type == "user":
                    del self._t.kept[message_id]
                else:
                    k.received.add(user_id)
            return len(rows)

        return self._answer(delete)

    def delete_kept_target(self, app_id: str, ib_id: str, type: str, target: str) -> Deferred[int]:
        def delete() -> int:
            self._app(app_id)
            kept = self._t.kept
            gone = [
                i
                for i, k in kept.items()
                if (k.message.app_id, k.message.ib_id, k.message.type, k.message.target) == (app_id, ib_id, type, target)
            ]
            for message_id in gone:
                del kept[message_id]
            return len(gone)

        return self._answer(delete)

    # -- Audit -----------------------------------------------------------------------------

    def add_audit(self, entry: AuditEntry, max_rows: int) -> Deferred[int]:
        db = self.database
        db.last_audit_id += 1
        log = self._t.audit
        log.append(
            AuditEntry(entry.at, entry.actor, entry.source, entry.address, entry.action, entry.app_id, entry.detail, db.last_audit_id)
        )
        del log[: max(len(log) - max_rows, 0)]
        return succeed(db.last_audit_id)

    def list_audit(self, limit: int, offset: int = 0) -> Deferred[tuple[int, list[AuditEntry]]]:
        newest_first = self._t.audit[::-1]
        return succeed((len(newest_first), newest_first[offset : offset + limit]))

    # -- Transfer --------------------------------------------------------------------------

    def export_data(self) -> Deferred[JSONObject]:
        t = self._t
        apps = [
            {"id": a.id, "title": a.title, "server_key": a.server_key, "client_key": a.client_key.encode(), "created_at": a.created_at, "updated_at": updated}
            for a, updated in sorted(t.applications.values(), key=lambda r: (r[0].created_at, r[0].id))
        ]  # fmt: skip
        tokens = [
            {
                "digest": r.digest.hex(),
                "app_id": r.app_id,
                "token_id": r.token_id.hex(),
                "issued_at": r.issued_at,
                "expires_at": r.expires_at,
            }
            for r in sorted(t.tokens.values(), key=lambda r: (r.app_id, r.issued_at, r.digest))
        ]
        groups = [
            {"app_id": a, "ib_id": i, "group": g, "members": [{"user_id": u, "added_at": users[u]} for u in sorted(users)]}
            for (a, i, g), users in sorted(t.members.items())
        ]
        kept = [
            {
                "app_id": k.message.app_id, "ib_id": k.message.ib_id, "type": k.message.type, "target": k.message.target,
                "payload": base64.b64encode(k.message.payload).decode("ascii"),
                "created_at": k.message.created_at, "expires_at": k.message.expires_at, "received_by": sorted(k.received),
            }
            for k in t.kept.values()
        ]  # fmt: skip
        stats = [{"app_id": a, "dropped": s.dropped, "expired": s.expired} for a, s in sorted(t.stats.items())]
        admin = {"login": t.admin[0].login, "password_hash": t.admin[0].password_hash, "updated_at": t.admin[1]} if t.admin else None
        doc = {
            "format": EXPORT_FORMAT, "version": EXPORT_VERSION,
            "applications": apps, "tokens": tokens, "groups": groups, "kept_messages": kept, "kept_stats": stats, "admin": admin,
        }  # fmt: skip
        return succeed(doc)

    def import_data(self, doc: object, replace: bool = False) -> Deferred[int]:
        def load() -> int:
            data = check_export(doc)
            if data["sealed"]:  # it keeps nothing at rest, so holds no key to open one
                raise StoreError("a sealed export (version 2) imports into a SQLite or PostgreSQL store that has its key file")
            old = self._t
            if old.applications and not replace:
                raise StoreError(
                    f"the target store has {len(old.applications)} application(s) already: import into an empty store, or pass --replace to overwrite everything"
                )
            new = _Tables() if replace else copy.deepcopy(old)
            for a in data["applications"]:
                app = Application(a["id"], a["title"], a["server_key"], ClientKey.decode(a["client_key"]), a["created_at"])
                new.applications[app.id] = (app, a["updated_at"])
            for r in data["tokens"]:
                _unique(new.tokens, r["digest"], "tokens")
                new.tokens[r["digest"]] = TokenRecord(r["digest"], r["app_id"], r["token_id"], r["issued_at"], r["expires_at"])
            for g in data["groups"]:
                members = new.members.setdefault((g["app_id"], g["ib_id"], g["group"]), {})
                for m in g["members"]:
                    _unique(members, m["user_id"], "groups")
                    members[m["user_id"]] = m["added_at"]
            last = self.database.last_kept_id
            for k in data["kept_messages"]:
                last += 1
                message = KeptMessage(k["app_id"], k["ib_id"], k["type"], k["target"], k["payload"], k["created_at"], k["expires_at"])
                new.kept[last] = _Kept(message, set(_distinct(k["received_by"], "kept_messages.received_by")))
            for s in data["kept_stats"]:
                _unique(new.stats, s["app_id"], "kept_stats")
                new.stats[s["app_id"]] = _Stats(s["dropped"], s["expired"])
            admin = data["admin"]
            if admin is not None:
                if new.admin is not None:
                    raise StoreError("the target store has an admin account already: pass --replace to overwrite everything")
                new.admin = (AdminAccount(admin["login"], admin["password_hash"]), admin["updated_at"])
            self.database.tables, self.database.last_kept_id = new, last
            self._announce()
            return len(data["applications"])

        return self._answer(load)

    # -- Lifecycle -------------------------------------------------------------------------

    def start_watching(self, on_change: Callable[[], object], interval: float) -> None:
        self._on_change = on_change

    def stop_watching(self) -> None:
        self._on_change = None
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None

    def _changed_elsewhere(self) -> None:
        """Another handle changed what nodes keep in memory: call on_change on the next turn (once for a burst)."""
        if self._on_change is None or (self._pending is not None and self._pending.active()):
            return
        if self._clock is None:
            from twisted.internet import reactor

            self._clock = reactor
        self._pending = self._clock.callLater(0, self._notify)

    def _notify(self) -> None:
        self._pending = None
        on_change = self._on_change
        if on_change is None:
            return
        try:
            result = on_change()
        except Exception:
            self.log.failure("reloading after a change in the store failed")
            return
        if isinstance(result, Deferred):
            result.addErrback(lambda f: self.log.failure("reloading after a change in the store failed", f))

    def close(self) -> Deferred[None]:
        self.stop_watching()
        if self in self.database.handles:
            self.database.handles.remove(self)
        return succeed(None)


def _unique(existing: Iterable[object], key: object, where: str) -> None:
    if key in existing:
        raise StoreError(f"not a pns4ones export: {where} has {key!r} twice")


def _distinct(values: list[str], where: str) -> list[str]:
    if len(set(values)) != len(values):
        raise StoreError(f"not a pns4ones export: {where} has a user twice")
    return values
