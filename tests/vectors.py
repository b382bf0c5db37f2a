"""The shared byte-exact vectors (../shared/vectors/wire.json)."""

from __future__ import annotations

import json
import os
from pathlib import Path

_CANDIDATES = [
    os.environ.get("PNS4ONES_SHARED", ""),
    str(Path(__file__).resolve().parents[1].parent / "shared"),
]


def shared_dir() -> Path:
    for candidate in _CANDIDATES:
        if candidate and (Path(candidate) / "vectors" / "wire.json").is_file():
            return Path(candidate)
    raise FileNotFoundError("../shared/vectors/wire.json not found (set PNS4ONES_SHARED)")


WIRE = json.loads((shared_dir() / "vectors" / "wire.json").read_text(encoding="utf-8"))
