"""
The commented default ``pns4ones.ini`` that ``scripts/install`` writes when there
is none: every option of :data:`pns4ones.config.OPTIONS` with its help and its
default, commented out, except the few the installed service sets.  The comments
are in Russian when the installing administrator's locale is (see
:mod:`pns4ones.catalog`), in English otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

from .catalog import translator
from .config import OPTIONS, SYSTEM_DATA_DIR

#: What the installed service sets: its data directory (root and the service user
#: find the same store), and a level at which the journal shows registrations and sends.
SERVICE_SETTINGS: Mapping[str, str] = {"data_dir": str(SYSTEM_DATA_DIR), "log_level": "Information"}

HEADER = """\
; pns4ones configuration: `key = value` lines, no sections; `;` or `#` starts a comment.
; Every key is also a command-line option (twistd -n pns4ones -h lists them).
; After a change: systemctl reload pns4ones (or pns4ones-admin restart). A new process
; takes over every connection and the 1C desktops stay connected. Do not use
; systemctl restart or stop for that: they disconnect every 1C desktop, and the
; stock 1C extension does not reconnect (each user has to restart 1C).
; This directory holds the configuration, readable by the service user and root
; only (it may hold TLS certificates and their keys). The data (the store with the
; applications, keys and tokens) is in data_dir, /var/lib/pns4ones.
"""


def default_ini(settings: Mapping[str, str] = SERVICE_SETTINGS, lang: str | None = None, seen: set[str] | None = None) -> str:
    """The text of a commented INI with ``settings`` set and every other option at its default, comments in ``lang`` (default: the locale's)."""
    _ = translator(lang, seen)
    parts = [_(HEADER)]
    for opt in OPTIONS:
        if opt.name == "config":
            continue
        parts.append(f"\n; {_(opt.help)}\n")
        if opt.name in settings:
            parts.append(f"{opt.name} = {settings[opt.name]}\n")
        else:
            parts.append(f"; {opt.name} = {opt.default}".rstrip() + "\n")
    return "".join(parts)


def main() -> None:
    import sys

    sys.stdout.buffer.write(default_ini().encode("utf-8"))  # UTF-8 whatever the locale's encoding: the INI is read as UTF-8


if __name__ == "__main__":
    main()
