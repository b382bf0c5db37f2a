"""
Which build of the send path runs: the modules of :data:`HOT` are compiled with
Cython at install where a C compiler is at hand (``setup.py``), from the same
source; Python imports a compiled copy before its ``.py``.  The service names
the build in its start-up line and its status; ``python -m pns4ones.compiled``
prints it (exit 1 when any module runs pure).

This module is read by ``setup.py`` before the package is installed: it imports
nothing but the standard library at the top.
"""

from __future__ import annotations

import importlib
import sys
from typing import Final

#: The modules a send goes through, compiled when possible.  Not ``core``:
#: Twisted's ``inlineCallbacks`` takes only Python's own generators.
HOT: Final = (
    "pns4ones.http.connection",
    "pns4ones.http.handlers",
    "pns4ones.http.calls",
    "pns4ones.messages",
    "pns4ones.hub.interface",
    "pns4ones.hub.local",
    "pns4ones.hub.recovery",
    "pns4ones.hub.outbound",
    "pns4ones.transports.addin",
    "pns4ones.trace",
    "pns4ones.metrics",
    "pns4ones.wire",
    "pns4ones.crypto",
    "pns4ones.txinternals",
)


def compiled() -> dict[str, bool]:
    """Each module of :data:`HOT` -> whether the imported copy is compiled."""
    out = {}
    for name in HOT:
        path = getattr(importlib.import_module(name), "__file__", None) or ""
        out[name] = not path.endswith(".py")
    return out


def build(state: dict[str, bool] | None = None) -> str:
    """``compiled`` (every module of the send path), ``pure`` (none) or ``partly compiled (N of M)``; of ``state`` when given."""
    done = sum((compiled() if state is None else state).values())
    if done == len(HOT):
        return "compiled"
    if not done:
        return "pure"
    return f"partly compiled ({done} of {len(HOT)})"


def main() -> int:
    state = compiled()
    for name, is_compiled in state.items():
        print(f"{name}: {'compiled' if is_compiled else 'pure Python'}")
    print(f"send path: {build(state)}")
    return 0 if all(state.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
