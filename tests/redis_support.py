"""
A throwaway ``redis-server`` for tests: a free loopback port, a temporary
directory, no persistence; killable and restartable on the same port.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from .support import free_port, port_open, wait_for

REDIS_SERVER = shutil.which("redis-server") or (shutil.which("redis-server", path="/usr/sbin:/usr/bin:/sbin") or "")
#: Why Redis tests skip (None: they run).
SKIP = None if REDIS_SERVER else "redis-server is not installed (Debian: apt-get install redis-server; .ci/run installs it)"


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


class CuttableProxy:
    """
    A TCP relay on loopback in front of a server, for cutting one client off
    while others keep their own connections: :meth:`cut` closes every relayed
    connection and refuses new ones until :meth:`restore`.
    """

    def __init__(self, target_port: int) -> None:
        import selectors
        import socket
        import threading

        self.target_port = target_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._peers: dict[socket.socket, socket.socket] = {}
        self._commands: list[str] = []
        self._lock = threading.Lock()
        self.open = True
        self._running = True
        self._thread = threading.Thread(target=self._run, name="cuttable-proxy", daemon=True)
        self._thread.start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def _command(self, command: str) -> None:
        with self._lock:
            self._commands.append(command)
        self._wake_w.send(b"x")

    def cut(self) -> None:
        """Close every relayed connection now; refuse new ones."""
        self._command("cut")

    def restore(self) -> None:
        """Relay new connections again."""
        self._command("restore")

    def close(self) -> None:
        self._command("stop")
        self._thread.join(5)

    def _drop(self, sock: object) -> None:
        import socket

        assert isinstance(sock, socket.socket)
        other = self._peers.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self._peers.pop(s, None)
            try:
                self._selector.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()

    def _run(self) -> None:
        import selectors
        import socket

        while self._running:
            for key, _ in self._selector.select(0.5):
                sock = key.fileobj
                if key.data == "wake":
                    self._wake_r.recv(4096)
                    with self._lock:
                        commands, self._commands = self._commands, []
                    for command in commands:
                        if command == "cut":
                            self.open = False
                            for s in list(self._peers):
                                self._drop(s)
                        elif command == "restore":
                            self.open = True
                        elif command == "stop":
                            self._running = False
                            for s in list(self._peers):
                                self._drop(s)
                    continue
                if sock is self._listener:
                    try:
                        client, _ = self._listener.accept()
                    except BlockingIOError:
                        continue
                    if not self.open:
                        client.close()
                        continue
                    try:
                        upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                    except OSError:
                        client.close()
                        continue
                    for s in (client, upstream):
                        s.setblocking(False)
                    self._peers[client], self._peers[upstream] = upstream, client
                    self._selector.register(client, selectors.EVENT_READ, "peer")
                    self._selector.register(upstream, selectors.EVENT_READ, "peer")
                    continue
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                other = self._peers.get(sock)
                if not data or other is None:
                    self._drop(sock)
                    continue
                try:
                    other.setblocking(True)
                    other.sendall(data)
                    other.setblocking(False)
                except OSError:
                    self._drop(sock)
        self._selector.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
