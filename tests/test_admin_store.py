"""
The store methods behind the admin panel's console (rename, kept messages per
recipient and per user, the audit log), run against the in-memory store, SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, TestCase

from pns4ones.store import AuditEntry, KeptMessage, UnknownApplication
from pns4ones.store.memory import MemoryStore
from pns4ones.store.sqlite import SQLiteStore

from .pg_support import SKIP_REASON, PgCluster, find_bindir


def kept(app_id: str, ib: str, kind: str, target: str, title: str, created: float, expires: float = 9e9) -> KeptMessage:
    payload = json.dumps({"notification": {"title": title, "important": False}}).encode()
    return KeptMessage(app_id, ib, kind, target, payload, created, expires)


class ConsoleStoreContract:
    """What the panel asks of every store; subclasses say how to open one."""

    def open_store(self) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        self.store = self.open_store()
        self.addCleanup(self.store.close)

    @inlineCallbacks
    def test_rename(self) -> None:
        """A rename changes the title only (keys and id stay); an unknown id is UnknownApplication."""
        app = yield self.store.create_application("Old", 1.0)
        renamed = yield self.store.rename_application(app.id, "New <name>", 2.0)
        self.assertEqual(
            (renamed.id, renamed.title, renamed.server_key, renamed.client_key), (app.id, "New <name>", app.server_key, app.client_key)
        )
        self.assertEqual((yield self.store.get_application(app.id)).title, "New <name>")
        yield self.assertFailure(self.store.rename_application("nope", "x", 3.0), UnknownApplication)

    @inlineCallbacks
    def test_kept_summary_paged(self) -> None:
        """Kept messages are summed per recipient (count, oldest, first and last expiry), expired ones left out, paged with a total."""
        app = yield self.store.create_application("Shop", 1.0)
        other = yield self.store.create_application("Other", 1.0)
        yield self.store.keep_message(kept(app.id, "ib1", "user", "u1", "a", 10.0, 500.0), [], 100, 1000)
        yield self.store.keep_message(kept(app.id, "ib1", "user", "u1", "b", 20.0, 900.0), [], 100, 1000)
        yield self.store.keep_message(kept(app.id, "ib1", "group", "Склад", "c", 30.0), ["u9"], 100, 1000)
        yield self.store.keep_message(kept(app.id, "ib2", "all", "", "d", 40.0), [], 100, 1000)
        yield self.store.keep_message(kept(app.id, "ib2", "user", "gone", "e", 5.0, 50.0), [], 100, 1000)  # expired at 100
        yield self.store.keep_message(kept(other.id, "ib1", "user", "u1", "f", 5.0), [], 100, 1000)
        total, rows = yield self.store.kept_summary(app.id, 100.0, 10)
        self.assertEqual(total, 3)
        self.assertEqual(
            [(r.ib_id, r.type, r.target, r.count, r.oldest, r.next_expiry, r.last_expiry) for r in rows],
            [
                ("ib1", "group", "Склад", 1, 30.0, 9e9, 9e9),
                ("ib1", "user", "u1", 2, 10.0, 500.0, 900.0),
                ("ib2", "all", "", 1, 40.0, 9e9, 9e9),
            ],
        )
        total, page = yield self.store.kept_summary(app.id, 100.0, 2, 2)
        self.assertEqual((total, [r.ib_id for r in page]), (3, ["ib2"]))
        yield self.assertFailure(self.store.kept_summary("nope", 1.0, 10), UnknownApplication)

    @inlineCallbacks
    def test_kept_for_user_and_delete(self) -> None:
        """A user's view holds his own, his groups' and everyone's unreceived messages; deleting withdraws them for him only."""
        app = yield self.store.create_application("Shop", 1.0)
        own1 = yield self.store.keep_message(kept(app.id, "ib1", "user", "u1", "own 1", 10.0), [], 100, 1000)
        yield self.store.keep_message(kept(app.id, "ib1", "user", "u2", "not his", 11.0), [], 100, 1000)
        group = yield self.store.keep_message(kept(app.id, "ib1", "group", "sales", "group", 12.0), [], 100, 1000)
        yield self.store.keep_message(kept(app.id, "ib1", "group", "other", "other group", 13.0), [], 100, 1000)
        yield self.store.keep_message(kept(app.id, "ib1", "all", "", "seen", 14.0), ["u1"], 100, 1000)
        everyone = yield self.store.keep_message(kept(app.id, "ib1", "all", "", "everyone", 15.0), [], 100, 1000)
        own2 = yield self.store.keep_message(kept(app.id, "ib1", "user", "u1", "own 2", 16.0), [], 100, 1000)
        yield self.store.keep_message(kept(app.id, "ib1", "user", "u1", "expired", 17.0, 50.0), [], 100, 1000)

        total, items = yield self.store.kept_for_user(app.id, "ib1", "u1", ["sales"], 100.0, 10)
        self.assertEqual(total, 4)
        self.assertEqual([i.id for i in items], [own1.id, group.id, everyone.id, own2.id])
        self.assertEqual([(i.type, i.target) for i in items], [("user", "u1"), ("group", "sales"), ("all", ""), ("user", "u1")])
        self.assertEqual(json.loads(items[1].payload)["notification"]["title"], "group")
        total, page = yield self.store.kept_for_user(app.id, "ib1", "u1", ["sales"], 100.0, 2, 2)
        self.assertEqual((total, [i.id for i in page]), (4, [everyone.id, own2.id]))

        self.assertEqual((yield self.store.delete_kept_for_user(app.id, "ib1", "u1", ["sales"], 100.0, [own1.id, everyone.id, 999999])), 2)
        total, items = yield self.store.kept_for_user(app.id, "ib1", "u1", ["sales"], 100.0, 10)
        self.assertEqual([i.id for i in items], [group.id, own2.id])
        # the messages for everyone are still there for the others
        self.assertEqual([i.id for i in (yield self.store.kept_for_user(app.id, "ib1", "u3", [], 100.0, 10))[1]][-1], everyone.id)
        self.assertEqual((yield self.store.delete_kept_for_user(app.id, "ib1", "u1", ["sales"], 100.0)), 2)
        self.assertEqual((yield self.store.kept_for_user(app.id, "ib1", "u1", ["sales"], 100.0, 10)), (0, []))
        self.assertEqual(
            (yield self.store.take_kept(app.id, "ib1", "u2", ["sales"], 100.0)),
            [kept(app.id, "", "", "", t, 0).payload for t in ("not his", "group", "seen", "everyone")],
        )

    @inlineCallbacks
    def test_delete_kept_target(self) -> None:
        """Deleting a recipient's kept messages removes them for everybody, in that information base only."""
        app = yield self.store.create_application("Shop", 1.0)
        for ib in ("ib1", "ib2"):
            yield self.store.keep_message(kept(app.id, ib, "group", "sales", "g", 10.0), [], 100, 1000)
            yield self.store.keep_message(kept(app.id, ib, "group", "sales", "g2", 11.0), [], 100, 1000)
        self.assertEqual((yield self.store.delete_kept_target(app.id, "ib1", "group", "sales")), 2)
        _total, rows = yield self.store.kept_summary(app.id, 100.0, 10)
        self.assertEqual([(r.ib_id, r.count) for r in rows], [("ib2", 2)])
        self.assertEqual((yield self.store.delete_kept_target(app.id, "ib1", "group", "sales")), 0)

    @inlineCallbacks
    def test_audit_log_bounded_and_paged(self) -> None:
        """Audit records come back newest first with every field, paged with a total; beyond the cap the oldest go."""
        for n in range(7):
            yield self.store.add_audit(AuditEntry(100.0 + n, "admin", "panel", "127.0.0.1", f"act{n}", f"app{n}", f"detail «{n}»"), 5)
        total, page = yield self.store.list_audit(3)
        self.assertEqual(total, 5)
        self.assertEqual([e.action for e in page], ["act6", "act5", "act4"])
        first = page[0]
        self.assertEqual(
            (first.at, first.actor, first.source, first.address, first.app_id, first.detail),
            (106.0, "admin", "panel", "127.0.0.1", "app6", "detail «6»"),
        )
        self.assertGreater(first.id, page[1].id)
        total, page = yield self.store.list_audit(3, 3)
        self.assertEqual((total, [e.action for e in page]), (5, ["act3", "act2"]))


class MemoryConsoleStore(ConsoleStoreContract, TestCase):
    def open_store(self) -> Any:
        return MemoryStore()


class SQLiteConsoleStore(ConsoleStoreContract, TestCase):
    def open_store(self) -> Any:
        directory = tempfile.mkdtemp(prefix="pns4ones-store-")
        self.addCleanup(shutil.rmtree, directory, True)
        return SQLiteStore(directory)


class PostgresConsoleStore(ConsoleStoreContract, TestCase):
    cluster: PgCluster | None = None

    @classmethod
    def setUpClass(cls) -> None:
        if find_bindir() is None:
            raise SkipTest(SKIP_REASON)
        cls.cluster = PgCluster()

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.cluster is not None:
            cls.cluster.cleanup()
            cls.cluster = None

    def open_store(self) -> Any:
        from pns4ones.store.postgres import PostgresStore

        assert self.cluster is not None
        keys = tempfile.mkdtemp(prefix="pns4ones-keys-")  # the store's sealing key file
        self.addCleanup(shutil.rmtree, keys, True)
        return PostgresStore(self.cluster.url(self.cluster.new_database()), reactor=reactor, key_file=Path(keys) / "secrets.key")
