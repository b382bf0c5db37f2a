"""
The commented default ``pns4ones.ini`` that ``scripts/install`` writes when there
is none: every option of :data:`pns4ones.config.OPTIONS` with its help and its
default, commented out, except the few the installed service sets.
"""

from __future__ import annotations

from collections.abc import Mapping

from .config import OPTIONS, SYSTEM_DATA_DIR

#: What the installed service sets: its data next to the INI (root and the service
#: user find the same store), and a level at which the journal shows registrations
#: and sends.
SERVICE_SETTINGS: Mapping[str, str] = {"data_dir": str(SYSTEM_DATA_DIR), "log_level": "Information"}

HEADER = """\
; pns4ones configuration: `key = value` lines, no sections; `;` or `#` starts a comment.
; Every key is also a command-line option (twistd -n pns4ones -h lists them).
; After a change: systemctl restart pns4ones
; This directory is readable by the service user and root only: it holds the store
; (applications, keys, tokens) and may hold TLS certificates and their keys.
"""


def default_ini(settings: Mapping[str, str] = SERVICE_SETTINGS) -> str:
    """The text of a commented INI with ``settings`` set and every other option at its default."""
    parts = [HEADER]
    for opt in OPTIONS:
        if opt.name == "config":
            continue
        parts.append(f"\n; {opt.help}\n")
        if opt.name in settings:
            parts.append(f"{opt.name} = {settings[opt.name]}\n")
        else:
            parts.append(f"; {opt.name} = {opt.default}".rstrip() + "\n")
    return "".join(parts)


def main() -> None:
    import sys

    sys.stdout.write(default_ini())


if __name__ == "__main__":
    main()
