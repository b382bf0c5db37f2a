"""
Running the real service for end-to-end tests: ``twistd -n pns4ones`` as a
child process on free loopback ports with a temporary data directory, the admin
CLI as a child process, and helpers to wait for conditions.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
TWISTD = str(BIN / "twistd")
ADMIN = str(BIN / "pns4ones-admin")


#: Listening ports for test servers come from below the kernel's ephemeral range
#: (32768-60999), so that the outgoing connections of the tests, the nodes, Redis
#: and PostgreSQL, which take their local ports from that range, never take one
#: between the moment it was chosen here and the moment a server binds it.
_PORTS = (20000, 32700)
_handed_out: set[int] = set()


def _worker_ports() -> tuple[int, int]:
    """This process's share of :data:`_PORTS`: under pytest-xdist each worker draws from its own slice, so two workers never pick the same port."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 1):
        return _PORTS
    index, total = int(worker[2:]), int(count)
    width = (_PORTS[1] - _PORTS[0] + 1) // total
    low = _PORTS[0] + index * width
    return low, low + width - 1


def free_port() -> int:
    import random

    ports = _worker_ports()
    for _ in range(1000):
        port = random.randint(*ports)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise AssertionError(f"no free loopback port in {ports}")


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def without_id(answer: dict[str, Any]) -> dict[str, Any]:
    """A send's answer without its message id, which must be there (a positive integer: each server numbers from its start time)."""
    rest = dict(answer)
    message_id = rest.pop("id", None)
    if not isinstance(message_id, int) or isinstance(message_id, bool) or message_id <= 0:
        raise AssertionError(f"no message id in the answer {answer!r}")
    return rest


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class ServerProcess:
    """One ``twistd -n pns4ones`` child process."""

    def __init__(self, data_dir: str | None = None, ini: str = "", args: list[str] | None = None, log_level: str = "Information") -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="pns4ones-test-")
        self.dir = Path(self._tmp.name)
        self.data_dir = Path(data_dir) if data_dir else self.dir / "data"
        self.ini = self.dir / "pns4ones.ini"
        self.ini.write_text(ini)
        self.api_port = free_port()
        self.service_port = free_port()
        self.admin_port = free_port()
        self.extra = list(args or [])
        self.log_level = log_level
        self.log_path = self.dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def command(self) -> list[str]:
        return [
            TWISTD, "-n", "--pidfile=", "pns4ones",
            "--config", str(self.ini),
            "--data-dir", str(self.data_dir),
            "--listen", f"127.0.0.1:{self.api_port}",
            "--service", f"127.0.0.1:{self.service_port}",
            "--admin-port", str(self.admin_port),
            "--log_level", self.log_level,
            *self.extra,
        ]  # fmt: skip

    def start(self, wait: bool = True) -> ServerProcess:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, cwd=self.dir)
        if wait:
            wait_for(
                lambda: self.proc.poll() is not None or (port_open(self.api_port) and port_open(self.service_port)),
                20,
                what="the server's ports",
            )
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                wait_for(lambda: "applications in the store" in self.log(), 10, what="the server to load its store")
            except AssertionError as e:  # say what the server was doing
                raise AssertionError(
                    f"{e}; server {'running' if self.proc.poll() is None else f'exited with {self.proc.returncode}'}, its log:\n{self.log()[-3000:]}"
                ) from None
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        code = self.proc.returncode
        self.proc = None
        return code

    def restart(self) -> ServerProcess:
        self.stop()
        return self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([ADMIN, "--data-dir", str(self.data_dir), *args], capture_output=True, text=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"pns4ones-admin {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def create_app(self, title: str = "test") -> dict[str, str]:
        return json.loads(self.admin("create", title, "--json").stdout)

    def cleanup(self) -> None:
        self.stop()
        self._tmp.cleanup()


def http_client(testcase: Any) -> Any:
    """A treq client without persistent connections (trial checks for a clean reactor)."""
    import treq.client
    from twisted.internet import reactor
    from twisted.web.client import Agent, HTTPConnectionPool

    pool = HTTPConnectionPool(reactor, persistent=False)
    testcase.addCleanup(pool.closeCachedConnections)
    return treq.client.HTTPClient(Agent(reactor, pool=pool))


def run_twistd(*args: str, timeout: float = 30, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``twistd`` in the foreground, for start-up refusals and admin commands."""
    return subprocess.run([TWISTD, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
