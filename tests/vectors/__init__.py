"""
The project's byte-exact wire vectors (``tests/vectors/wire.json``, written by
``scripts/make_vectors.py``), and the reference vectors the project was started
from, when a checkout has them beside it (``shared/vectors/wire.json`` next to
the checkout's directory, or the file ``PNS4ONES_REFERENCE_VECTORS`` names).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parents[1]
WIRE_FILE = HERE / "wire.json"
WIRE: dict[str, Any] = json.loads(WIRE_FILE.read_text(encoding="utf-8"))


def reference_file() -> Path | None:
    """The reference vectors' file when it is there (None: a clone alone)."""
    for candidate in (os.environ.get("PNS4ONES_REFERENCE_VECTORS", ""), str(CHECKOUT.parent / "shared" / "vectors" / "wire.json")):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None
