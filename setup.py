"""
The build (metadata: setup.cfg).  The package is pure Python, and runs as such.
Where Cython and a C compiler are at hand, the send path's modules (HOT) are also
compiled from the same source, and Python imports the compiled copies: about a
fifth less CPU per send (docs/performance.md, "The compiled send path").

Compiled copies are optional at every step: ``PNS4ONES_PURE=1`` skips them, an
editable install (``pip install -e .``) skips them (the source runs as edited),
and a machine without a compiler or Python's headers gets a warning and the pure
package.  ``python -m pns4ones.compiled`` says which build is installed.
"""

from __future__ import annotations

import os
import runpy
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

#: The modules compiled, from src/pns4ones/compiled.py (the one list; read, not imported: the
#: package's dependencies are not installed yet).
HOT: list[str] = [
    name.replace(".", "/") + ".py"
    for name in runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "src", "pns4ones", "compiled.py"))["HOT"]
]

#: Python's semantics kept: annotations are not C types (an ``int`` stays a Python int),
#: functions stay introspectable, tracebacks name the .py lines.
DIRECTIVES = {"language_level": 3, "annotation_typing": False, "binding": True}


def _warn(text: str) -> None:
    print(f"pns4ones: {text} (pure Python works the same, slower)", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """Compiles HOT when it can (Cython, then the C compiler); anything that fails leaves the pure modules in place."""

    def run(self) -> None:
        if getattr(self, "editable_mode", False):  # (setuptools >= 64) an editable install runs the source as edited
            return
        try:
            from Cython.Build import cythonize
        except ImportError:
            _warn("Cython is not installed: the send path is installed as pure Python")
            return
        try:
            # Each extension keeps its object (setuptools has prepared it) and takes Cython's C file as its source.
            generated = {
                ext.name: ext for ext in cythonize(self.extensions, compiler_directives=DIRECTIVES, build_dir="build/cython", quiet=True)
            }
            for ext in self.extensions:
                ext.sources = generated[ext.name].sources
            super().run()
        except Exception as e:  # (no compiler, no headers: the pure package)
            for ext in self.extensions:
                self._drop_earlier_copy(ext)
            _warn(f"the send path was not compiled ({e}): it is installed as pure Python")

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:  # (this module stays pure)
            self._drop_earlier_copy(ext)
            _warn(f"{ext.name} was not compiled ({e}): it is installed as pure Python")

    def _drop_earlier_copy(self, ext: Extension) -> None:
        """A module left pure loses the copy an earlier build compiled (from another source) in build/, which would be installed instead."""
        path = self.get_ext_fullpath(ext.name)
        if os.path.exists(path):
            os.remove(path)


def ext_modules() -> list[Extension]:
    """One extension per module of HOT, from its .py (cythonized by OptionalBuildExt); none with PNS4ONES_PURE."""
    if os.environ.get("PNS4ONES_PURE", "") not in ("", "0"):
        return []
    return [Extension(path[: -len(".py")].replace("/", "."), [os.path.join("src", path)]) for path in HOT]


setup(ext_modules=ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
