"""
``pns4ones-admin status``: ask the running server of a data directory for its
live figures over the loopback admin listener (``GET /status.json`` with the
token the server wrote to ``DATA_DIR/admin.json``, mode 0600, at start).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import control

ADMIN_FILE = "admin.json"


def fetch(
    data_dir: Path,
    admin_port: int | None = None,
    timeout: float = 5.0,
    resource: str = "/status.json",
    query: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The server's status document (or another ``resource`` of the admin listener: ``/trace.json``); :class:`control.ControlError` when there is none to ask."""
    path = Path(data_dir) / ADMIN_FILE
    pid = control.running_pid(data_dir)  # says clearly when no server runs
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise control.ControlError(
            f"the server (pid {pid}) has not written {path}: it is still starting, or older than this command"
        ) from None
    except PermissionError:
        raise control.ControlError(f"cannot read {path}: run this as the service's user (or root)") from None
    except (OSError, ValueError) as e:
        raise control.ControlError(f"cannot read {path}: {e}") from None
    port = admin_port or int(info.get("admin_port", 0))
    url = f"http://127.0.0.1:{port}{resource}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {info.get('status_token', '')}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        raise control.ControlError(f"the server at {url} refused the request ({e.code}): is {path} from this server?") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise control.ControlError(
            f"no answer from the server's admin listener at {url} ({reason}); is it running with this data directory and admin port?"
        ) from None
    except ValueError as e:
        raise control.ControlError(f"the server at {url} answered something that is not JSON: {e}") from None


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{days}d " if days else "") + f"{hours:02d}:{minutes:02d}:{secs:02d}"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def render(doc: dict[str, Any]) -> str:
    """The status document for people."""
    minute = doc.get("last_minute", {})
    build = f", {doc['build']} send path" if "build" in doc else ""  # (a server from before the build was reported: nothing)
    lines = [
        f"pns4ones {doc.get('version')} (pid {doc.get('pid')}{build}), up {_duration(doc.get('uptime', 0))}, {'ready' if doc.get('ready') else 'NOT READY'}",
        f"subscriptions: {doc.get('subscriptions', 0)} ({doc.get('connections', 0)} connections)",
    ]
    for app_id, app in doc.get("applications", {}).items():
        lines.append(f"  {app.get('title') or '(removed)'} ({app_id}): {app.get('subscriptions', 0)}")
        for ib, count in app.get("ibs", {}).items():
            lines.append(f"    information base {ib}: {count}")
    lines.append(f"last minute: {minute.get('sends', 0)} sends, {minute.get('deliveries', 0)} deliveries")
    store = doc.get("store", {})
    location = store.get("location", "")
    if location.startswith(("postgresql://", "postgres://")):  # shown without its password
        lines.append(f"store: {location} ({'available' if store.get('available', True) else 'UNAVAILABLE: reconnecting'})")
    else:
        lines.append(f"store: {_size(store.get('bytes', 0))} in {store.get('directory')}")
    lines.append("listeners:")
    for listener in doc.get("listeners", []):
        host = listener.get("host", "")
        host = f"[{host}]" if ":" in host else host
        lines.append(f"  {listener.get('name')}: {host}:{listener.get('port')}")
    return "\n".join(lines) + "\n"
