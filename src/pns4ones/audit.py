"""
The administrators' audit log, shared by the panel and ``pns4ones-admin``:
who (the panel's login, or the OS user running the CLI), when, what, to which
application, and from where (the panel's peer address; ``local`` or the SSH
client for the CLI).  Records live in the store (``audit_log``), bounded by
:data:`MAX_ROWS`; ``detail`` is a small JSON object (never a message body nor a
secret).
"""

from __future__ import annotations

import json
import os
import pwd
import time
from collections.abc import Iterable

from .jsondoc import JSONObject
from .store import AuditEntry

#: The store keeps this many records; each new one pushes the oldest out.
MAX_ROWS = 100_000
#: Longest detail text kept (a hostile group name cannot grow the table).
MAX_DETAIL = 2000


def detail(**fields: object) -> str:
    """``fields`` as the record's compact JSON detail."""
    text = json.dumps(fields, ensure_ascii=False, separators=(",", ":"))
    cut = len(text)
    out = text
    while len(out) > MAX_DETAIL:  # escaping grows the text: shorten until it fits
        cut -= len(out) - MAX_DETAIL
        out = json.dumps({"truncated": text[:cut]}, ensure_ascii=False, separators=(",", ":"))
    return out


def parse_detail(text: str) -> JSONObject:
    try:
        doc = json.loads(text) if text else {}
    except ValueError:
        return {"text": text}
    return doc if isinstance(doc, dict) else {"value": doc}


def describe_detail(text: str) -> str:
    """``key: value, ...`` for people (strings as they are, other values as JSON)."""
    return ", ".join(f"{k}: {v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)}" for k, v in parse_detail(text).items())


def cli_actor() -> tuple[str, str]:
    """(who, from where) of this CLI process: the OS user (and who ran sudo), the SSH client or ``local``."""
    uid = os.getuid()
    try:
        who = pwd.getpwuid(uid).pw_name
    except KeyError:
        who = f"uid {uid}"
    sudo = os.environ.get("SUDO_USER", "")
    if uid == 0 and sudo and sudo != "root":
        who += f" (sudo by {sudo})"
    ssh = os.environ.get("SSH_CONNECTION", "").split()
    if ssh:
        return who, f"ssh {ssh[0]}"
    try:
        return who, f"local {os.ttyname(0)}"
    except OSError:
        return who, "local"


def as_json(entry: AuditEntry) -> JSONObject:
    return {
        "id": entry.id,
        "at": entry.at,
        "actor": entry.actor,
        "source": entry.source,
        "address": entry.address,
        "action": entry.action,
        "app_id": entry.app_id,
        "detail": parse_detail(entry.detail),
    }


def render(entries: Iterable[AuditEntry], total: int) -> str:
    """The CLI's text listing, newest first."""
    lines = []
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at))
        app = f" app={e.app_id}" if e.app_id else ""
        more = describe_detail(e.detail)
        lines.append(f"{when}  {e.source}:{e.actor} from {e.address}  {e.action}{app}{'  ' + more if more else ''}")
    if not lines:
        return "The audit log is empty.\n"
    shown = len(lines)
    tail = f"({shown} of {total} records; --limit N for more)\n" if shown < total else ""
    return "\n".join(lines) + "\n" + tail
