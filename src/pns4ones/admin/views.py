"""
What the panel's pages show, computed without I/O: paging, the values the
stock 1C extension's settings form asks for, durations for people, previews of
kept messages, lists typed into a text area, the rows of the Online view.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ..core import OnlineRow
from ..store import Application

T = TypeVar("T")

#: A host name or address an operator may type for "this server as 1C sees it".
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|[0-9A-Fa-f:]+)$")
_WILDCARDS = ("", "0.0.0.0", "::")


@dataclass(frozen=True, slots=True)
class Page:
    """Page ``number`` (from 1) of ``total`` rows, ``size`` a page."""

    number: int
    size: int
    total: int

    @property
    def offset(self) -> int:
        return (self.number - 1) * self.size

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.size))

    @property
    def previous(self) -> int | None:
        return self.number - 1 if self.number > 1 else None

    @property
    def next(self) -> int | None:
        return self.number + 1 if self.number < self.pages else None

    def slice(self, rows: Sequence[T]) -> Sequence[T]:
        return rows[self.offset : self.offset + self.size]


def page_number(text: str) -> int:
    """``?page=`` as a number from 1 (anything else: 1)."""
    return int(text) if text.isascii() and text.isdigit() and 0 < int(text) < 10**9 else 1  # ("²".isdigit(), but not int())


# -- the 1C settings -----------------------------------------------------------------------


def valid_host(text: str) -> bool:
    return bool(_HOST.match(text))


def host_for(hosts: Sequence[str]) -> str:
    """How 1C reaches a listener bound to ``hosts``: its address, ``localhost`` for loopback, else this machine's name."""
    host = hosts[0] if hosts else ""
    if host in _WILDCARDS:
        return socket.gethostname()  # no DNS look-up: never blocks the reactor
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.is_loopback:
        return "localhost"
    return f"[{host}]" if address.version == 6 else host


@dataclass(frozen=True, slots=True)
class Setting:
    """One value of the 1C extension's settings form: its label (catalog key), value, and whether it gets a Copy button."""

    key: str
    value: str
    element: str  # the element id (Copy buttons point at it)
    copy: bool = True
    hint: str = ""


def settings_for_1c(app: Application, config: Any, host: str = "") -> dict[str, list[Setting]]:
    """
    Every value the stock extension's form (Сервис уведомлений > Настройка
    сервиса уведомлений) asks for, in its order and groups; then what other
    senders and browser subscribers need.  ``host``: the operator's name for
    this server (default: the listeners' addresses or the machine's name).
    """
    send_host = host or host_for(config.listen.hosts)
    receive_host = host or host_for(config.service.hosts)
    https = config.ssl_mode != "None"
    scheme = "https" if https else "http"
    api = f"{scheme}://{send_host}:{config.listen.port}"
    return {
        "main": [
            Setting("settings.use_service", "settings.yes", "set-use", copy=False),
            Setting("settings.app_id", app.id, "set-app-id"),
        ],
        "send": [
            Setting("settings.address", f"{send_host}:{config.listen.port}", "set-send-address", hint="settings.send_address_hint"),
            Setting("settings.server_key", app.server_key, "set-server-key", hint="settings.server_key_hint"),
            Setting("settings.secure", "settings.yes" if https else "settings.no", "set-secure", copy=False, hint="settings.secure_hint"),
        ],
        "receive": [
            Setting(
                "settings.address", f"{receive_host}:{config.service.port}", "set-receive-address", hint="settings.receive_address_hint"
            ),
            Setting("settings.client_key", app.client_key.encode(), "set-client-key", hint="settings.client_key_hint"),
        ],
        "other": [
            Setting("settings.api_url", api + "/", "set-api-url", hint="settings.api_url_hint"),
            Setting("settings.ws_url", f"{'wss' if https else 'ws'}://{send_host}:{config.listen.port}/subscribe/ws", "set-ws-url"),
            Setting("settings.sse_url", api + "/subscribe/sse", "set-sse-url"),
        ],
    }


# -- for people ---------------------------------------------------------------------------


def duration(seconds: float, t: Callable[..., str]) -> str:
    """``45 s``, ``12 min``, ``3 h 5 min``, ``2 d 4 h`` in the page's language."""
    s = int(max(0.0, seconds))
    if s < 60:
        return t("unit.s", n=s)
    if s < 3600:
        return t("unit.min", n=s // 60)
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return t("unit.h", n=h) + (" " + t("unit.min", n=m) if m else "")
    d, h = divmod(s // 3600, 24)
    return t("unit.d", n=d) + (" " + t("unit.h", n=h) if h else "")


def moment(ts: float) -> str:
    """A point in time in the server's local time zone."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def preview(payload: bytes, limit: int = 120) -> tuple[str, str]:
    """(topic, title) of a kept message's add-in JSON, shortened; never its body."""
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return "", ""
    if not isinstance(doc, dict):
        return "", ""
    note = doc.get("notification")
    if not isinstance(note, dict):
        note = {}
    topic, title = str(doc.get("topic", "")), str(note.get("title", ""))

    def cut(text: str) -> str:
        return text if len(text) <= limit else text[: limit - 1] + "…"

    return cut(topic), cut(title)


def lines(text: str) -> list[str]:
    """Distinct non-empty lines (user ids typed one a line), stripped, in order."""
    out: dict[str, None] = {}
    for line in text.splitlines():
        value = line.strip()
        if value:
            out[value] = None
    return list(out)


# -- the Online view ----------------------------------------------------------------------


def online_rows(rows: Sequence[OnlineRow], t: Callable[..., str], now: float, here: str) -> list[dict[str, Any]]:
    """
    The rows of the Online view, as both the page (Jinja) and its live refresh
    (JSON, filled into the page's row template by admin.js) show them: plain
    values and texts in the page's language, never markup.  ``first``: the
    first row of its user on this page (it carries "Disconnect the user").
    """
    out: list[dict[str, Any]] = []
    previous: tuple[str, str] | None = None
    for r in rows:
        remote = r.node is not None
        first = (r.ib_id, r.user_id) != previous
        out.append(
            {
                "user": r.user_id,
                "ib": r.ib_id,
                "session": r.session_id,
                "transport": r.transport,
                "peer": r.peer,
                "node": r.node if remote else here,
                "remote": remote,
                "since": "" if remote else moment(r.connected_at),
                "age": "" if remote else duration(now - r.connected_at, t),
                "delivered": None if remote else r.delivered,
                "groups": ", ".join(r.groups),
                "first": first,
                "user_sessions": r.user_sessions,
                # what decides the row's buttons: a row shown already is kept (and its times updated) while this holds
                "sig": f"{int(first)}:{r.user_sessions}",
            }
        )
        previous = (r.ib_id, r.user_id)
    return out
