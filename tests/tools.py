"""
The programs outside Python that some tests drive, the Debian package of each,
and the one way a test asks for them: :func:`require` raises ``SkipTest`` naming
what is missing and the command that installs it, so a machine without them
skips those tests instead of failing them.

Standard library only: ``scripts/test`` runs it with any ``python3``, before the
virtual environment exists::

    python3 tests/tools.py missing    # the missing Debian packages, on one line
    python3 tests/tools.py servers    # those of them that start a service when installed
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import unittest
from collections.abc import Callable
from dataclasses import dataclass

#: Where Debian keeps programs that are not on an ordinary user's PATH.
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
#: What a skip message tells the reader to run.
HOW = "apt-get install -y {packages} (or run scripts/test as root, which installs them)"


def which(program: str) -> str | None:
    """``program`` on PATH, else in the sbin directories."""
    return shutil.which(program) or shutil.which(program, path=SBIN)


def postgres_bindir() -> str | None:
    """The newest Debian PostgreSQL's bin directory (initdb, pg_ctl), else the one on PATH."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]) if p.split("/")[-2].isdigit() else 0, reverse=True
    )
    for candidate in candidates:
        if os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(initdb)
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=30).stdout.strip()
        if out and os.path.exists(os.path.join(out, "initdb")):
            return out
    return None


def _php_curl() -> str | None:
    php = shutil.which("php")
    if php is None:
        return None
    modules = subprocess.run([php, "-m"], capture_output=True, text=True, timeout=30).stdout.split()
    return php if "curl" in modules else None


def _system_venv() -> str | None:
    """Debian's /usr/bin/python3 with venv and ensurepip (what scripts/install builds the service's environment with)."""
    python = "/usr/bin/python3"
    if not os.path.exists(python):
        return None
    ok = subprocess.run([python, "-c", "import ensurepip, venv"], capture_output=True, timeout=30).returncode == 0
    return python if ok else None


def _python_headers() -> str | None:
    """Python.h of this interpreter (what compiling the send path needs, with a C compiler: setup.py)."""
    header = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    return header if os.path.exists(header) else None


@dataclass(frozen=True)
class Tool:
    """A program some tests need, found by ``find`` (a path, or None when missing), installed by ``package``."""

    name: str
    package: str
    find: Callable[[], str | None]
    #: The package starts a system service when installed (scripts/test installs it with the start forbidden).
    server: bool = False


TOOLS = {
    t.name: t
    for t in (
        Tool("chromium", "chromium", lambda: which("chromium")),
        Tool("chromedriver", "chromium-driver", lambda: which("chromedriver")),
        Tool("php", "php-cli", lambda: which("php")),
        Tool("php-curl", "php-curl", _php_curl),
        Tool("jq", "jq", lambda: which("jq")),
        Tool("curl", "curl", lambda: which("curl")),
        Tool("ss", "iproute2", lambda: which("ss")),
        Tool("systemd-analyze", "systemd", lambda: which("systemd-analyze")),
        Tool("python3-venv", "python3-venv", _system_venv),
        Tool("setpriv", "util-linux", lambda: which("setpriv")),
        Tool("useradd", "passwd", lambda: which("useradd")),
        Tool("promtool", "prometheus", lambda: which("promtool"), server=True),
        Tool("redis-server", "redis-server", lambda: which("redis-server"), server=True),
        Tool("postgresql", "postgresql", postgres_bindir, server=True),
        Tool("haproxy", "haproxy", lambda: which("haproxy"), server=True),
        Tool("gcc", "gcc", lambda: which("gcc") or which("cc")),
        Tool("python3-dev", "python3-dev", _python_headers),
        Tool("valgrind", "valgrind", lambda: which("valgrind")),
    )
}


@functools.cache
def find(name: str) -> str | None:
    """Where the tool ``name`` is (a path), or None."""
    return TOOLS[name].find()


def missing(*names: str) -> list[Tool]:
    """Those of ``names`` (default: every tool) that are not installed."""
    return [TOOLS[n] for n in (names or tuple(TOOLS)) if find(n) is None]


def install_hint(tools: list[Tool]) -> str:
    return HOW.format(packages=" ".join(dict.fromkeys(t.package for t in tools)))


def skip_reason(*names: str) -> str | None:
    """Why a test that needs ``names`` cannot run here (None: it can)."""
    absent = missing(*names)
    if not absent:
        return None
    return f"needs {', '.join(t.name for t in absent)}, not installed: {install_hint(absent)}"


def require(*names: str) -> None:
    """Skip the calling test (or class, from ``setUpClass``) unless every tool of ``names`` is installed."""
    reason = skip_reason(*names)
    if reason is not None:
        raise unittest.SkipTest(reason)


def need(name: str) -> str:
    """The path of the tool ``name``; skips the calling test when it is missing."""
    require(name)
    path = find(name)
    assert path is not None
    return path


def main(argv: list[str]) -> int:
    absent = missing()
    if argv == ["missing"]:
        print(" ".join(dict.fromkeys(t.package for t in absent)))
    elif argv == ["servers"]:
        print(" ".join(dict.fromkeys(t.package for t in absent if t.server)))
    else:
        print("usage: tools.py missing|servers", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
