"""
The panel's first run: a one-time set-up code.

While the store has no administrator, the service makes a random code at
start, writes it to the log (and to ``DATA_DIR/panel-setup-code``, mode 0600,
for whoever reads the data directory's secrets), and the first visit to the
panel must enter it to create the administrator: opening the panel first is no
longer enough to own it.  A restart makes a new code; creating the administrator
(in the panel, or with ``pns4ones-admin panel-password``) removes the file.

The code: 12 characters from an alphabet without look-alikes (0/O, 1/I/L),
shown in groups of four; 60 bits, against a throttled loopback listener.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
LENGTH = 12
FILE_NAME = "panel-setup-code"


def new_code() -> str:
    raw = "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))
    return "-".join(raw[i : i + 4] for i in range(0, LENGTH, 4))


def normalize(text: str) -> str:
    """What a person typed: case, spaces and dashes do not matter."""
    return "".join(c for c in text.upper() if c not in " -\t")


def matches(given: str, code: str) -> bool:
    return hmac.compare_digest(normalize(given).encode("utf-8", "replace"), normalize(code).encode("ascii"))


def write_file(data_dir: Path | str, code: str) -> Path:
    """``DATA_DIR/panel-setup-code`` (mode 0600), replacing an older one."""
    path = Path(data_dir) / FILE_NAME
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, (code + "\n").encode("ascii"))
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def remove_file(data_dir: Path | str) -> None:
    try:
        (Path(data_dir) / FILE_NAME).unlink()
    except FileNotFoundError:
        pass
