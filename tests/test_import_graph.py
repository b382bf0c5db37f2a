"""The package's import graph, read from the source by scripts/import_graph.py: no cycle, no private name imported across modules."""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parents[1]


def _graph_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "scripts" / "import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("import_graph", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


class ImportGraphTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tool = _graph_module()
        self.graph = self.tool.build(ROOT / "src")

    def test_no_cycle(self) -> None:
        """No module of pns4ones depends on itself through others (lazy imports count; TYPE_CHECKING ones do not)."""
        self.assertEqual(self.graph.cycles(), [])

    def test_no_private_names_across_modules(self) -> None:
        """No module imports a private name (_x) of another module."""
        self.assertEqual(self.graph.private, [])

    def test_the_checker_sees_a_cycle(self) -> None:
        """The checker finds a cycle and a private import when there is one (so the two tests above can fail)."""
        directory = tempfile.TemporaryDirectory()
        self.addCleanup(directory.cleanup)
        tmp = Path(directory.name)
        package = tmp / "pns4ones"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "a.py").write_text("from .b import thing\n")
        (package / "b.py").write_text("def f():\n    from .a import _secret\n")
        graph = self.tool.build(tmp)
        self.assertEqual(graph.cycles(), [["pns4ones.a", "pns4ones.b"]])
        self.assertEqual(graph.private, ["pns4ones.b imports the private name _secret of pns4ones.a"])

    def test_hub_imports_no_transport(self) -> None:
        """The hub depends on nothing above it (core, transports, the front door): the old core -> hub -> transports -> core cycle stays broken."""
        above = ("pns4ones.core", "pns4ones.transports", "pns4ones.api", "pns4ones.service", "pns4ones.handoff")
        for name, targets in self.graph.edges.items():
            if name == "pns4ones.hub" or name.startswith("pns4ones.hub."):
                self.assertEqual([t for t in targets if t.startswith(above)], [], name)
