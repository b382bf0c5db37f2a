"""
Restart without disconnecting: hand the listening sockets and every live add-in
subscription over to a new server process (``pns4ones-admin restart``, SIGUSR2,
``systemctl reload``).

The old process listens on ``DATA_DIR/handoff.sock`` (a ``SOCK_SEQPACKET`` Unix
socket, mode 0600) and starts the same command line again with
``PNS4ONES_HANDOFF`` naming that socket.  Packets are ``J`` + JSON (with file
descriptors as ``SCM_RIGHTS``) or ``B`` + raw bytes (pending output):

    new -> old   hello {handoff, version, pid}
    old -> new   listeners {handoff, version, listeners:[{option, address, family}]} + fds
    new -> old   ready           (registry loaded; listeners adopted but not accepting)
    ... old stops accepting, finishes HTTP requests in progress, takes every
        subscription off its hub and out of the reactor ...
    old -> new   sessions {sessions:[{family, app, ib, user, group, key, pending, inbound}]} + fds, B ...
    old -> new   end {count}
    new -> old   adopted {count}   (descriptors received; nothing written yet)
    old -> new   commit            (the old process never touches them again)
    new -> old   serving {pid}     (subscriptions live, listeners accepting)

Invariants:
* Before ``commit`` the new process neither reads from nor writes to a handed-over
  socket, and fails with ``os._exit`` (no ``shutdown()`` of shared sockets): the
  old process can take everything back, whatever goes wrong.
* Pending bytes are the old transport's unsent buffer, taken whole and written
  first by the new process: the byte stream each subscriber sees is unchanged, so
  a frame is never cut or repeated.
* Sessions that cannot move (WebSocket, SSE: their state lives in this process)
  get ``going_away(reason)`` (or ``end(reason)``) before the handover.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol, task
from twisted.logger import Logger

from . import __version__, control, logs

HANDOFF_PROTOCOL = 1
SUPPORTED_PROTOCOLS = frozenset({1})
ENV = "PNS4ONES_HANDOFF"
SOCKET_NAME = "handoff.sock"
STATUS_FILE = "restart.json"
MAX_FDS = 250  # per packet (SCM_MAX_FD is 253)
BLOB = 60000
START_TIMEOUT = 60.0  # the new process: start, load the registry
STEP_TIMEOUT = 30.0
HTTP_GRACE = 0.05  # see Restart._quiet

log = Logger(namespace="pns4ones.handoff")


class HandoffError(Exception):
    """The handoff cannot go on: a message for the operator."""


def key_id(key: Any) -> str:
    """Which client key a session registered with (no secret in it)."""
    return hashlib.sha256(b"pns4ones-key-id" + key.key + key.iv).hexdigest()[:32]


def _advertised_protocol() -> int:
    # Tests pretend to be an incompatible older release with this variable.
    return int(os.environ.get("PNS4ONES_TEST_HANDOFF_PROTOCOL", HANDOFF_PROTOCOL))


# -- packets -------------------------------------------------------------------------------


def _send(sock: socket.socket, doc: dict[str, Any], fds: list[int] | tuple[int, ...] = ()) -> None:
    data = b"J" + json.dumps(doc, separators=(",", ":")).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


def _recv(sock: socket.socket) -> tuple[str, Any, list[int]]:
    """One packet: ("J", doc, fds) or ("B", bytes, [])."""
    data, fds, flags, _ = socket.recv_fds(sock, 1 << 20, MAX_FDS + 8)
    for fd in fds:
        os.set_inheritable(fd, False)
    if flags & getattr(socket, "MSG_CTRUNC", 0):
        raise HandoffError("descriptors were lost in transit (MSG_CTRUNC)")
    if not data:
        raise HandoffError("the other process closed the handoff socket")
    if data[:1] == b"B":
        return "B", data[1:], fds
    try:
        return "J", json.loads(data[1:]), fds
    except ValueError:
        raise HandoffError("garbled handoff packet") from None


def _expect(sock: socket.socket, kind: str) -> tuple[dict[str, Any], list[int]]:
    tag, doc, fds = _recv(sock)
    if tag != "J" or not isinstance(doc, dict):
        raise HandoffError(f"expected {kind!r}, got raw bytes")
    if doc.get("type") in ("refuse", "error"):
        raise HandoffError(str(doc.get("reason", "refused")))
    if doc.get("type") != kind:
        raise HandoffError(f"expected {kind!r}, got {doc.get('type')!r}")
    return doc, fds


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about us; nothing when not under systemd."""
    where = os.environ.get("NOTIFY_SOCKET")
    if not where:
        return
    if where.startswith("@"):
        where = "\0" + where[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(where)
            s.sendall(state.encode())
    except OSError as e:
        log.warn("cannot notify systemd ({state}): {error}", state=state.replace("\n", " "), error=str(e))


# -- the new process ----------------------------------------------------------------------------


def die() -> None:
    """Exit at once, closing handed-over sockets without shutdown(): the old process still serves them."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: S110 (exiting anyway: nothing to report to)
            pass
    os._exit(1)


class Incoming:
    """The new process's side: adopt what the old process hands over."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.settimeout(STEP_TIMEOUT)
        try:
            self.sock.connect(path)
        except OSError as e:
            raise HandoffError(f"cannot reach the old process at {path}: {e}") from None
        self.listeners: dict[str, list[tuple[dict[str, Any], int]]] = {}
        self.old_pid = 0

    def receive_listeners(self) -> None:
        _send(self.sock, {"type": "hello", "handoff": HANDOFF_PROTOCOL, "version": __version__, "pid": os.getpid()})
        doc, fds = _expect(self.sock, "listeners")
        theirs = doc.get("handoff")
        if theirs not in SUPPORTED_PROTOCOLS:
            for fd in fds:
                os.close(fd)
            raise self.refuse(
                f"pns4ones {__version__} (handoff protocol {HANDOFF_PROTOCOL}) cannot take over from pns4ones {doc.get('version')} "
                f"(handoff protocol {theirs}); the old process keeps serving. This upgrade needs a full restart (systemctl restart pns4ones), "
                "which disconnects every 1C desktop: the stock 1C extension does not reconnect, each user restarts 1C"
            )
        self.old_pid = int(doc.get("pid", 0))
        if len(fds) != len(doc["listeners"]):
            raise HandoffError("listener descriptors missing")
        for spec, fd in zip(doc["listeners"], fds):
            self.listeners.setdefault(spec["option"], []).append((spec, fd))

    def take(self, option: str, address_text: str) -> list[tuple[int, int]]:
        """
        (fd, family) of the handed-over listeners of ``option``; none when the old
        process had no such listener (a release that adds one: bind it afresh);
        refuse when the address changed.
        """
        handed = self.listeners.pop(option, [])
        if not handed:
            return []
        old_text = handed[0][0]["address"]
        if old_text != address_text:
            for _, fd in handed:
                os.close(fd)
            raise self.refuse(
                f"option '{option}' changed from {old_text} to {address_text}: listeners cannot move in a handoff; the old process keeps serving. Moving them needs systemctl restart pns4ones, "
                "which disconnects every 1C desktop (the stock 1C extension does not reconnect: each user restarts 1C)"
            )
        return [(fd, spec["family"]) for spec, fd in handed]

    def refuse(self, reason: str) -> HandoffError:
        try:
            _send(self.sock, {"type": "refuse", "reason": reason})
        except OSError:
            pass
        return HandoffError(reason)

    def receive_sessions(self) -> list[tuple[dict[str, Any], int, bytes]]:
        """Everything the old process hands over; blocking (we serve nothing yet)."""
        for _, handed in self.listeners.items():  # listeners this configuration no longer has
            for _, fd in handed:
                os.close(fd)
        self.listeners = {}
        _send(self.sock, {"type": "ready"})
        self.sock.settimeout(START_TIMEOUT)  # the old process drains HTTP requests first
        out: list[tuple[dict[str, Any], int, bytes]] = []
        while True:
            tag, doc, fds = _recv(self.sock)
            self.sock.settimeout(STEP_TIMEOUT)
            if tag != "J":
                raise HandoffError("unexpected raw bytes")
            if doc.get("type") == "end":
                break
            if doc.get("type") != "sessions" or len(fds) != len(doc["sessions"]):
                raise HandoffError(f"bad sessions packet ({doc.get('type')}, {len(fds)} descriptors)")
            blob = b""
            need = sum(int(s["pending"]) for s in doc["sessions"])
            while len(blob) < need:
                tag, chunk, _ = _recv(self.sock)
                if tag != "B":
                    raise HandoffError("pending bytes missing")
                blob += chunk
            at = 0
            for meta, fd in zip(doc["sessions"], fds):
                n = int(meta["pending"])
                out.append((meta, fd, blob[at : at + n]))
                at += n
        if os.environ.get("PNS4ONES_TEST_HANDOFF_CRASH"):  # tests: die holding every descriptor, before confirming
            os._exit(3)
        if doc.get("count") != len(out):
            raise HandoffError(f"expected {doc.get('count')} subscriptions, received {len(out)}")
        _send(self.sock, {"type": "adopted", "count": len(out)})
        _expect(self.sock, "commit")
        return out

    def serving(self, count: int) -> None:
        try:
            _send(self.sock, {"type": "serving", "pid": os.getpid(), "count": count})
        except OSError:
            pass
        self.sock.close()


def adopt_sessions(service: Any, incoming: Incoming) -> int:
    """Receive, commit, then bring every handed-over subscription to life."""
    handed = incoming.receive_sessions()
    reactor, factory, core = service.reactor, service.addin_factory, service.core
    ended = 0
    factory.adopting = True
    try:
        for meta, fd, pending in handed:
            try:
                transport = reactor.adoptStreamConnection(fd, meta["family"], factory)
            except OSError:
                transport = None  # the peer went away meanwhile
            finally:
                os.close(fd)
            if transport is None:
                continue
            if not _restore(transport.protocol, meta, pending, core, factory):
                ended += 1
    finally:
        factory.adopting = False
    if ended:
        log.info("{count} handed-over subscriptions ended: their application was removed or its client key changed", count=ended)
    return len(handed)


def _restore(proto: Any, meta: dict[str, Any], pending: bytes, core: Any, factory: Any) -> bool:
    if pending:
        proto.transport.write(pending)
    proto.peer = meta.get("peer", proto.peer)
    if meta.get("key"):
        proto.app_id, proto.ib_id, proto.user_id, proto.group = meta["app"], meta["ib"], meta["user"], meta["group"]
        app = core.apps.get(proto.app_id)
        if app is None or key_id(app.client_key) != meta["key"]:
            proto.end("application removed or client key changed")
            return False
        proto.keys = app.client_key
        core.hub.attach(proto)
    else:  # still registering: give it the usual time again
        proto._timer = factory.clock.callLater(factory.config.registration_timeout, proto._registration_timed_out)
        inbound = base64.b64decode(meta.get("inbound", ""))
        if inbound:
            proto.dataReceived(inbound)
    return True


# -- the old process ----------------------------------------------------------------------------


class _Child(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.exit_code: int | None = None
        self.pid = 0

    def connectionMade(self) -> None:
        self.pid = self.transport.pid

    def processEnded(self, reason: Any) -> None:
        value = reason.value
        self.exit_code = getattr(value, "exitCode", None)
        if self.exit_code is None:
            self.exit_code = -(getattr(value, "signal", 0) or 1)


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!" and os.access(path, os.X_OK)
    except OSError:
        return False


def child_argv() -> list[str]:
    """
    The command line of this process again, with twistd's own PID file off.
    ``twistd`` is run as the script it was started as (``/opt/pns4ones/venv/bin/twistd``),
    so its ``#!`` line picks the interpreter, and the code, that are on disk now
    (an upgrade points ``venv`` at a new release).
    """
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    out = [] if len(argv) > 1 and _is_script(argv[1]) else [sys.executable]
    skip = False
    for arg in argv[1:]:
        if skip:
            skip = False
            continue
        if arg in ("--pidfile",):
            skip = True
            continue
        if arg.startswith("--pidfile="):
            continue
        out.append(arg)
    # twistd's options come before the plugin name: keep --pidfile= there.
    for i, arg in enumerate(out):
        if arg == "pns4ones":
            out.insert(i, "--pidfile=")
            break
    return out


class Restart:
    """The old process's side of one handoff."""

    def __init__(self, service: Any, trigger: str) -> None:
        self.service = service
        self.trigger = trigger
        self.reactor = service.reactor
        self.path = Path(service.config.data_dir) / SOCKET_NAME
        self.lsock: socket.socket | None = None
        self.conn: socket.socket | None = None
        self.child = _Child()
        self.paused = False
        self.taken: list[tuple[Any, bytes]] = []
        self.committed = False

    @defer.inlineCallbacks
    def run(self) -> Any:
        always = {logs.ALWAYS: True}
        started = time.monotonic()
        log.info(
            "{trigger}: restarting with the code and configuration on disk; handing over {count} subscriptions",
            trigger=self.trigger,
            count=len(self.service.addin_factory.connections),
            **always,
        )
        try:
            yield self._handoff()
        except Exception as e:
            reason = str(e) if isinstance(e, HandoffError) else f"unexpected error: {e!r}"
            if not isinstance(e, HandoffError):
                log.failure("restart failed unexpectedly")
            if "exited with code" not in reason and self.child.pid:
                for _ in range(100):  # did it die? say so (its own messages are in the log)
                    if self.child.exit_code is not None:
                        reason = f"the new process exited with code {self.child.exit_code} during the handoff ({reason}); see its messages in the log"
                        break
                    yield task.deferLater(self.reactor, 0.02, lambda: None)
            self._rollback()
            message = f"restart failed, this process (pid {os.getpid()}) keeps serving every connection: {reason}"
            log.error("{trigger}: {message}", trigger=self.trigger, message=message)
            self._status(False, message, 0)
            return False
        finally:
            self._close()
        pause = time.monotonic() - self.pause_started
        t = self.times
        message = f"restarted: pid {os.getpid()} -> {self.child.pid}; {len(self.taken)} subscriptions handed over; delivery paused {pause * 1000:.0f} ms (HTTP requests in progress {1000 * (t[0] - self.pause_started):.0f}, sending {1000 * (t[1] - t[0]):.0f}, receiving {1000 * (t[2] - t[1]):.0f}, adopting {1000 * (t[3] - t[2]):.0f}); took {time.monotonic() - started:.1f} s"
        log.info("{trigger}: {message}", trigger=self.trigger, message=message, **always)
        self._status(True, message, self.child.pid)
        self.service.handed_over = True
        self.reactor.stop()
        return True

    def _status(self, ok: bool, message: str, new_pid: int) -> None:
        doc = {"pid": os.getpid(), "new_pid": new_pid, "time": time.time(), "ok": ok, "message": message, "trigger": self.trigger}
        try:
            control._atomic_write(Path(self.service.config.data_dir) / STATUS_FILE, json.dumps(doc, ensure_ascii=False) + "\n")
        except OSError as e:
            log.warn("cannot record the restart outcome: {error}", error=str(e))

    @defer.inlineCallbacks
    def _wait(self, what: str, ready: Any, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = ready()
            if value is not None:
                return value
            if self.child.exit_code is not None:
                raise HandoffError(f"the new process exited with code {self.child.exit_code} before {what}; see its messages in the log")
            if time.monotonic() > deadline:
                raise HandoffError(f"the new process did not {what} within {timeout:g} s")
            yield task.deferLater(self.reactor, 0.01, lambda: None)

    def _accept(self) -> Any:
        try:
            conn, _ = self.lsock.accept()
        except BlockingIOError:
            return None
        return conn

    def _poll(self) -> Any:
        try:
            return _recv(self.conn)
        except BlockingIOError:
            return None

    @defer.inlineCallbacks
    def _handoff(self) -> Any:
        svc = self.service
        argv = child_argv()
        twistd_options = argv[: argv.index("pns4ones")] if "pns4ones" in argv else argv
        if not any(a == "--nodaemon" or (a.startswith("-") and not a.startswith("--") and "n" in a[1:]) for a in twistd_options[1:]):
            raise HandoffError("restart needs the server to run in the foreground (twistd -n), as the systemd unit does")
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        old_umask = os.umask(0o177)
        try:
            self.lsock.bind(str(self.path))
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        self.lsock.listen(1)
        self.lsock.setblocking(False)
        env = {**os.environ, ENV: str(self.path)}
        env.pop("PNS4ONES_TEST_HANDOFF_PROTOCOL", None)
        svc.site.closing = True  # responses from now on say Connection: close
        self.reactor.spawnProcess(self.child, argv[0], argv, env=env, path=os.getcwd(), childFDs={0: 0, 1: 1, 2: 2})
        log.info("started the new process {pid}: {argv}", pid=self.child.pid, argv=" ".join(argv))
        self.conn = yield self._wait("connecting to the handoff socket", self._accept, START_TIMEOUT)
        self.conn.setblocking(False)
        tag, hello, _ = yield self._wait("saying hello", self._poll, STEP_TIMEOUT)
        if tag != "J" or hello.get("type") != "hello":
            raise HandoffError("the new process did not say hello")
        listeners, fds = [], []
        for port in svc.ports:
            option = svc.port_options.get(port)
            if option is None:
                continue
            address = getattr(svc.config, option)
            listeners.append({"option": option, "address": getattr(address, "text", str(address)), "family": int(port.socket.family)})
            fds.append(port.fileno())
        self.conn.setblocking(True)
        _send(
            self.conn,
            {"type": "listeners", "handoff": _advertised_protocol(), "version": __version__, "pid": os.getpid(), "listeners": listeners},
            fds,
        )
        self.conn.setblocking(False)
        tag, doc, _ = yield self._wait("loading its configuration and store", self._poll, START_TIMEOUT)
        if tag != "J" or doc.get("type") != "ready":
            raise HandoffError(str(doc.get("reason", f"unexpected {doc!r}")) if tag == "J" else "unexpected bytes")
        # The pause: stop accepting (the new process holds the same listening
        # sockets), let requests in progress deliver here, then move everything.
        self.pause_started = time.monotonic()
        self.paused = True
        for port in svc.ports:
            port.stopReading()
        for channel in list(svc.site.channels):  # requests in progress: answered here, then the connection closes
            for request in channel.requests:
                if not request.startedWriting:
                    request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            if channel.requests:  # (on an idle channel this would drop the next request unanswered)
                channel.persistent = False
        yield self._quiet(svc.site)
        yield svc.site.drain(self.reactor, timeout=5.0)
        self.times = [time.monotonic()]
        self._say_going_away()
        self._take_sessions()
        self.conn.setblocking(True)
        self.conn.settimeout(STEP_TIMEOUT)
        try:
            self._send_sessions()
            self.times.append(time.monotonic())
            _expect(self.conn, "adopted")
            self.times.append(time.monotonic())
            self.committed = True
            self._commit()
            _send(self.conn, {"type": "commit"})
            self.conn.settimeout(STEP_TIMEOUT + len(self.taken) / 2000)
            _expect(self.conn, "serving")
            self.times.append(time.monotonic())
        except (TimeoutError, OSError) as e:
            raise HandoffError(f"handoff socket: {e}") from None

    @defer.inlineCallbacks
    def _quiet(self, site: Any) -> Any:
        """
        Serve requests in progress, and those arriving on open connections for
        ``HTTP_GRACE`` seconds more (a sender that has just connected, or sent
        while we stopped accepting), each answered with Connection: close; then
        the remaining idle connections are closed.
        """
        deadline = time.monotonic() + 5.0
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if any(ch.requests for ch in list(site.channels)):
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= HTTP_GRACE:
                return
            yield task.deferLater(self.reactor, 0.005, lambda: None)

    def _say_going_away(self) -> None:
        from .transports.addin import AddinProtocol

        for session in list(self.service.core.hub.sessions()):
            if not isinstance(session, AddinProtocol):
                going_away = getattr(session, "going_away", None) or session.end
                going_away("server restarting")

    def _take_sessions(self) -> None:
        factory, hub = self.service.addin_factory, self.service.core.hub
        for proto in list(factory.connections):
            t = proto.transport
            if proto._ended or t is None or t.disconnecting or not t.connected:
                continue
            t.stopReading()
            t.stopWriting()
            pending = t.dataBuffer[t.offset :] + b"".join(t._tempDataBuffer)
            t.dataBuffer, t.offset, t._tempDataBuffer, t._tempDataLen = b"", 0, [], 0
            if proto.keys is not None:
                hub.detach(proto)
            self.taken.append((proto, bytes(pending)))

    def _send_sessions(self) -> None:
        for start in range(0, len(self.taken), MAX_FDS):
            batch = self.taken[start : start + MAX_FDS]
            metas, blob = [], []
            for proto, pending in batch:
                meta = {"family": int(proto.transport.socket.family), "peer": proto.peer, "pending": len(pending)}
                if proto.keys is not None:
                    meta.update(app=proto.app_id, ib=proto.ib_id, user=proto.user_id, group=proto.group, key=key_id(proto.keys))
                else:
                    meta["inbound"] = base64.b64encode(proto._unprocessed[proto._compatibilityOffset :]).decode()
                metas.append(meta)
                blob.append(pending)
            _send(self.conn, {"type": "sessions", "sessions": metas}, [p.transport.fileno() for p, _ in batch])
            data = b"".join(blob)
            for at in range(0, len(data), BLOB):
                self.conn.sendall(b"B" + data[at : at + BLOB])
        _send(self.conn, {"type": "end", "count": len(self.taken)})

    def _commit(self) -> None:
        """From here on this process never touches the handed-over sockets (no shutdown() at exit)."""
        svc = self.service
        for port in svc.ports:
            port._shouldShutdown = False
        for proto, _ in self.taken:
            proto._ended = True
            proto.transport._shouldShutdown = False
            svc.addin_factory.connections.discard(proto)

    def _rollback(self) -> None:
        self.service.site.closing = False
        if self.child.exit_code is None and self.child.pid:
            try:
                os.kill(self.child.pid, signal.SIGKILL)
            except OSError:
                pass
        if not self.paused:
            return
        svc = self.service
        for proto, pending in self.taken:
            t = proto.transport
            if self.committed:
                proto._ended = False
                t._shouldShutdown = True
                svc.addin_factory.connections.add(proto)
            t.startReading()
            if pending:
                t.write(pending)
            if proto.keys is not None:
                svc.core.hub.attach(proto)
        self.taken = []
        for port in svc.ports:
            port._shouldShutdown = True
            port.startReading()

    def _close(self) -> None:
        for s in (self.conn, self.lsock):
            if s is not None:
                s.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


# -- the admin command ---------------------------------------------------------------------------


def read_status(data_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(data_dir) / STATUS_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def request_restart(data_dir: Path, timeout: float = 180.0) -> dict[str, Any]:
    """SIGUSR2 the running server; wait for its outcome and, on success, for the old process to exit."""
    pid = control.running_pid(data_dir)
    before = read_status(data_dir)
    try:
        os.kill(pid, signal.SIGUSR2)
    except PermissionError:
        raise control.ControlError(f"not allowed to signal the server (pid {pid}): run this as its user") from None
    except ProcessLookupError:
        raise control.ControlError(f"the server (pid {pid}) has just stopped") from None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_status(data_dir)
        if status is not None and status != before and status.get("pid") == pid:
            while status.get("ok") and time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            return status
        time.sleep(0.05)
    raise control.ControlError(f"sent SIGUSR2 to the server (pid {pid}) but it reported no restart within {timeout:g} s; see its log")
