"""
House rules checked over the source tree (pure: reads files, runs nothing).

* Twisted's ``Logger`` has ``warn()``, not ``warning()``: a ``warning()`` call
  raises ``AttributeError`` where a warning was due (ruff's G010 autofix made
  that rename once; the rule is off now).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
#: Every Python file of ours that runs inside a Twisted process.
SOURCES = ("src/pns4ones", "clients/python/src/pns4ones_client", "twisted/plugins")


def python_files(*roots: str) -> Iterator[Path]:
    for root in roots:
        yield from sorted((ROOT / root).rglob("*.py"))


def calls_of(path: Path, method: str) -> Iterator[int]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == method:
            yield node.lineno


class LoggerTests(SynchronousTestCase):
    def test_no_warning_calls(self) -> None:
        """No module calls .warning(): our loggers are Twisted's, whose method is warn()."""
        self.assertFalse(hasattr(Logger(), "warning"), "Twisted's Logger has warning() now: this rule may go")
        found = [f"{path.relative_to(ROOT)}:{line}" for path in python_files(*SOURCES) for line in calls_of(path, "warning")]
        self.assertEqual(found, [], "Twisted's Logger has no warning(): call warn()")
