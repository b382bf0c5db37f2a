"""
Names for JSON documents.

A document this code builds for ``json.dumps`` (a status answer, an export, a
log record) or has already checked member by member is a :data:`JSONObject`:
its members' types vary by name, which no static type says, so they are
``Any`` by design.  A value straight from ``json.loads`` whose shape is not
checked yet is ``object``: the code that reads it narrows it with
``isinstance``.
"""

from __future__ import annotations

from typing import Any, TypeAlias

#: A JSON object (built here, or checked already): member name -> value of that member's own type.
JSONObject: TypeAlias = dict[str, Any]
