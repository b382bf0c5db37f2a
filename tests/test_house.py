"""
House rules checked over the source tree (pure: reads files, runs nothing).

* No module of ``src/pns4ones`` imports a private name (``_x``) of another
  module, or reads one through another module's object (``other._x``, where
  ``_x`` is not defined in the reading module itself).  Twisted's private
  state is the one exception, and only in ``txinternals.py``, whose every
  attribute ``tests/test_txinternals.py`` pins.
* Twisted's ``Logger`` has ``warn()``, not ``warning()``: a ``warning()`` call
  raises ``AttributeError`` where a warning was due (ruff's G010 autofix made
  that rename once; its rules are not selected now).
* What the scripts take from the tests (``from tests.x import y``, also inside
  functions) is defined there: the scripts are not run by the suite, so a
  renamed test helper would break them silently.
"""

from __future__ import annotations

import ast
import tempfile
from collections.abc import Iterator
from pathlib import Path

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parent.parent
#: Every Python file of ours that runs inside a Twisted process.
SOURCES = ("src/pns4ones", "clients/python/src/pns4ones_client", "src/twisted/plugins")


def python_files(*roots: str) -> Iterator[Path]:
    for root in roots:
        yield from sorted((ROOT / root).rglob("*.py"))


def calls_of(path: Path, method: str) -> Iterator[int]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == method:
            yield node.lineno


#: Names with a leading underscore that are public API (namedtuple's methods, os._exit).
PUBLIC_UNDERSCORED = frozenset({"_replace", "_asdict", "_fields", "_make", "_exit"})

#: Reaches into private names that other branches are removing (issue 19); each line goes when its fix lands.
KNOWN: frozenset[str] = frozenset()


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__")) and name not in PUBLIC_UNDERSCORED


def _own(node: ast.Attribute) -> bool:
    return isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")


def _defined(tree: ast.AST) -> set[str]:
    """Every name a module defines itself (functions, classes, its objects' attributes, variables, arguments, __slots__)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _own(node):
            out.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            out.add(node.id)
        elif isinstance(node, ast.arg):
            out.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):  # __slots__ entries
            out.add(node.value)
    return out


def reaches_into(path: Path) -> Iterator[str]:
    """What ``path`` uses of other modules' private names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    own = _defined(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                submodule = path.parent / alias.name
                if node.level and node.module is None and (submodule.with_suffix(".py").exists() or submodule.is_dir()):
                    continue  # a private module of its own package
                if _private(alias.name):
                    yield f"imports {alias.name} from {'.' * node.level}{node.module or ''}"
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own and not _own(node):
            yield f"{'writes' if isinstance(node.ctx, ast.Store) else 'reads'} {ast.unparse(node)}"


class PrivateNameTests(SynchronousTestCase):
    def test_no_module_reaches_into_another(self) -> None:
        """Outside txinternals.py no module imports or reads another module's private names (but the known ones being removed)."""
        package = ROOT / "src/pns4ones"
        found = {
            f"{path.relative_to(package)}: {what}"
            for path in python_files("src/pns4ones")
            if path.name != "txinternals.py"
            for what in reaches_into(path)
        }
        self.assertEqual(sorted(found - KNOWN), [], "reaches into another module's private names")
        self.assertEqual(sorted(KNOWN - found), [], "fixed: remove these from KNOWN in tests/test_house.py")

    def test_the_check_finds_what_it_looks_for(self) -> None:
        """The check sees a private import, a private module attribute, another object's private attribute read or written, and not a module's own."""
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        sample = Path(directory.name) / "sample.py"
        sample.write_text(
            "from twisted.web.http_headers import _nameEncoder\n"
            "from . import control\n"
            "control._atomic_write(1)\n"
            "def f(proto, t):\n"
            "    t._tempDataBuffer = []\n"
            "    return proto._ended, t.dataBuffer, self_made._mine\n"
            "class A:\n"
            "    _mine = 1\n"
        )
        self.assertEqual(
            list(reaches_into(sample)),
            [
                "imports _nameEncoder from twisted.web.http_headers",
                "reads control._atomic_write",
                "writes t._tempDataBuffer",
                "reads proto._ended",
            ],
        )


class LoggerTests(SynchronousTestCase):
    def test_no_warning_calls(self) -> None:
        """No module calls .warning(): our loggers are Twisted's, whose method is warn()."""
        self.assertFalse(hasattr(Logger(), "warning"), "Twisted's Logger has warning() now: this rule may go")
        found = [f"{path.relative_to(ROOT)}:{line}" for path in python_files(*SOURCES) for line in calls_of(path, "warning")]
        self.assertEqual(found, [], "Twisted's Logger has no warning(): call warn()")


def top_level_names(path: Path) -> set[str]:
    """The names a module defines or imports at its top level."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8"), str(path)).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


class ScriptImportTests(SynchronousTestCase):
    def test_what_scripts_take_from_the_tests_exists(self) -> None:
        """Every name a script imports from a tests module is defined at that module's top level."""
        taken = []
        for path in python_files("scripts"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tests."):
                    module = ROOT / (node.module.replace(".", "/") + ".py")
                    taken += [(path, module, alias.name) for alias in node.names]
        self.assertTrue(taken, "no script imports from the tests any more: this check may go")
        missing = [
            f"{path.relative_to(ROOT)}: {name} from {module.relative_to(ROOT)}"
            for path, module, name in taken
            if not module.exists() or name not in top_level_names(module)
        ]
        self.assertEqual(missing, [])
