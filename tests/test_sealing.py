"""
Secrets at rest: sealing vectors and binding, the key file, a stolen store that
gives nothing, export/import with and without the key, key rotation (in the
store, through the CLI under a running server), and the start-up migration of
stores made by the landed version (tests/fixtures, made by make_legacy_stores.py).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from pns4ones import crypto
from pns4ones.core import Core
from pns4ones.hub.local import LocalHub
from pns4ones.store import AdminAccount, StoreError
from pns4ones.store.sealing import (
    KeyRing,
    SealingError,
    SecretKey,
    format_key_file,
    key_id_of,
    new_key,
    parse_key_file,
    seal,
    unseal,
)
from pns4ones.store.sqlite import SQLiteStore
from pns4ones_client import Subscriber

from .pg_support import SKIP_REASON, PgCluster, find_bindir
from .support import ADMIN, ServerProcess, wait_for

FIXTURES = Path(__file__).parent / "fixtures"
KEY = SecretKey("0a1b2c3d", bytes(range(32)))
NONCE = bytes(range(100, 112))
#: seal(KEY, "s3rver-key", "applications", "server_key", "app-1", NONCE)
VECTOR = "sealed1:0a1b2c3d:ZGVmZ2hpamtsbW5vOyisEBybe_VbG8xuCW3w8F0BVstpJtmTVQ4"


def secrets_of(app: Any) -> list[bytes]:
    """Every form in which an application's keys could sit in a file: texts, and the raw AES key and IV."""
    client = app.client_key if not isinstance(app, dict) else None
    server_key = app["server_key"] if isinstance(app, dict) else app.server_key
    client_text = app["client_key"] if isinstance(app, dict) else client.encode()
    raw = base64.b64decode(client_text)
    return [server_key.encode(), client_text.encode(), raw[8:40], raw[40:56]]


def files_bytes(directory: Path, prefix: str = "pns4ones.db") -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir()) if p.name.startswith(prefix))


def assert_absent(case: Any, secret: bytes, stolen: bytes) -> None:
    """``secret`` is nowhere in ``stolen`` (a short message when it is)."""
    if secret in stolen:
        case.fail(f"{secret[:24]!r}... found at byte {stolen.index(secret)} of {len(stolen)}")


class VectorTests(SynchronousTestCase):
    def test_vector(self) -> None:
        """The sealed format: prefix, key id, base64url of nonce + AES-256-GCM ciphertext + tag over the documented associated data."""
        self.assertEqual(seal(KEY, "s3rver-key", "applications", "server_key", "app-1", NONCE), VECTOR)
        body = VECTOR.split(":", 2)[2]
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        aad = b"pns4ones sealed v1\x000a1b2c3d\x00applications\x00server_key\x00app-1"
        self.assertEqual(raw[:12], NONCE)
        self.assertEqual(AESGCM(KEY.material).decrypt(raw[:12], raw[12:], aad), b"s3rver-key")
        self.assertEqual(unseal({KEY.id: KEY}, VECTOR, "applications", "server_key", "app-1"), "s3rver-key")
        self.assertEqual(key_id_of(VECTOR), "0a1b2c3d")
        self.assertIsNone(key_id_of("s3rver-key"))
        self.assertNotEqual(
            seal(KEY, "s3rver-key", "applications", "server_key", "app-1"), seal(KEY, "s3rver-key", "applications", "server_key", "app-1")
        )

    def test_bound_to_its_place(self) -> None:
        """A sealed value opens only at its table, column and row, under its key; altered or plaintext values are refused."""
        keys = {KEY.id: KEY}
        for place in (("applications", "client_key", "app-1"), ("applications", "server_key", "app-2"), ("other", "server_key", "app-1")):
            with self.assertRaises(SealingError):
                unseal(keys, VECTOR, *place)
        other = SecretKey(KEY.id, bytes(32))
        with self.assertRaises(SealingError) as caught:
            unseal({KEY.id: other}, VECTOR, "applications", "server_key", "app-1")
        self.assertIn("does not open", str(caught.exception))
        with self.assertRaises(SealingError) as caught:
            unseal({}, VECTOR, "applications", "server_key", "app-1")
        self.assertIn("which the key file does not hold", str(caught.exception))
        flipped = VECTOR[:-3] + ("A" if VECTOR[-3] != "A" else "B") + VECTOR[-2:]
        for bad in (flipped, VECTOR[:30], "sealed1:0a1b2c3d:!!!"):
            with self.assertRaises(SealingError):
                unseal(keys, bad, "applications", "server_key", "app-1")
        with self.assertRaises(SealingError) as caught:
            unseal(keys, "s3rver-key", "applications", "server_key", "app-1")
        self.assertIn("is not sealed", str(caught.exception))

    def test_key_file_format(self) -> None:
        """The key file round-trips; malformed lines are refused naming the line."""
        keys = [KEY, new_key([KEY.id])]
        text = format_key_file(keys)
        self.assertTrue(text.startswith("# pns4ones secrets key file"))
        self.assertEqual(parse_key_file(text), keys)
        for bad, reason in (
            ("xyz AAAA", "expected 'ID BASE64'"),
            ("0a1b2c3d !!", "not base64"),
            ("0a1b2c3d " + base64.b64encode(b"short").decode(), "has 5 bytes"),
            (f"{text}0a1b2c3d {base64.b64encode(bytes(32)).decode()}\n", "listed twice"),
        ):
            with self.assertRaises(SealingError) as caught:
                parse_key_file(bad, "k")
            self.assertIn(reason, str(caught.exception))


class KeyRingTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pns4ones-keys-"))
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.path = self.dir / "secrets.key"

    def test_create_once_mode_0600(self) -> None:
        """The first ring creates the file (0600, one key); a second one made meanwhile reads that key, not a new one."""
        first, second = KeyRing(self.path), KeyRing(self.path)
        key = first.create()
        self.assertEqual(stat.S_IMODE(self.path.stat().st_mode), 0o600)
        self.assertEqual(second.create(), key)
        self.assertEqual(KeyRing(self.path).newest(), key)
        self.assertEqual([p.name for p in self.dir.iterdir()], ["secrets.key"])  # no temporary file left

    def test_reads_again_when_the_file_changed(self) -> None:
        """A key added by another process is found when a value names it; an unknown id stays unknown without error."""
        ring = KeyRing(self.path)
        ring.create()
        other = KeyRing(self.path)
        added = new_key()
        other.replace([*other.ordered(), added])
        self.assertEqual(ring.get(added.id), added)
        self.assertIsNone(ring.get("ffffffff"))

    def test_open_to_others_refused(self) -> None:
        """A key file other users may read is refused with the fix in the message."""
        KeyRing(self.path).create()
        os.chmod(self.path, 0o644)
        with self.assertRaises(SealingError) as caught:
            KeyRing(self.path)
        self.assertIn("chmod 600", str(caught.exception))


class SealedStoreTests(TestCase):
    """The SQLite store in process: what a copy of it gives, and what it refuses."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="pns4ones-sealed-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def open(self, directory: Path | None = None, key_file: Path | None = None) -> SQLiteStore:
        store = SQLiteStore(directory or self.dir, key_file=key_file)
        self.addCleanup(store.close)
        return store

    @inlineCallbacks
    def test_stolen_store_gives_nothing(self) -> None:
        """The database files and an export hold no server key, client key or token; the key file holds the sealing key only."""
        store = self.open()
        apps = []
        for n in range(3):
            apps.append((yield store.create_application(f"App {n}", float(n))))
        apps[1] = yield store.rotate_server_key(apps[1].id, 5.0)
        apps[2] = yield store.rotate_client_key(apps[2].id, 6.0)
        core = Core(store, LocalHub(), reactor)
        yield core.reload()
        issued = yield core.authorize(apps[0].server_key)
        yield store.set_admin(AdminAccount("admin", "$argon2id$v=19$m=19456,t=2,p=1$x$y"), 7.0)
        doc = yield store.export_data()
        yield store.close()
        stolen = files_bytes(self.dir) + json.dumps(doc).encode()
        for app in apps:
            for secret in secrets_of(app):
                assert_absent(self, secret, stolen)
        assert_absent(self, issued.token.encode(), stolen)
        self.assertEqual(stat.S_IMODE((self.dir / "secrets.key").stat().st_mode), 0o600)
        self.assertEqual(doc["version"], 2)
        self.assertTrue(all(key_id_of(a["server_key"]) and key_id_of(a["client_key"]) for a in doc["applications"]))
        # With the key file, everything is there again.
        again = self.open()
        self.assertEqual((yield again.list_applications()), apps)

    @inlineCallbacks
    def test_wrong_or_missing_key_file(self) -> None:
        """A sealed store does not open without its key file (and none is made), with another one, or with a forged one."""
        store = self.open()
        yield store.create_application("Shop", 1.0)
        yield store.close()
        key_file = self.dir / "secrets.key"
        (self.dir / "kept.key").write_bytes(key_file.read_bytes())
        key_file.unlink()
        e = self.assertRaises(SealingError, SQLiteStore, self.dir)
        self.assertIn("does not exist: copy the key file", str(e))
        self.assertFalse(key_file.exists())
        other = self.dir / "other" / "secrets.key"
        KeyRing(other).create()
        e = self.assertRaises(SealingError, SQLiteStore, self.dir, key_file=other)
        self.assertIn("does not hold it", str(e))
        real = parse_key_file((self.dir / "kept.key").read_text())
        KeyRing(key_file).replace([SecretKey(real[0].id, bytes(32))])  # the right id, another key
        e = self.assertRaises(SealingError, SQLiteStore, self.dir)
        self.assertIn("does not open", str(e))

    @inlineCallbacks
    def test_swapped_values_refused(self) -> None:
        """Sealed keys swapped between two rows of a copy do not open: reads fail loudly instead of mixing applications up."""
        store = self.open()
        a = yield store.create_application("A", 1.0)
        b = yield store.create_application("B", 2.0)
        yield store.close()
        with sqlite3.connect(self.dir / "pns4ones.db") as db:
            ka, kb = (db.execute("SELECT server_key FROM applications WHERE id = ?", (i,)).fetchone()[0] for i in (a.id, b.id))
            db.execute("UPDATE applications SET server_key = 'swapping' WHERE id = ?", (b.id,))
            db.execute("UPDATE applications SET server_key = ? WHERE id = ?", (kb, a.id))
            db.execute("UPDATE applications SET server_key = ? WHERE id = ?", (ka, b.id))
        store = self.open()
        e = yield self.assertFailure(store.list_applications(), SealingError)
        self.assertIn(f"applications.server_key of {a.id!r} does not open", str(e))

    @inlineCallbacks
    def test_export_needs_its_key(self) -> None:
        """An export imports into another installation only once its key is added to that key file; keys are then sealed anew."""
        source = self.open()
        app = yield source.create_application("Shop", 1.0)
        doc = json.loads(json.dumps((yield source.export_data())))
        target_dir = self.dir / "target"
        target = self.open(target_dir)
        e = yield self.assertFailure(target.import_data(doc), StoreError)
        self.assertIn(f"add its line(s) to {target_dir / 'secrets.key'}", str(e))
        ring = KeyRing(target_dir / "secrets.key")
        ring.replace([*ring.ordered(), *parse_key_file((self.dir / "secrets.key").read_text())])
        self.assertEqual((yield target.import_data(doc)), 1)
        self.assertEqual((yield target.get_application(app.id)), app)
        exported = yield target.export_data()
        self.assertEqual(key_id_of(exported["applications"][0]["server_key"]), exported["sealed_with"])
        self.assertNotEqual(exported["sealed_with"], doc["sealed_with"])

    @inlineCallbacks
    def test_plaintext_export_is_sealed_on_import(self) -> None:
        """A version 1 export (plaintext keys, from the landed version) imports and its keys are sealed."""
        key = "k" * 64
        client = crypto.random_aes_material()
        from pns4ones.wire import ClientKey

        client_text = ClientKey(*client).encode()
        doc = {
            "format": "pns4ones-export",
            "version": 1,
            "applications": [{"id": "a1", "title": "Old", "server_key": key, "client_key": client_text, "created_at": 1, "updated_at": 1}],
        }
        store = self.open()
        self.assertEqual((yield store.import_data(doc)), 1)
        self.assertEqual((yield store.get_application("a1")).server_key, key)
        yield store.close()
        assert_absent(self, key.encode(), files_bytes(self.dir))

    @inlineCallbacks
    def test_rotation_in_the_store(self) -> None:
        """rotate_secrets_key seals every key under the new key; the old key is then not needed; old values leave the file."""
        store = self.open()
        apps = []
        for n in range(2):
            apps.append((yield store.create_application(f"App {n}", float(n))))
        before = files_bytes(self.dir)
        ring = store.keyring
        old = ring.ordered()
        new = new_key(k.id for k in old)
        ring.replace([*old, new])
        self.assertEqual((yield store.rotate_secrets_key(new, 9.0)), 4)
        ring.replace([new])
        self.assertEqual((yield store.sealing_key_id()), new.id)
        yield store.close()
        with sqlite3.connect(self.dir / "pns4ones.db") as db:
            values = [v for row in db.execute("SELECT server_key, client_key FROM applications") for v in row]
        self.assertEqual({key_id_of(v) for v in values}, {new.id})
        after = files_bytes(self.dir)
        for value in (v for v in before.split(b"sealed1:")[1:]):
            assert_absent(self, b"sealed1:" + value[:40], after)  # a value sealed under the old key
        self.assertEqual((yield self.open().list_applications()), apps)


def cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ADMIN, "--data-dir", str(data_dir), *args], capture_output=True, text=True, timeout=60)


def auth_status(server: ServerProcess, server_key: str) -> int:
    try:
        with urllib.request.urlopen(f"{server.url}/auth?server_key={server_key}", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


class RotationCommandTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.server = ServerProcess()
        self.addCleanup(self.server.cleanup)
        self.first = self.server.create_app("First")
        self.server.start()
        self.key_file = self.server.data_dir / "secrets.key"

    def key_ids(self) -> list[str]:
        return [k.id for k in parse_key_file(self.key_file.read_text())]

    def test_rotate_under_a_running_server(self) -> None:
        """rotate-secrets-key under a running server: it keeps serving, reads the new key when it meets it, and restarts with it."""
        (old,) = self.key_ids()
        done = cli(self.server.data_dir, "rotate-secrets-key")
        self.assertEqual(done.returncode, 0, done.stderr)
        (new,) = self.key_ids()
        self.assertNotEqual(new, old)
        self.assertIn(f"under the new key {new} (was {old})", done.stdout)
        self.assertEqual(stat.S_IMODE(self.key_file.stat().st_mode), 0o600)
        self.assertEqual(auth_status(self.server, self.first["server_key"]), 200)
        second = self.server.create_app("Second")  # sealed under the new key: the server reads the key file again
        wait_for(lambda: auth_status(self.server, second["server_key"]) == 200, what="the server to load the new application")
        self.server.restart()
        self.assertEqual(auth_status(self.server, self.first["server_key"]), 200)
        sub = Subscriber("127.0.0.1", self.server.service_port, second["id"], second["client_key"], "ib", "u", timeout=5).connect()
        self.addCleanup(sub.close)
        wait_for(lambda: "user=u " in self.server.log(), what="the registration with the second client key")
        self.assertNotIn("Traceback", self.server.log())

    def test_prepare_then_rotate_and_keep_old(self) -> None:
        """--prepare only adds a key (the store unchanged); the next run uses it; --keep-old keeps the previous key listed."""
        (old,) = self.key_ids()
        prepared = cli(self.server.data_dir, "rotate-secrets-key", "--prepare", "--json")
        self.assertEqual(prepared.returncode, 0, prepared.stderr)
        new = json.loads(prepared.stdout)["prepared"]
        self.assertEqual(self.key_ids(), [old, new])
        with sqlite3.connect(self.server.data_dir / "pns4ones.db") as db:
            self.assertEqual(db.execute("SELECT key_id FROM sealing").fetchone()[0], old)
        done = cli(self.server.data_dir, "rotate-secrets-key", "--keep-old", "--json")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout)["key"], new)
        self.assertEqual(sorted(self.key_ids()), sorted([old, new]))
        listed = json.loads(cli(self.server.data_dir, "list", "--json").stdout)
        self.assertEqual(listed[0]["server_key"], self.first["server_key"])


class LegacySQLiteTests(SynchronousTestCase):
    """The SQLite store the landed version made (tests/fixtures/legacy-sqlite.db), opened by this version's twistd."""

    def test_migrated_on_start(self) -> None:
        """Keys are sealed at start (file rebuilt: no plaintext left), a key file 0600 appears, and every key and token still works."""
        legacy = json.loads((FIXTURES / "legacy.json").read_text())["sqlite"]
        server = ServerProcess()
        self.addCleanup(server.cleanup)
        server.data_dir.mkdir(mode=0o700, parents=True)
        shutil.copy(FIXTURES / "legacy-sqlite.db", server.data_dir / "pns4ones.db")
        server.start()
        shop, other = legacy["applications"]
        self.assertEqual(auth_status(server, shop["server_key"]), 200)
        self.assertEqual(auth_status(server, other["server_key"]), 200)
        self.assertEqual(auth_status(server, legacy["rotated_away"]), 401)
        sub = Subscriber("127.0.0.1", server.service_port, shop["id"], shop["client_key"], "ib1", "u1", timeout=5).connect()
        self.addCleanup(sub.close)
        wait_for(lambda: "user=u1 " in server.log(), what="the registration with the legacy client key")
        body = json.dumps({"Recipient": {"Type": "user", "IbId": "ib1", "UserId": "u1"}, "Message": {"Topic": "after"}}).encode()
        request = urllib.request.Request(
            f"{server.url}/sendmessage",
            data=body,
            headers={"Authorization": f"Bearer {legacy['token']}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:  # the token the landed version issued
            self.assertEqual(json.loads(response.read())["sessions"], 1)
        self.assertEqual(sub.receive(5), {"topic": "after"})
        self.assertEqual(stat.S_IMODE((server.data_dir / "secrets.key").stat().st_mode), 0o600)
        version = json.loads(cli(server.data_dir, "migrate", "--json").stdout)
        self.assertGreaterEqual(version["version"], 3)  # 003_sealing.sql applied (and whatever came after it)
        self.assertEqual(version["from"], version["version"])  # the server had migrated it already
        server.stop()
        stolen = files_bytes(server.data_dir)
        for app in legacy["applications"]:
            for secret in secrets_of(app):
                assert_absent(self, secret, stolen)
        assert_absent(self, legacy["rotated_away"].encode(), stolen)


class LegacyPostgresTests(TestCase):
    """The PostgreSQL store the landed version made (its pg_dump, tests/fixtures/legacy-pg.sql), opened by this version."""

    def setUp(self) -> None:
        if find_bindir() is None:
            raise SkipTest(SKIP_REASON)
        self.cluster = PgCluster()
        self.addCleanup(self.cluster.cleanup)

    def test_migrated_on_start(self) -> None:
        """Two nodes sharing the key file start on the restored dump: keys sealed, a new dump holds none of them, keys still work."""
        legacy = json.loads((FIXTURES / "legacy.json").read_text())["postgresql"]
        bindir = find_bindir()
        assert bindir is not None
        url = self.cluster.url(self.cluster.new_database())
        subprocess.run(
            [os.path.join(bindir, "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", f"--dbname={url}", "-f", str(FIXTURES / "legacy-pg.sql")],
            check=True,
            capture_output=True,
            timeout=60,
        )
        keys = Path(tempfile.mkdtemp(prefix="pns4ones-pg-keys-"))
        self.addCleanup(shutil.rmtree, keys, True)
        nodes = []
        for _ in range(2):
            node = ServerProcess(args=["--store", url, "--secrets_key_file", str(keys / "secrets.key")])
            self.addCleanup(node.cleanup)
            nodes.append(node.start())
        for node in nodes:
            for app in legacy["applications"]:
                self.assertEqual(auth_status(node, app["server_key"]), 200)
        dump = subprocess.run(
            [os.path.join(bindir, "pg_dump"), "--inserts", f"--dbname={url}"], check=True, capture_output=True, timeout=60
        ).stdout
        for app in legacy["applications"]:
            for secret in secrets_of(app)[:2]:
                assert_absent(self, secret, dump)
        assert_absent(self, legacy["rotated_away"].encode(), dump)
        self.assertIn(b"sealed1:", dump)
        stranger = ServerProcess(args=["--store", url])  # its own data directory: no key file for this store
        self.addCleanup(stranger.cleanup)
        with self.assertRaises(AssertionError):
            stranger.start()
        self.assertIn("copy the key file from a node that shares this store", stranger.log())
        self.assertFalse((stranger.data_dir / "secrets.key").exists())
