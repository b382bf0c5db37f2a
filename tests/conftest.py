"""
Two layers of tests, told apart without editing any test file:

* ``process``: the test starts real processes (the ``twistd`` service, the
  admin CLI, PostgreSQL, Redis, Chromium, a script) as a user would;
* the rest run in this process, in seconds: pure code with vectors and
  properties, protocols over loopback sockets or memory transports, ``Core``
  on the in-memory store.

A test is marked ``process`` when its class (or a base class, or its function)
uses, directly or through a helper of its module, one of :data:`STARTERS`.
``scripts/test -m "not process"`` runs the fast layer; ``-m process`` the other.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
#: Names whose use starts a process (tests/support.py, pg_support.py, redis_support.py, browser.py, the stdlib).
STARTERS = frozenset({"ServerProcess", "run_twistd", "PgCluster", "RedisServer", "start_chromium", "subprocess"})


@functools.cache
def starters_in(path: str) -> frozenset[str]:
    """The module-level functions and classes of a test module that start processes (directly or through each other)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), path)
    uses = {
        node.name: {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    found: set[str] = set()
    while True:
        more = {name for name, names in uses.items() if name not in found and names & (STARTERS | found)}
        if not more:
            return frozenset(found)
        found |= more


def starts_processes(item: pytest.Item) -> bool:
    owner = getattr(item, "cls", None)
    if owner is None:
        module = getattr(item, "module", None)
        return module is not None and item.originalname in starters_in(module.__file__)  # type: ignore[attr-defined]
    for klass in owner.__mro__:
        module = sys.modules.get(klass.__module__)
        path = getattr(module, "__file__", None) or ""
        if Path(path).parent == TESTS and klass.__name__ in starters_in(path):
            return True
    return False


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "process: starts real processes (twistd, the CLI, PostgreSQL, Redis, a browser); deselect with -m 'not process'"
    )


#: The modules whose classes take longest (installs into fresh virtual environments,
#: Chromium, handoffs, PostgreSQL), longest first. They run first: pytest-xdist
#: (``--dist loadscope --no-loadscope-reorder``, as scripts/test runs it) hands the
#: classes out in collection order, and a class of minutes handed out last would run
#: alone at the end while the other workers wait.
LONGEST_FIRST = (
    "test_install.py",
    "test_admin_panel.py",
    "test_handoff.py",
    "test_docs.py",
    "test_postgres.py",
    "test_soak.py",
    "test_http_differential.py",
    "test_trace_process.py",
    "test_reliability.py",
    "test_redis_hub.py",
    "test_compiled.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if starts_processes(item):
            item.add_marker(pytest.mark.process)
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a module stays
