"""
A throwaway ``redis-server`` for tests: a free loopback port, a temporary
directory, no persistence; killable and restartable on the same port.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
from pathlib import Path

from .support import free_port, port_open, wait_for
from .tools import find, skip_reason

REDIS_SERVER = find("redis-server") or ""
#: Why Redis tests skip (None: they run).
SKIP = skip_reason("redis-server")


class RedisServer:
    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        """``tls``: (certificate chain, key) files: TLS only (``rediss://``)."""
        self._tmp = tempfile.TemporaryDirectory(prefix="pns4ones-redis-")
        self.dir = Path(self._tmp.name)
        self.port = free_port()
        self.tls = tls
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        log = open(self.dir / "redis.log", "ab")
        listen = ["--port", str(self.port)]
        if self.tls:
            listen = [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(self.tls[0]),
                "--tls-key-file",
                str(self.tls[1]),
                "--tls-auth-clients",
                "no",
            ]
        self.proc = subprocess.Popen(
            [REDIS_SERVER, *listen, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
        )  # fmt: skip
        log.close()
        wait_for(lambda: self.proc.poll() is not None or port_open(self.port), 10, what="redis-server")
        if self.proc.poll() is not None:
            raise AssertionError(f"redis-server exited: {(self.dir / 'redis.log').read_text(errors='replace')}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def cleanup(self) -> None:
        self.kill()
        self._tmp.cleanup()
