"""
The PostgreSQL store and several nodes on one store: the Store contract run
against the in-memory store, SQLite and PostgreSQL alike, migrations, real ``twistd`` nodes on a
throwaway PostgreSQL (tokens across nodes, key rotation everywhere, groups,
PostgreSQL restarted under a running node), export/import through the CLI.
"""

from __future__ import annotations

import atexit
import base64
import http.client
import json
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial.unittest import SkipTest, TestCase

from pns4ones.store import AdminAccount, KeptMessage, StoreError, TokenRecord, UnknownApplication
from pns4ones.store.memory import MemoryDatabase, MemoryStore
from pns4ones.store.sqlite import SQLiteStore

from .pg_support import PASSWORD, SKIP_REASON, PgCluster, find_bindir
from .support import ADMIN, ServerProcess, http_client, wait_for

HAVE_PG = find_bindir() is not None
#: The secrets key file of every store these tests open (nodes and commands sharing a store share it).
KEYS = tempfile.mkdtemp(prefix="pns4ones-keys-")
KEY_FILE = os.path.join(KEYS, "secrets.key")
atexit.register(shutil.rmtree, KEYS, True)


def sleep(seconds: float) -> Deferred[None]:
    return deferLater(reactor, seconds, lambda: None)


def admin(
    store: str, *args: str, check: bool = True, env: dict[str, str] | None = None, data_dir: str = ""
) -> subprocess.CompletedProcess[str]:
    """``pns4ones-admin ... --store STORE``."""
    data_dir = data_dir or KEYS
    result = subprocess.run(
        [ADMIN, "--data-dir", data_dir, *args, "--store", store],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"pns4ones-admin {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


class _WithCluster:
    """One throwaway PostgreSQL per test class."""

    cluster: PgCluster | None = None

    @classmethod
    def setUpClass(cls) -> None:
        if not HAVE_PG:
            raise SkipTest(SKIP_REASON)
        cls.cluster = PgCluster()

    @classmethod
    def tearDownClass(cls) -> None:
        if cls.cluster is not None:
            cls.cluster.cleanup()
            cls.cluster = None


# -- the Store contract, once for both stores ---------------------------------------------------


class StoreContract:
    """Behaviour every store has; subclasses say how to open one (and a second connection to it)."""

    def open_store(self) -> Any:
        raise NotImplementedError

    def open_again(self) -> Any:
        raise NotImplementedError

    def setUp(self) -> None:
        self.store = self.open_store()
        self.addCleanup(self.store.close)

    @inlineCallbacks
    def test_applications_and_keys(self) -> None:
        """Created applications are listed and read back; rotations change the keys; removal forgets them."""
        a = yield self.store.create_application("Shop", 10.0)
        b = yield self.store.create_application("Other", 11.0)
        self.assertEqual([x.id for x in (yield self.store.list_applications())], [a.id, b.id])
        self.assertEqual((yield self.store.get_application(a.id)), a)
        yield self.store.add_token(TokenRecord(b"d" * 32, a.id, b"i" * 16, 10.0, 20.0))
        rotated = yield self.store.rotate_server_key(a.id, 12.0)
        self.assertNotEqual(rotated.server_key, a.server_key)
        self.assertIsNone((yield self.store.get_token(b"d" * 32)), "a server-key rotation revokes the tokens")
        rotated = yield self.store.rotate_client_key(a.id, 13.0)
        self.assertNotEqual(rotated.client_key, a.client_key)
        yield self.store.remove_application(a.id)
        yield self.assertFailure(self.store.get_application(a.id), UnknownApplication)
        yield self.assertFailure(self.store.rotate_client_key(a.id, 14.0), UnknownApplication)

    @inlineCallbacks
    def test_tokens(self) -> None:
        """Tokens are read back by digest, reset per application, purged by expiry, and need a known application."""
        a = yield self.store.create_application("Shop", 10.0)
        first = TokenRecord(b"\x00\xff" * 16, a.id, b"\x01" * 16, 10.0, 100.0)
        second = TokenRecord(b"\x02" * 32, a.id, b"\x03" * 16, 10.0, 5000.0)
        yield self.store.add_token(first)
        yield self.store.add_token(second)
        self.assertEqual((yield self.store.get_token(first.digest)), first)
        self.assertIsNone((yield self.store.get_token(b"\x09" * 32)))
        self.assertEqual((yield self.store.purge_tokens(200.0)), 1)
        self.assertEqual((yield self.store.snapshot()).tokens, (second,))
        self.assertEqual((yield self.store.reset_tokens(a.id)), 1)
        yield self.assertFailure(self.store.add_token(TokenRecord(b"\x04" * 32, "nope", b"\x05" * 16, 1.0, 2.0)), UnknownApplication)

    @inlineCallbacks
    def test_admin_account(self) -> None:
        """No admin account at first; set replaces it."""
        self.assertIsNone((yield self.store.get_admin()))
        yield self.store.set_admin(AdminAccount("root", "h1"), 1.0)
        yield self.store.set_admin(AdminAccount("admin", "h2"), 2.0)
        self.assertEqual((yield self.store.get_admin()), AdminAccount("admin", "h2"))

    @inlineCallbacks
    def test_groups(self) -> None:
        """Group membership: set, add (duplicates ignored and not counted), list, remove a member and a group."""
        a = yield self.store.create_application("Shop", 10.0)
        yield self.store.set_group(a.id, "ib1", "Менеджеры", ["u1", "u2"], 1.0)
        self.assertEqual((yield self.store.add_group_members(a.id, "ib1", "Менеджеры", ["u2", "u3", "u3"], 2.0)), 1)
        yield self.store.set_group(a.id, "ib2", "g", ["x"], 1.0)
        self.assertEqual((yield self.store.list_groups(a.id)), [("ib1", "Менеджеры", 3), ("ib2", "g", 1)])
        self.assertEqual((yield self.store.list_groups(a.id, "ib2")), [("ib2", "g", 1)])
        self.assertEqual((yield self.store.group_members(a.id, "ib1", "Менеджеры")), ["u1", "u2", "u3"])
        self.assertEqual((yield self.store.remove_group_member(a.id, "ib1", "Менеджеры", "u1")), 1)
        self.assertEqual((yield self.store.remove_group(a.id, "ib2", "g")), 1)
        snap = yield self.store.snapshot()
        self.assertEqual(sorted(snap.memberships), [(a.id, "ib1", "Менеджеры", "u2"), (a.id, "ib1", "Менеджеры", "u3")])
        yield self.assertFailure(self.store.set_group("nope", "ib1", "g", ["u"], 1.0), UnknownApplication)

    @inlineCallbacks
    def test_kept_messages(self) -> None:
        """Kept messages: per-user bound drops the oldest, group/all delivered once per user, user ones taken, expired purged and counted."""
        a = yield self.store.create_application("Shop", 10.0)
        for n in range(3):
            yield self.store.keep_message(KeptMessage(a.id, "ib1", "user", "u1", b'{"n":%d}' % n, 1.0, 1000.0), [], 2, 100)
        outcome = yield self.store.keep_message(KeptMessage(a.id, "ib1", "group", "g", b"{}", 1.0, 1000.0), ["u9"], 2, 100)
        yield self.store.keep_message(KeptMessage(a.id, "ib1", "all", "", b"[]", 1.0, 50.0), [], 2, 100)
        self.assertGreater(outcome.id, 0)
        self.assertEqual((yield self.store.kept_ibs()), frozenset({(a.id, "ib1")}))
        self.assertEqual((yield self.store.take_kept(a.id, "ib1", "u1", ["g"], 10.0)), [b'{"n":1}', b'{"n":2}', b"{}", b"[]"])
        self.assertEqual((yield self.store.take_kept(a.id, "ib1", "u1", ["g"], 10.0)), [], "taken once")
        self.assertEqual((yield self.store.take_kept(a.id, "ib1", "u9", ["g"], 10.0)), [b"[]"], "u9 had the group message live")
        self.assertEqual((yield self.store.purge_kept(60.0)), 1)
        [count] = yield self.store.kept_counts()
        self.assertEqual((count.app_id, count.kept, count.dropped, count.expired), (a.id, 1, 1, 1))

    @inlineCallbacks
    def test_kept_messages_taken_once_by_concurrent_takers(self) -> None:
        """Two connections taking one user's kept messages at once (two sessions on two nodes): each message goes to one of them."""
        from twisted.internet.defer import gatherResults

        a = yield self.store.create_application("Shop", 10.0)
        other = self.open_again()
        self.addCleanup(other.close)
        for n in range(10):
            yield self.store.keep_message(KeptMessage(a.id, "ib1", "group", "g", b"%d" % n, 1.0, 9e9), [], 100, 100)
            yield self.store.keep_message(KeptMessage(a.id, "ib1", "user", "u1", b"u%d" % n, 1.0, 9e9), [], 100, 100)
            got = yield gatherResults([s.take_kept(a.id, "ib1", "u1", ["g"], 2.0) for s in (self.store, other, self.store, other)])
            self.assertEqual(sorted(p for batch in got for p in batch), sorted([b"%d" % n, b"u%d" % n]))

    @inlineCallbacks
    def test_export_import_round_trip(self) -> None:
        """An export imported into an empty store exports the same; a store with applications refuses it unless replace."""
        a = yield self.store.create_application("Shop", 10.0)
        yield self.store.add_token(TokenRecord(b"\x07" * 32, a.id, b"\x08" * 16, 10.0, 5000.0))
        yield self.store.set_group(a.id, "ib1", "g", ["u1", "u2"], 1.5)
        yield self.store.keep_message(KeptMessage(a.id, "ib1", "group", "g", '{"т":1}'.encode(), 1.0, 9e9), ["u1"], 5, 5)
        yield self.store.set_admin(AdminAccount("admin", "hash"), 3.0)
        doc = yield self.store.export_data()
        other = self.open_empty()
        self.addCleanup(other.close)
        self.assertEqual((yield other.import_data(json.loads(json.dumps(doc)))), 1)
        self.assertEqual((yield other.export_data()), doc)
        e = yield self.assertFailure(other.import_data(doc), StoreError)
        self.assertIn("--replace", str(e))
        yield other.import_data(doc, replace=True)
        self.assertEqual((yield other.export_data()), doc)
        bad = {**doc, "tokens": [{**doc["tokens"][0], "app_id": "nope"}]}
        e = yield self.assertFailure(other.import_data(bad, replace=True), StoreError)
        self.assertIn("tokens[0].app_id", str(e))

    @inlineCallbacks
    def test_core_adopts_a_token_issued_by_another_node(self) -> None:
        """A token only the store knows (another node issued it) is looked up once, then resolved from memory; an unknown one is 401 after one look-up."""
        from twisted.internet.defer import Deferred

        from pns4ones.core import AuthError, Core
        from pns4ones.hub.local import LocalHub

        here = Core(self.store, LocalHub(), reactor)
        yield here.reload()
        other_store = self.open_again()
        self.addCleanup(other_store.close)
        there = Core(other_store, LocalHub(), reactor)
        app = yield other_store.create_application("Shop", time.time())
        yield there.reload()
        issued = yield there.authorize(app.server_key)
        looked_up = here.resolve_token(issued.token)
        self.assertIsInstance(looked_up, Deferred, "the first resolution asks the store")
        self.assertEqual((yield looked_up).id, app.id)
        self.assertEqual(here.resolve_token(issued.token).id, app.id)
        bogus = here.resolve_token("not-a-token")
        self.assertIsInstance(bogus, Deferred)
        e = yield self.assertFailure(bogus, AuthError)
        self.assertEqual(e.status, 401)
        refused = self.assertRaises(AuthError, here.resolve_token, "not-a-token")
        self.assertEqual(refused.status, 401, "known to be absent: refused from memory")

    @inlineCallbacks
    def test_changes_are_announced(self) -> None:
        """A change made through another connection calls on_change within a second or so."""
        calls: list[float] = []
        self.store.start_watching(lambda: calls.append(time.monotonic()), 0.2)
        self.addCleanup(self.store.stop_watching)
        yield sleep(0.5)
        before = len(calls)
        other = self.open_again()
        self.addCleanup(other.close)
        yield other.create_application("from elsewhere", 1.0)
        for _ in range(40):
            if len(calls) > before:
                break
            yield sleep(0.05)
        self.assertGreater(len(calls), before)


class MemoryStoreContract(StoreContract, TestCase):
    def open_store(self) -> Any:
        self.database = MemoryDatabase()
        return MemoryStore(self.database)

    def open_again(self) -> Any:
        return MemoryStore(self.database)

    def open_empty(self) -> Any:
        return MemoryStore()


class SQLiteStoreContract(StoreContract, TestCase):
    def open_store(self) -> Any:
        self.dir = tempfile.mkdtemp(prefix="pns4ones-store-")
        self.addCleanup(lambda: __import__("shutil").rmtree(self.dir, ignore_errors=True))
        return SQLiteStore(self.dir)

    def open_again(self) -> Any:
        return SQLiteStore(self.dir)

    def open_empty(self) -> Any:
        # Another store of the same installation: the same key file (an export opens only with its key).
        return SQLiteStore(tempfile.mkdtemp(prefix="pns4ones-store-", dir=self.dir), key_file=os.path.join(self.dir, "secrets.key"))


class PostgresStoreContract(_WithCluster, StoreContract, TestCase):
    def open_store(self) -> Any:
        from pns4ones.store.postgres import PostgresStore

        self.url = self.cluster.url(self.cluster.new_database())
        return PostgresStore(self.url, reactor=reactor, key_file=KEY_FILE)

    def open_again(self) -> Any:
        from pns4ones.store.postgres import PostgresStore

        return PostgresStore(self.url, reactor=reactor, key_file=KEY_FILE)

    def open_empty(self) -> Any:
        from pns4ones.store.postgres import PostgresStore

        return PostgresStore(self.cluster.url(self.cluster.new_database()), reactor=reactor, key_file=KEY_FILE)

    @inlineCallbacks
    def test_only_changes_to_the_registry_are_announced(self) -> None:
        """Other nodes reload for a kept message in a new information base, not for the next ones there nor for taking them."""
        app = yield self.store.create_application("Shop", 1.0)
        calls: list[float] = []
        self.store.start_watching(lambda: calls.append(time.monotonic()), 0.2)
        self.addCleanup(self.store.stop_watching)
        other = self.open_again()
        self.addCleanup(other.close)

        @inlineCallbacks
        def reloads_after(action: Any) -> Any:
            yield sleep(0.6)
            before = len(calls)
            yield action()
            yield sleep(0.8)
            return len(calls) - before

        first = yield reloads_after(lambda: other.keep_message(KeptMessage(app.id, "ib1", "user", "u1", b"{}", 1.0, 9e9), [], 10, 10))
        self.assertGreaterEqual(first, 1)
        self.assertEqual(
            (yield reloads_after(lambda: other.keep_message(KeptMessage(app.id, "ib1", "user", "u1", b"[]", 1.0, 9e9), [], 10, 10))), 0
        )
        self.assertEqual((yield reloads_after(lambda: other.take_kept(app.id, "ib1", "u1", [], 2.0))), 0)

    def test_migrations_once_under_concurrency(self) -> None:
        """Two migrate commands at once on a new database: both succeed, the schema is applied once, and again is a no-op."""
        url = self.cluster.url(self.cluster.new_database())
        procs = [
            subprocess.Popen(
                [ADMIN, "--data-dir", KEYS, "migrate", "--json", "--store", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=60) for p in procs]
        self.assertEqual([p.returncode for p in procs], [0, 0], outs)
        from pns4ones.store.postgres import migrations

        latest = migrations()[-1][0]
        reports = sorted((json.loads(o[0])["from"], json.loads(o[0])["version"]) for o in outs)
        self.assertEqual(reports, [(0, latest), (latest, latest)])
        self.assertEqual(
            self.cluster.psql("SELECT version, name FROM schema_version ORDER BY version", url.rsplit("/", 1)[1]).split(),
            [f"{number}|{name}" for number, name, _ in migrations()],
        )
        again = admin(url, "migrate")
        self.assertIn(f"schema version {latest}, up to date", again.stdout)
        self.assertNotIn(PASSWORD, again.stdout + again.stderr)

    def test_password_sources(self) -> None:
        """The password comes from the URL, store_password_file or PGPASSWORD; a wrong one is a clear exit 1 that never shows it."""
        database = self.cluster.new_database()
        bare = self.cluster.url(database, password=False)
        self.assertEqual(admin(bare, "list", "--json", env={"PGPASSWORD": PASSWORD}).stdout.strip(), "[]")
        secret = Path(tempfile.mkdtemp()) / "pw"
        self.addCleanup(shutil.rmtree, secret.parent, True)
        secret.write_text(PASSWORD + "\n")
        ini = secret.parent / "pns4ones.ini"
        ini.write_text(f"store = {bare}\nstore_password_file = {secret}\n")
        result = subprocess.run(
            [ADMIN, "--config", str(ini), "--data-dir", KEYS, "list", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
        )
        self.assertEqual((result.returncode, result.stdout.strip()), (0, "[]"), result.stderr)
        wrong = admin(bare.replace("@", ":not-it@"), "list", check=False, env={"PGPASSWORD": ""})
        self.assertEqual(wrong.returncode, 1)
        self.assertIn("password authentication failed", wrong.stderr)
        self.assertIn("pns:***@", wrong.stderr)
        self.assertNotIn("not-it", wrong.stderr)


# -- real nodes on one PostgreSQL --------------------------------------------------------------------


class _Nodes(_WithCluster):
    def node(self, **kw: Any) -> ServerProcess:
        server = ServerProcess(args=["--store", self.url, "--store_poll_interval", "1", "--secrets_key_file", KEY_FILE], **kw)
        self.addCleanup(server.cleanup)
        return server.start()

    def subscribe(self, server: ServerProcess, app: dict[str, str], user: str, ib: str = "ib1", group: str = "") -> Any:
        from pns4ones_client import Subscriber

        before = server.log().count("subscription registered")
        sub = Subscriber("127.0.0.1", server.service_port, app["id"], app["client_key"], ib, user, group, timeout=5).connect()
        self.addCleanup(sub.close)
        wait_for(lambda: server.log().count("subscription registered") > before, what=f"registration of {user}")
        return sub

    @inlineCallbacks
    def auth(self, server: ServerProcess, app: dict[str, str]) -> Any:
        response = yield self.http.get(f"{server.url}/auth", params={"server_key": app["server_key"]})
        body = yield response.json()
        self.assertEqual(response.code, 200, body)
        return body["access_token"]

    @inlineCallbacks
    def request(self, method: str, url: str, token: str, doc: Any = None) -> Any:
        response = yield self.http.request(
            method, url, data=json.dumps(doc).encode() if doc is not None else None, headers={"Authorization": f"Bearer {token}"}
        )
        body = yield response.content()
        return response.code, json.loads(body) if body else None


def message(kind: str, ib: str = "ib1", title: str = "hello", **fields: str) -> dict[str, Any]:
    return {"Recipient": {"Type": kind, "IbId": ib, **fields}, "Message": {"Notification": {"Title": title, "Body": "b"}}}


class TwoNodesTests(_Nodes, TestCase):
    def setUp(self) -> None:
        self.url = self.cluster.url(self.cluster.new_database())
        self.http = http_client(self)
        self.app = json.loads(admin(self.url, "create", "Shop", "--json").stdout)
        self.a = self.node()
        self.b = self.node()

    def plant_token(self, app: dict[str, str]) -> str:
        """A token written straight into the store, as a node would, but without announcing it."""
        from pns4ones import crypto

        token_id = crypto.new_token_id()
        token = crypto.derive_token(app["server_key"], token_id)
        now = time.time()
        self.cluster.psql(
            "INSERT INTO tokens (digest, app_id, token_id, issued_at, expires_at) "
            f"VALUES ('\\x{crypto.token_digest(token).hex()}', '{app['id']}', '\\x{token_id.hex()}', {now}, {now + 3600})",
            self.url.rsplit("/", 1)[1],
        )
        return token

    @inlineCallbacks
    def test_one_node_serves_from_postgresql(self) -> None:
        """A node on PostgreSQL: an application made with the CLI authorizes, sends, and its add-in subscriber receives."""
        sub = self.subscribe(self.a, self.app, "u1")
        token = yield self.auth(self.a, self.app)
        code, doc = yield self.request("POST", f"{self.a.url}/sendmessage", token, message("user", UserId="u1"))
        self.assertEqual((code, doc["sessions"]), (200, 1))
        self.assertEqual(sub.receive(5)["notification"]["title"], "hello")

    @inlineCallbacks
    def test_token_of_one_node_accepted_by_the_other_at_once(self) -> None:
        """/auth on node A, then /sendmessage and /groups on node B right away: accepted; a token nobody issued is 401 on B."""
        sub = self.subscribe(self.b, self.app, "u1")
        token = yield self.auth(self.a, self.app)
        code, doc = yield self.request("POST", f"{self.b.url}/sendmessage", token, message("user", UserId="u1"))
        self.assertEqual((code, doc["sessions"]), (200, 1), doc)
        self.assertEqual(sub.receive(5)["notification"]["title"], "hello")
        other = yield self.auth(self.b, self.app)
        self.assertEqual(other, token, "node B hands out the token node A issued (it has over half its life)")
        for path, method, doc in (("sendmessage", "POST", message("user", UserId="u1", title="planted")), ("groups/ib1", "GET", None)):
            planted = self.plant_token(self.app)  # in the store, never announced: B can only learn it by looking it up
            code, answer = yield self.request(method, f"{self.b.url}/{path}", planted, doc)
            self.assertEqual(code, 200, answer)
        self.assertEqual(sub.receive(5)["notification"]["title"], "planted")
        planted = self.plant_token(self.app)  # a ticket from A (which looks the token up), used on B (which does too)
        code, ticket = yield self.request("POST", f"{self.a.url}/tickets", planted, {"IbId": "ib1", "UserId": "w1"})
        self.assertEqual(code, 200, ticket)
        conn = http.client.HTTPConnection("127.0.0.1", self.b.api_port, timeout=5)
        try:
            conn.request("GET", f"/subscribe/sse?ticket={ticket['ticket']}")
            response = conn.getresponse()
            self.assertEqual((response.status, response.getheader("Content-Type")), (200, "text/event-stream; charset=utf-8"))
            response.close()
        finally:
            conn.close()
        planted = self.plant_token(self.app)  # the same for a WebSocket upgrade
        code, ticket = yield self.request("POST", f"{self.a.url}/tickets", planted, {"IbId": "ib1", "UserId": "w2"})
        with socket.create_connection(("127.0.0.1", self.b.api_port), timeout=5) as raw:
            key = base64.b64encode(os.urandom(16)).decode()
            raw.sendall(
                f"GET /subscribe/ws?ticket={ticket['ticket']} HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            self.assertTrue(raw.recv(4096).startswith(b"HTTP/1.1 101 "))
            raw.sendall(b"\x88\x80" + os.urandom(4))  # a close frame (masked, empty): the node ends the session
            wait_for(lambda: raw.recv(4096) == b"", 5, what="the node to close the WebSocket")
        admin(self.url, "reset_token", self.app["id"])  # then a new token from A, used on B's Klein routes at once
        yield sleep(1.5)
        token2 = yield self.auth(self.a, self.app)
        self.assertNotEqual(token2, token)
        code, doc = yield self.request("GET", f"{self.b.url}/groups/ib1", token2)
        self.assertEqual(code, 200, doc)
        code, doc = yield self.request("POST", f"{self.b.url}/sendmessage", "not-a-token", message("user", UserId="u1"))
        self.assertEqual((code, doc["error"]), (401, "unauthorized"))
        code, doc = yield self.request("POST", f"{self.b.url}/sendmessage", token, message("user", UserId="u1"))
        self.assertEqual(code, 401, "the reset token is refused on B too")

    @inlineCallbacks
    def test_client_key_rotation_by_cli_ends_subscriptions_on_both_nodes(self) -> None:
        """pns4ones-admin upd_cli_key against the store ends the old-key subscriptions on both nodes within about 2 s."""
        on_a = self.subscribe(self.a, self.app, "u1")
        on_b = self.subscribe(self.b, self.app, "u2")
        started = time.monotonic()
        admin(self.url, "upd_cli_key", self.app["id"])
        wait_for(
            lambda: "client key rotated" in self.a.log() and "client key rotated" in self.b.log(),
            5,
            what="both nodes to end the subscriptions",
        )
        self.assertLess(time.monotonic() - started, 2.5)
        for sub in (on_a, on_b):
            self.assertIsNone(sub.receive(2))
            self.assertTrue(sub.closed_by_server)
        yield None

    @inlineCallbacks
    def test_group_set_through_one_node_routes_on_the_other(self) -> None:
        """A group set through node A's API routes a group send made through node B to B's subscriber."""
        sub = self.subscribe(self.b, self.app, "u7")
        token = yield self.auth(self.a, self.app)
        code, doc = yield self.request("PUT", f"{self.a.url}/groups/ib1/%D0%A1%D0%BA%D0%BB%D0%B0%D0%B4", token, {"UserIds": ["u7", "u8"]})
        self.assertEqual(code, 200, doc)
        for _ in range(40):
            code, doc = yield self.request("GET", f"{self.b.url}/groups/ib1/%D0%A1%D0%BA%D0%BB%D0%B0%D0%B4", token)
            if doc.get("members") == 2:
                break
            yield sleep(0.05)
        self.assertEqual(doc["UserIds"], ["u7", "u8"])
        code, doc = yield self.request("POST", f"{self.b.url}/sendmessage", token, message("group", UserGroup="Склад", title="склад"))
        self.assertEqual((code, doc["sessions"]), (200, 1), doc)
        self.assertEqual(sub.receive(5)["notification"]["title"], "склад")


class StoreOutageTests(_Nodes, TestCase):
    @inlineCallbacks
    def test_postgresql_restarted_under_a_running_node(self) -> None:
        """PostgreSQL stopped: the node stays up, sends from memory work, store-needing calls (group change, ttl send, batch element, new token) are 503 with a reason, /ready is 503; restarted: all works again, the subscription survived."""
        self.url = self.cluster.url(self.cluster.new_database())
        self.http = http_client(self)
        app = json.loads(admin(self.url, "create", "Shop", "--json").stdout)
        spare = json.loads(admin(self.url, "create", "No token yet", "--json").stdout)
        node = self.node()
        sub = self.subscribe(node, app, "u1")
        token = yield self.auth(node, app)
        self.cluster.stop()
        try:
            for _ in range(100):
                response = yield self.http.get(f"{node.url}/ready")
                ready = yield response.json()
                if response.code == 503:
                    break
                yield sleep(0.1)
            self.assertEqual(response.code, 503)
            self.assertIn("store unavailable", ready["status"])
            code, doc = yield self.request("POST", f"{node.url}/sendmessage", token, message("user", UserId="u1", title="from memory"))
            self.assertEqual((code, doc["sessions"]), (200, 1))
            self.assertEqual(sub.receive(5)["notification"]["title"], "from memory")
            code, doc = yield self.request("PUT", f"{node.url}/groups/ib1/g", token, {"UserIds": ["u1"]})
            self.assertEqual((code, doc["error"]), (503, "store_unavailable"))
            self.assertIn("unreachable", doc["reason"])
            code, doc = yield self.request("POST", f"{node.url}/sendmessage?ttl=60", token, message("user", UserId="nobody"))
            self.assertEqual((code, doc["error"]), (503, "store_unavailable"))
            kept = message("user", UserId="nobody")
            kept["Message"]["TTL"] = 60
            code, doc = yield self.request(
                "POST", f"{node.url}/sendmessages", token, [kept, message("user", UserId="u1", title="in a batch")]
            )
            self.assertEqual(code, 200, doc)
            self.assertEqual([r["status"] for r in doc["results"]], [503, 200])
            self.assertEqual(doc["results"][0]["error"], "store_unavailable")
            self.assertEqual(sub.receive(5)["notification"]["title"], "in a batch")
            response = yield self.http.get(f"{node.url}/auth", params={"server_key": spare["server_key"]})
            doc = yield response.json()
            self.assertEqual((response.code, doc["error"]), (503, "store_unavailable"))
            yield sleep(1.5)  # several probes and polls fail meanwhile
        finally:
            self.cluster.start()
        for _ in range(200):
            response = yield self.http.get(f"{node.url}/ready")
            if response.code == 200:
                break
            yield sleep(0.1)
        self.assertEqual(response.code, 200)
        code, doc = yield self.request("PUT", f"{node.url}/groups/ib1/g", token, {"UserIds": ["u1"]})
        self.assertEqual(code, 200, doc)
        code, doc = yield self.request("POST", f"{node.url}/sendmessage", token, message("group", UserGroup="g", title="after"))
        self.assertEqual((code, doc["sessions"]), (200, 1))
        self.assertEqual(sub.receive(5)["notification"]["title"], "after")
        log = node.log()
        self.assertIsNone(node.proc.poll(), "the node is still running")
        self.assertEqual(log.count("unavailable: "), 1, "the outage is logged once")
        self.assertEqual(log.count("available again"), 1)
        self.assertNotIn("Traceback", log)
        self.assertNotIn(PASSWORD, log)


class ExportImportTests(_WithCluster, TestCase):
    @inlineCallbacks
    def test_sqlite_to_postgresql_and_back(self) -> None:
        """export (0600) from SQLite, import into PostgreSQL, export, import into a new SQLite: the same document every time; bad input is exit 1."""
        work = Path(tempfile.mkdtemp(prefix="pns4ones-export-"))
        self.addCleanup(shutil.rmtree, work, True)
        first = SQLiteStore(work, path=work / "first.db", key_file=KEY_FILE)
        a = yield first.create_application("Shop", 10.0)
        yield first.add_token(TokenRecord(b"\x07" * 32, a.id, b"\x08" * 16, 10.0, 9e9))
        yield first.set_group(a.id, "ib1", "Склад", ["u1", "u2"], 1.5)
        yield first.keep_message(KeptMessage(a.id, "ib1", "group", "Склад", '{"т":1}'.encode(), 1.0, 9e9), ["u1"], 5, 5)
        yield first.keep_message(KeptMessage(a.id, "ib1", "user", "u3", b"{}", 1.0, 9e9), [], 5, 5)
        yield first.set_admin(AdminAccount("admin", "hash"), 3.0)
        yield first.close()
        pg = self.cluster.url(self.cluster.new_database())
        sqlite_a, sqlite_b = f"sqlite://{work}/first.db", f"sqlite://{work}/second.db"
        admin(sqlite_a, "export", str(work / "1.json"))
        self.assertEqual(stat.S_IMODE((work / "1.json").stat().st_mode), 0o600)
        out = admin(pg, "import", str(work / "1.json")).stdout
        self.assertIn("1 application(s), 1 token(s), 1 group(s) with 2 member(s), 2 kept message(s), an admin account", out)
        refused = admin(pg, "import", str(work / "1.json"), check=False)
        self.assertEqual(refused.returncode, 1)
        self.assertIn("--replace", refused.stderr)
        admin(pg, "import", str(work / "1.json"), "--replace")
        admin(pg, "export", str(work / "2.json"))
        admin(sqlite_b, "import", str(work / "2.json"))
        third = admin(sqlite_b, "export", "-").stdout
        docs = [json.loads((work / "1.json").read_text()), json.loads((work / "2.json").read_text()), json.loads(third)]
        for doc in docs:
            doc.pop("exported_at")
        self.assertEqual(docs[1], docs[0])
        self.assertEqual(docs[2], docs[0])
        (work / "bad.json").write_text("{not json")
        bad = admin(sqlite_b, "import", str(work / "bad.json"), "--replace", check=False)
        self.assertEqual(bad.returncode, 1)
        self.assertIn("is not JSON", bad.stderr)
        (work / "bad.json").write_text(json.dumps({"format": "pns4ones-export", "version": 1, "applications": [{"id": "x"}]}))
        bad = admin(sqlite_b, "import", str(work / "bad.json"), "--replace", check=False)
        self.assertEqual(bad.returncode, 1)
        self.assertIn("applications[0] lacks 'title'", bad.stderr)
        missing = admin(sqlite_b, "import", str(work / "none.json"), check=False)
        self.assertEqual(missing.returncode, 1)
        self.assertIn("cannot read", missing.stderr)


class StartupTests(TestCase):
    def test_unreachable_postgresql_at_start_is_a_clear_refusal(self) -> None:
        """A node whose PostgreSQL cannot be reached at start exits 1 naming the store without its password."""
        from .support import free_port, run_twistd

        data = tempfile.mkdtemp(prefix="pns4ones-start-")
        self.addCleanup(shutil.rmtree, data, True)
        url = f"postgresql://pns:{PASSWORD}@127.0.0.1:{free_port()}/pns4ones"
        result = run_twistd(
            "-n", "--pidfile=", "pns4ones", "--data-dir", data, "--store", url,
            "--listen", f"127.0.0.1:{free_port()}", "--service", f"127.0.0.1:{free_port()}", "--admin-port", str(free_port()),
        )  # fmt: skip
        output = result.stdout + result.stderr
        self.assertEqual(result.returncode, 1, output)
        self.assertIn("cannot open the store postgresql://pns:***@127.0.0.1:", output)
        self.assertNotIn(PASSWORD, output)
