"""
The store's cost, SQLite against PostgreSQL (a throwaway one on loopback, as in
the tests): a snapshot load (what a node does at start and after every change
announced by another node or the CLI), the store's part of an ``/auth`` that
issues a token (``add_token``), the cross-node token look-up (``get_token``),
and a real ``/auth`` over HTTP against a node on each store.

    .venv/bin/python scripts/bench_store.py [--apps 100 --tokens 10000 --members 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from twisted.internet import defer, task

from pns4ones import crypto
from pns4ones.store import TokenRecord
from pns4ones.store.postgres import PostgresStore
from pns4ones.store.sqlite import SQLiteStore
from tests.pg_support import PgCluster
from tests.support import ADMIN, ServerProcess

#: The secrets key file of the stores measured (the node and the commands share it).
KEY_DIR = tempfile.mkdtemp(prefix="pns4ones-bench-keys-")
KEY_FILE = os.path.join(KEY_DIR, "secrets.key")


def ms(samples: list[float]) -> str:
    samples = sorted(samples)
    return f"median {statistics.median(samples) * 1000:.2f} ms, p90 {samples[int(len(samples) * 0.9)] * 1000:.2f} ms"


@defer.inlineCallbacks
def fill(store: Any, apps: int, tokens: int, members: int) -> Any:
    ids = []
    for n in range(apps):
        app = yield store.create_application(f"app {n}", time.time())
        ids.append(app.id)
    doc = yield store.export_data()
    now = time.time()
    doc["tokens"] = [
        {
            "digest": os.urandom(32).hex(),
            "app_id": ids[n % apps],
            "token_id": os.urandom(16).hex(),
            "issued_at": now,
            "expires_at": now + 3600,
        }
        for n in range(tokens)
    ]
    doc["groups"] = [
        {"app_id": ids[g % apps], "ib_id": "ib", "group": f"g{g}", "members": [{"user_id": f"u{m}", "added_at": now} for m in range(100)]}
        for g in range(members // 100)
    ]
    yield store.import_data(doc, replace=True)


@defer.inlineCallbacks
def measure(name: str, store: Any, args: argparse.Namespace) -> Any:
    yield fill(store, args.apps, args.tokens, args.members)
    loads = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        snap = yield store.snapshot()
        loads.append(time.perf_counter() - started)
    apps = yield store.list_applications()
    adds, gets = [], []
    for n in range(args.rounds * 5):
        record = TokenRecord(
            crypto.token_digest(f"t{n}{time.time()}"), apps[n % len(apps)].id, crypto.new_token_id(), time.time(), time.time() + 3600
        )
        started = time.perf_counter()
        yield store.add_token(record)
        adds.append(time.perf_counter() - started)
        started = time.perf_counter()
        yield store.get_token(record.digest)
        gets.append(time.perf_counter() - started)
    print(f"{name}: snapshot of {len(snap.applications)} apps, {len(snap.tokens)} tokens, {len(snap.memberships)} memberships: {ms(loads)}")
    print(f"{name}: add_token (the store's part of an /auth that issues a token): {ms(adds)}")
    print(f"{name}: get_token (a token issued by another node): {ms(gets)}")
    yield store.close()


def http_auth(name: str, store_url: str, rounds: int) -> None:
    """/auth over HTTP on a real node: the first issues a token (store write), the rest answer it from memory."""
    app = json.loads(
        subprocess.run(
            [ADMIN, "--data-dir", KEY_DIR, "create", "bench", "--json", "--store", store_url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    server = ServerProcess(args=["--store", store_url, "--secrets_key_file", KEY_FILE], log_level="Warning")
    server.start(wait=False)
    try:
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(f"{server.url}/ready", timeout=1)
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)
        issue, hit = [], []
        for _ in range(rounds):
            subprocess.run(
                [ADMIN, "--data-dir", KEY_DIR, "reset_token", app["id"], "--store", store_url],
                capture_output=True,
                check=True,
            )
            time.sleep(1.2)  # the node reloads (store_poll_interval / NOTIFY)
            started = time.perf_counter()
            urllib.request.urlopen(f"{server.url}/auth?server_key={app['server_key']}").read()
            issue.append(time.perf_counter() - started)
            for _ in range(20):
                started = time.perf_counter()
                urllib.request.urlopen(f"{server.url}/auth?server_key={app['server_key']}").read()
                hit.append(time.perf_counter() - started)
        print(f"{name}: HTTP /auth issuing a token: {ms(issue)}; answered from memory: {ms(hit)}")
    finally:
        server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--apps", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=10_000)
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    cluster = PgCluster()
    work = tempfile.mkdtemp(prefix="pns4ones-bench-")
    try:
        pg_url = cluster.url(cluster.new_database())

        @defer.inlineCallbacks
        def run(reactor: Any) -> Any:
            yield measure("SQLite    ", SQLiteStore(work), args)
            yield measure("PostgreSQL", PostgresStore(pg_url, reactor=reactor, key_file=KEY_FILE), args)

        try:
            task.react(run)
        except SystemExit as e:
            if e.code:
                raise
        http_auth("SQLite    ", f"sqlite://{work}/http.db", 20)
        http_auth("PostgreSQL", cluster.url(cluster.new_database()), 20)
    finally:
        cluster.cleanup()


if __name__ == "__main__":
    main()
