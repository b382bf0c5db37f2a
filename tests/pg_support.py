"""
A throwaway PostgreSQL for tests: ``initdb`` + ``pg_ctl`` in a temporary
directory, on a free loopback port, its socket in that directory, ``fsync``
off.  As root (CI) the server runs as Debian's ``postgres`` system user (the
server refuses root).  TCP connections need the password (scram-sha-256), so
the tests exercise the password sources too.

``PgCluster.find_bindir()`` is None when no PostgreSQL is installed: the
tests skip with that reason.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
import uuid
from pathlib import Path

from .support import free_port, port_open, wait_for
from .tools import postgres_bindir, skip_reason

USER = "pns"
PASSWORD = "s3cret-Pg-pw"
SKIP_REASON = skip_reason("postgresql") or ""


def find_bindir() -> str | None:
    return postgres_bindir()


class PgCluster:
    """One PostgreSQL server; :meth:`new_database` gives each test its own database."""

    def __init__(self) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError(SKIP_REASON)
        self.bindir = bindir
        self._tmp = tempfile.TemporaryDirectory(prefix="pns4ones-pg-")
        self.dir = Path(self._tmp.name)
        self.data = self.dir / "data"
        self.port = free_port()
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.run_as = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        self._pg(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        pwfile.unlink()
        self.start()

    def _pg(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.run_as, os.path.join(self.bindir, tool), *args], capture_output=True, text=True, timeout=timeout, cwd=self.dir
        )
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr}{result.stdout}")
        return result

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-o", options, "-w", "-t", "30", "start")
        wait_for(lambda: port_open(self.port), 10, what="PostgreSQL's port")

    def stop(self) -> None:
        self._pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres", password: bool = True) -> str:
        secret = f":{PASSWORD}" if password else ""
        return f"postgresql://{USER}{secret}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL over the local socket (trust): setup and inspection."""
        return self._pg(
            "psql",
            "-h",
            str(self.dir),
            "-p",
            str(self.port),
            "-U",
            USER,
            "-d",
            database,
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ).stdout

    def new_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name}")
        return name

    def cleanup(self) -> None:
        try:
            self.stop()
        except (RuntimeError, subprocess.TimeoutExpired):
            pass
        self._tmp.cleanup()
