"""
Talking to the running server from the admin CLI: the server records its PID in
``DATA_DIR/pns4ones.pid`` while it runs and the outcome of each certificate
reload in ``DATA_DIR/tls-reload.json``; ``pns4ones-admin reload_tls`` sends the
server SIGHUP and waits for that outcome.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from pathlib import Path

from .jsondoc import JSONObject

PID_FILE = "pns4ones.pid"
RELOAD_FILE = "tls-reload.json"


class ControlError(Exception):
    """No server to talk to, or it did not answer: a message for the operator."""


def atomic_write(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` at once: a reader sees the old file or the new one, never half of it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_pid(data_dir: Path, pid: int | None = None) -> Path:
    path = Path(data_dir) / PID_FILE
    atomic_write(path, f"{pid or os.getpid()}\n")
    return path


def remove_pid(data_dir: Path, pid: int | None = None) -> None:
    """Remove the PID file if it is ours (a second server may have replaced it)."""
    path = Path(data_dir) / PID_FILE
    try:
        if path.read_text().strip() == str(pid or os.getpid()):
            path.unlink()
    except (FileNotFoundError, ValueError):
        pass


def _is_pns4ones(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's: the signal will say
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc: trust the PID file
    return b"pns4ones" in cmdline


def running_pid(data_dir: Path) -> int:
    path = Path(data_dir) / PID_FILE
    try:
        pid = int(path.read_text().strip())
    except FileNotFoundError:
        raise ControlError(f"no pns4ones server runs with data directory {data_dir} (no {path})") from None
    except (ValueError, OSError) as e:
        raise ControlError(f"cannot read {path}: {e}") from None
    if pid <= 0 or not _is_pns4ones(pid):
        raise ControlError(f"no pns4ones server runs with data directory {data_dir} ({path} names process {pid}, which is not running)")
    return pid


def write_reload_status(data_dir: Path, ok: bool, message: str, trigger: str) -> None:
    doc = {"pid": os.getpid(), "time": time.time(), "ok": ok, "message": message, "trigger": trigger}
    atomic_write(Path(data_dir) / RELOAD_FILE, json.dumps(doc, ensure_ascii=False) + "\n")


def read_reload_status(data_dir: Path) -> JSONObject | None:
    try:
        return json.loads((Path(data_dir) / RELOAD_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None


def request_reload(data_dir: Path, timeout: float = 10.0) -> JSONObject:
    """SIGHUP the running server and return its reload outcome (``ok``, ``message``)."""
    pid = running_pid(data_dir)
    before = read_reload_status(data_dir)
    try:
        os.kill(pid, signal.SIGHUP)
    except PermissionError:
        raise ControlError(f"not allowed to signal the server (pid {pid}): run this as its user") from None
    except ProcessLookupError:
        raise ControlError(f"the server (pid {pid}) has just stopped") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_reload_status(data_dir)
        if status is not None and status != before and status.get("pid") == pid:
            return status
        time.sleep(0.05)
    raise ControlError(f"sent SIGHUP to the server (pid {pid}) but it reported no reload within {timeout:g} s; see its log")
