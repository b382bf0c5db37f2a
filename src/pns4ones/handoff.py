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
    ... old stops accepting, finishes HTTP requests in progress, waits for kept
        messages being read, takes every connection off its hub and out of the reactor ...
    old -> new   sessions {sessions:[{family, peer, pending, inbound, left | app, ib, user, group, key}]} + fds, B ...
    old -> new   recovery {bytes}, B ...   (protocol 2: the WebSocket/SSE recovery window, JSON)
    old -> new   end {count}
    new -> old   adopted {count}   (descriptors received; nothing written yet)
    old -> new   commit            (the old process never touches them again)
    new -> old   serving {pid}     (subscriptions live, listeners accepting)

A session is a registered subscription (``app``, ``ib``, ``user``, ``group`` and
``key``, the fingerprint of its client key) or a connection still registering
(``left``: seconds to its registration deadline); ``inbound`` (base64) is what it
sent that was not parsed yet, part of a frame.  Protocol 1 (the release before)
had no ``left`` and no recovery packet: the new process accepts it (a connection
still registering gets the full ``registration_timeout``, the window starts
empty); an old process sends protocol 2 packets only to a new one that said
hello with 2.

Invariants:
* Before ``commit`` the new process neither reads from nor writes to a handed-over
  socket, and fails with ``os._exit`` (no ``shutdown()`` of shared sockets): the
  old process can take everything back, whatever goes wrong.
* After ``commit`` (once the old process has sent it) the old process never
  writes to a handed-over connection again: the new process may have written
  to it (the pending bytes, new frames), so only the new process knows where
  each subscriber's byte stream stands.  Should the handoff still fail (no
  ``serving`` in time, a malformed packet, the new process dies), the old
  process kills the new one, takes the listening sockets back (they carry no
  stream) and closes its own descriptor of every handed-over connection
  without writing and without ``shutdown()`` (``AddinProtocol.abandon``): the
  peer sees the connection end once the killed process's descriptors are gone,
  never a repeated or cut frame, and registers again when it reconnects.
* Pending bytes are the old transport's unsent buffer, taken whole and written
  first by the new process: the byte stream each subscriber sees is unchanged, so
  a frame is never cut or repeated.  So are the inbound bytes, fed to the new
  protocol as if they had just arrived: a registration cut by the restart
  completes on the new process, before the deadline it had.
* This module moves connections through ``AddinProtocol``'s public
  ``export_state`` / ``handed_over`` / ``take_back`` / ``abandon`` / ``adopt`` and Twisted's
  private state only through :mod:`pns4ones.txinternals`.
* Sessions that cannot move (WebSocket, SSE: their state lives in this process)
  are ended (``end("server restarting")``, a going-away close) before the
  handover; their clients resume on the new process from their last id, which
  the handed-over recovery window serves.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet import defer, protocol, task
from twisted.internet.defer import Deferred
from twisted.internet.tcp import Port, Server
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import __version__, control, logs
from .hub.local import LocalHub
from .hub.recovery import RecoveryError
from .jsondoc import JSONObject
from .transports.addin import AddinFactory, AddinProtocol, AddinState
from .txinternals import set_handed_over

if TYPE_CHECKING:
    from .http.site import ApiSite
    from .service import PnsService

T = TypeVar("T")

HANDOFF_PROTOCOL = 2
SUPPORTED_PROTOCOLS = frozenset({1, 2})
#: The first protocol with registration deadlines and the recovery window.
RECOVERY_PROTOCOL = 2
ENV = "PNS4ONES_HANDOFF"
SOCKET_NAME = "handoff.sock"
STATUS_FILE = "restart.json"
MAX_FDS = 250  # per packet (SCM_MAX_FD is 253)
BLOB = 60000
START_TIMEOUT = 60.0  # the new process: start, load the registry
STEP_TIMEOUT = 30.0
HTTP_GRACE = 0.05  # see Restart._quiet
#: Longest wait for kept messages being read from the store before the connections move.
KEPT_GRACE = 5.0

log = Logger(namespace="pns4ones.handoff")


class HandoffError(Exception):
    """The handoff cannot go on: a message for the operator."""


class MalformedPacket(HandoffError):
    """The other process sent a packet that is not JSON, not an object, or not the one its step expects."""


@dataclass(frozen=True, slots=True)
class Handed:
    """One connection as received by the new process: what it is, its socket, what was queued for it."""

    state: AddinState
    fd: int
    family: int
    pending: bytes


def state_json(state: AddinState, pending: int, family: int) -> JSONObject:
    """A ``sessions`` entry."""
    doc: JSONObject = {"family": family, "peer": state.peer, "pending": pending, "inbound": base64.b64encode(state.inbound).decode()}
    if state.key:
        doc.update(app=state.app_id, ib=state.ib_id, user=state.user_id, group=state.group, key=state.key)
    elif state.registration_left is not None:
        doc["left"] = state.registration_left
    return doc


def state_from(doc: object) -> AddinState:
    """The connection a ``sessions`` entry describes; HandoffError when it is garbled (anything but the types :func:`state_json` writes)."""
    if not isinstance(doc, dict):
        raise HandoffError(f"garbled session entry ({type(doc).__name__})")
    try:
        inbound = base64.b64decode(_text(doc.get("inbound", ""), "inbound"), validate=True)
    except (ValueError, binascii.Error) as e:
        raise HandoffError(f"garbled session entry ({e!r})") from None
    peer = _text(doc.get("peer", ""), "peer")
    if doc.get("key"):
        app, ib, user, group, key = (_text(doc.get(name), name) for name in ("app", "ib", "user", "group", "key"))
        return AddinState(peer, app, ib, user, group, key, inbound)
    left = doc.get("left")
    if left is not None and (not isinstance(left, int | float) or isinstance(left, bool) or not math.isfinite(left)):
        raise HandoffError(f"garbled session entry (left: {left!r})")
    return AddinState(peer, inbound=inbound, registration_left=None if left is None else max(0.0, float(left)))


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise HandoffError(f"garbled session entry ({name}: {value!r:.40})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise HandoffError(f"garbled session entry ({name} is not text)") from None
    return value


def _count(value: object, what: str) -> int:
    """A non-negative integer of a packet; HandoffError otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise HandoffError(f"garbled handoff packet ({what}: {value!r:.40})")
    return value


#: The address families of the add-in listener's connections (TCP).
FAMILIES = frozenset({int(socket.AF_INET), int(socket.AF_INET6)})


def sessions_from(doc: dict[str, Any], descriptors: int) -> list[tuple[AddinState, int, int]]:
    """(state, family, pending byte count) of each entry of a ``sessions`` packet; HandoffError when anything is garbled or missing."""
    entries = doc.get("sessions")
    if not isinstance(entries, list) or len(entries) != descriptors:
        raise HandoffError(
            f"bad sessions packet ({len(entries) if isinstance(entries, list) else 'no'} entries, {descriptors} descriptors)"
        )
    out = []
    for entry in entries:
        state = state_from(entry)
        family = entry.get("family")
        if not isinstance(family, int) or isinstance(family, bool) or family not in FAMILIES:
            raise HandoffError(f"garbled session entry (family: {family!r:.40})")
        out.append((state, int(family), _count(entry.get("pending"), "pending")))
    return out


def listeners_from(doc: dict[str, Any], descriptors: int) -> list[tuple[str, str, int]]:
    """(option, address, family) of each listener of a ``listeners`` packet; HandoffError when anything is garbled or missing."""
    specs = doc.get("listeners")
    if not isinstance(specs, list) or len(specs) != descriptors:
        raise HandoffError("listener descriptors missing")
    out = []
    for spec in specs:
        if not isinstance(spec, dict) or not isinstance(spec.get("option"), str) or not isinstance(spec.get("address"), str):
            raise HandoffError(f"garbled listener entry ({spec!r:.80})")
        family = spec.get("family")
        if not isinstance(family, int) or isinstance(family, bool) or family not in FAMILIES | {int(socket.AF_UNIX)}:
            raise HandoffError(f"garbled listener entry (family: {family!r:.40})")
        out.append((spec["option"], spec["address"], family))
    return out


def serving_timeout(sessions: int) -> float:
    """How long the old process waits for ``serving`` after ``commit``: the new process attaches ``sessions`` subscriptions meanwhile."""
    # Tests shorten the wait with this variable.
    return float(os.environ.get("PNS4ONES_TEST_HANDOFF_STEP_TIMEOUT", STEP_TIMEOUT)) + sessions / 2000


def _advertised_protocol() -> int:
    # Tests pretend to be an incompatible older release with this variable.
    return int(os.environ.get("PNS4ONES_TEST_HANDOFF_PROTOCOL", HANDOFF_PROTOCOL))


# -- packets -------------------------------------------------------------------------------


def _send(sock: socket.socket, doc: JSONObject, fds: list[int] | tuple[int, ...] = ()) -> None:
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
    except (ValueError, RecursionError):
        raise MalformedPacket("garbled handoff packet (not JSON)") from None


_JSON_KINDS = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def _packet(tag: str, doc: object, kind: str) -> JSONObject:
    """
    ``doc`` when it is a ``kind`` packet; HandoffError with the other side's
    reason when it refused, MalformedPacket saying what came instead otherwise.
    """
    if tag == "J" and isinstance(doc, dict):
        if doc.get("type") == kind:
            return doc
        if doc.get("type") in ("refuse", "error"):
            raise HandoffError(str(doc.get("reason", "refused")))
        raise MalformedPacket(f"expected a {kind!r} packet, got a {doc.get('type')!r:.40} packet")
    got = f"{len(doc)} raw bytes" if isinstance(doc, bytes) else f"a JSON {_JSON_KINDS.get(type(doc), 'value')}"
    raise MalformedPacket(f"expected a {kind!r} packet, got {got}")


def _expect(sock: socket.socket, kind: str) -> tuple[JSONObject, list[int]]:
    tag, doc, fds = _recv(sock)
    return _packet(tag, doc, kind), fds


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
        self.listeners: dict[str, list[tuple[JSONObject, int]]] = {}
        self.old_pid = 0

    def receive_listeners(self) -> None:
        """The old process's listening sockets (in :attr:`listeners`); HandoffError when the hand-over cannot go on."""
        try:
            self._receive_listeners()
        except OSError as e:
            raise HandoffError(f"handoff socket: {e}") from None

    def _receive_listeners(self) -> None:
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
        pid = doc.get("pid", 0)
        self.old_pid = pid if isinstance(pid, int) and not isinstance(pid, bool) else 0
        for (option, address, family), fd in zip(listeners_from(doc, len(fds)), fds):
            self.listeners.setdefault(option, []).append(({"option": option, "address": address, "family": family}, fd))

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

    def _blob(self, need: int, what: str) -> bytes:
        chunks, have = [], 0
        while have < need:
            tag, chunk, _ = _recv(self.sock)
            if tag != "B":
                raise HandoffError(f"{what} missing")
            chunks.append(chunk)
            have += len(chunk)
        return b"".join(chunks)

    def receive_sessions(self) -> list[Handed]:
        """
        Everything the old process hands over (and its recovery window, in
        :attr:`recovery`); blocking (we serve nothing yet).  Every packet is
        checked whole before ``adopted`` is sent: HandoffError (the old process
        takes everything back) for anything garbled, missing or cut short.
        """
        try:
            return self._receive_sessions()
        except OSError as e:
            raise HandoffError(f"handoff socket: {e}") from None

    def _receive_sessions(self) -> list[Handed]:
        for _, handed in self.listeners.items():  # listeners this configuration no longer has
            for _, fd in handed:
                os.close(fd)
        self.listeners = {}
        _send(self.sock, {"type": "ready"})
        self.sock.settimeout(START_TIMEOUT)  # the old process drains HTTP requests first
        out: list[Handed] = []
        #: The old process's recovery window (protocol 2), to adopt before serving.
        self.recovery: object = None
        while True:
            tag, doc, fds = _recv(self.sock)
            self.sock.settimeout(STEP_TIMEOUT)
            if tag != "J" or not isinstance(doc, dict):
                raise HandoffError("unexpected raw bytes" if tag != "J" else "garbled handoff packet")
            kind = doc.get("type")
            if kind == "end":
                break
            if kind == "recovery":
                try:
                    self.recovery = json.loads(self._blob(_count(doc.get("bytes"), "bytes"), "the recovery window"))
                except (ValueError, RecursionError):
                    raise HandoffError("garbled recovery window") from None
                continue
            if kind != "sessions":
                raise HandoffError(f"bad sessions packet ({kind!r:.40}, {len(fds)} descriptors)")
            entries = sessions_from(doc, len(fds))
            need = sum(n for _, _, n in entries)
            blob = self._blob(need, "pending bytes")
            if len(blob) != need:
                raise HandoffError(f"expected {need} pending bytes, received {len(blob)}")
            at = 0
            for (state, family, n), fd in zip(entries, fds):
                out.append(Handed(state, fd, family, blob[at : at + n]))
                at += n
        if os.environ.get("PNS4ONES_TEST_HANDOFF_CRASH"):  # tests: die holding every descriptor, before confirming
            os._exit(3)
        if doc.get("count") != len(out):
            raise HandoffError(f"expected {doc.get('count')} subscriptions, received {len(out)}")
        _send(self.sock, {"type": "adopted", "count": len(out)})
        _expect(self.sock, "commit")
        return out

    def serving(self, count: int) -> None:
        if os.environ.get("PNS4ONES_TEST_HANDOFF_STALL"):  # tests: serve, but never say so (the descriptor stays open until killed)
            self.sock.detach()
            return
        try:
            _send(self.sock, {"type": "serving", "pid": os.getpid(), "count": count})
        except OSError:
            pass
        self.sock.close()


def adopt_sessions(service: PnsService, incoming: Incoming) -> int:
    """Receive, commit, then bring every handed-over connection to life (and the recovery window, before anything is routed)."""
    handed = incoming.receive_sessions()
    reactor, factory, core = service.reactor, service.addin_factory, service.core
    assert factory is not None and core is not None  # built before the handoff starts
    most = service.config.registration_timeout  # (no more than a new connection gets)
    handed = [
        h
        if h.state.registration_left is None or h.state.registration_left <= most
        else replace(h, state=replace(h.state, registration_left=most))
        for h in handed
    ]
    if incoming.recovery is not None:
        adopt_recovery(core.hub, incoming.recovery, reactor.seconds())
    # Registering connections in deadline order: the factory's sweep expects its clock entries so.
    handed.sort(key=lambda h: (h.state.registration_left is not None, h.state.registration_left or 0.0))
    ended = 0
    factory.adopting = True
    try:
        for h in handed:
            try:
                transport = reactor.adoptStreamConnection(h.fd, h.family, factory)
            except OSError:
                transport = None  # the peer went away meanwhile
            finally:
                os.close(h.fd)
            if not isinstance(transport, Server):
                continue  # the peer went away meanwhile
            proto = transport.protocol
            if isinstance(proto, AddinProtocol) and not proto.adopt(h.state, h.pending):
                ended += 1
    finally:
        factory.adopting = False
    if ended:
        log.info("{count} handed-over subscriptions ended: their application was removed or its client key changed", count=ended)
    return len(handed)


def adopt_recovery(hub: object, doc: object, now: float) -> None:
    """Continue the previous process's recovery window (an in-process hub; a hub between nodes keeps its own in Redis)."""
    if not isinstance(hub, LocalHub):
        return
    try:
        count = hub.recovery.adopt(doc, now)
    except RecoveryError as e:  # web clients that resume get "missed", as after a full restart
        log.warn("the recovery window of the previous process cannot be adopted ({error}); starting an empty one", error=str(e))
    else:
        log.info("adopted the recovery window of the previous process: {count} messages", count=count)


# -- the old process ----------------------------------------------------------------------------


def _tcp(proto: AddinProtocol) -> Server:
    transport = proto.transport
    if not isinstance(transport, Server):
        raise HandoffError(f"an add-in connection without a TCP socket ({transport!r})")
    return transport


class _Child(protocol.ProcessProtocol):
    def __init__(self) -> None:
        self.exit_code: int | None = None
        self.pid = 0

    def connectionMade(self) -> None:
        if self.transport is not None:
            self.pid = self.transport.pid

    def processEnded(self, reason: Failure) -> None:
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

    def __init__(self, service: PnsService, trigger: str) -> None:
        self.service = service
        self.trigger = trigger
        self.reactor = service.reactor
        self.path = Path(service.config.data_dir) / SOCKET_NAME
        self.lsock: socket.socket | None = None
        self.conn: socket.socket | None = None
        self.child = _Child()
        self.paused = False
        #: Connections taken out of this process: (protocol, its state, the bytes queued for it).
        self.taken: list[tuple[AddinProtocol, AddinState, bytes]] = []
        #: ``commit`` was sent: a failure from then on closes the handed-over connections instead of taking them back.
        self.committed = False
        #: The new process's handoff protocol (from its hello).
        self.theirs = 1

    @defer.inlineCallbacks
    def run(self) -> Any:
        always = {logs.ALWAYS: True}
        started = time.monotonic()
        log.info(
            "{trigger}: restarting with the code and configuration on disk; handing over {count} subscriptions",
            trigger=self.trigger,
            count=len(self._factory().connections),
            **always,
        )
        try:
            yield self._handoff()
        except Exception as e:
            reason = str(e) if isinstance(e, HandoffError) else f"unexpected error: {e!r}"
            if not isinstance(e, HandoffError):
                log.failure("restart failed unexpectedly")
            # (a new process that sent a malformed packet is alive: it is killed below)
            if "exited with code" not in reason and self.child.pid and not isinstance(e, MalformedPacket):
                for _ in range(100):  # did it die? say so (its own messages are in the log)
                    if self.child.exit_code is not None:
                        reason = f"the new process exited with code {self.child.exit_code} during the handoff ({reason}); see its messages in the log"
                        break
                    yield task.deferLater(self.reactor, 0.02, lambda: None)
            closed = self._rollback()
            if closed is None:
                message = f"restart failed, this process (pid {os.getpid()}) keeps serving every connection: {reason}"
            else:
                message = (
                    f"restart failed after the handover, this process (pid {os.getpid()}) keeps serving: {reason}; "
                    f"the {closed} handed-over subscriptions were closed (the new process may have written to them) and reconnect "
                    "to this process (a 1C desktop with the stock extension once its user restarts 1C)"
                )
            log.error("{trigger}: {message}", trigger=self.trigger, message=message)
            self._status(False, message, 0)
            return False
        finally:
            self._close()
        pause = time.monotonic() - self.pause_started
        t = self.times
        registering = sum(1 for _, state, _ in self.taken if not state.key)
        queued = sum(len(pending) for _, _, pending in self.taken)
        message = f"restarted: pid {os.getpid()} -> {self.child.pid}; {len(self.taken)} subscriptions handed over ({registering} still registering, {queued} bytes queued for them); delivery paused {pause * 1000:.0f} ms (HTTP requests in progress {1000 * (t[0] - self.pause_started):.0f}, sending {1000 * (t[1] - t[0]):.0f}, receiving {1000 * (t[2] - t[1]):.0f}, adopting {1000 * (t[3] - t[2]):.0f}); took {time.monotonic() - started:.1f} s"
        log.info("{trigger}: {message}", trigger=self.trigger, message=message, **always)
        self._status(True, message, self.child.pid)
        self.service.handed_over = True
        self.reactor.stop()
        return True

    def _status(self, ok: bool, message: str, new_pid: int) -> None:
        doc = {"pid": os.getpid(), "new_pid": new_pid, "time": time.time(), "ok": ok, "message": message, "trigger": self.trigger}
        try:
            control.atomic_write(Path(self.service.config.data_dir) / STATUS_FILE, json.dumps(doc, ensure_ascii=False) + "\n")
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
                raise HandoffError(f"the new process did not finish {what} within {timeout:g} s")
            yield task.deferLater(self.reactor, 0.01, lambda: None)

    @defer.inlineCallbacks
    def _receive(self, kind: str, what: str, timeout: float) -> Generator[Deferred[Any], Any, JSONObject]:
        """
        The new process's next packet, which must be ``kind`` (it is busy
        ``what`` until it sends it); HandoffError otherwise, naming the step and
        what was wrong with a malformed packet.
        """
        try:
            tag, doc, fds = yield self._wait(what, self._poll, timeout)
            for fd in fds:  # (the new process hands no descriptors over)
                os.close(fd)
            return _packet(tag, doc, kind)
        except MalformedPacket as e:
            raise _malformed(kind, e) from None

    def _accept(self) -> socket.socket | None:
        try:
            conn, _ = self._listening().accept()
        except BlockingIOError:
            return None
        return conn

    def _poll(self) -> Any:
        try:
            return _recv(self._conn())
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
        hello = yield self._receive("hello", "saying hello", STEP_TIMEOUT)
        theirs = hello.get("handoff", 1)
        if not isinstance(theirs, int) or isinstance(theirs, bool) or theirs < 1:
            raise _malformed("hello", f"its handoff protocol is {theirs!r:.40}, not a positive integer")
        self.theirs = theirs
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
        yield self._receive("ready", "loading its configuration and store", START_TIMEOUT)
        # The pause: stop accepting (the new process holds the same listening
        # sockets), let requests in progress deliver here, then move everything.
        self.pause_started = time.monotonic()
        self.paused = True
        for port in svc.ports:
            port.stopReading()
        svc.site.close_after_answers()  # requests in progress: answered here, then the connection closes
        # WebSocket and SSE streams are requests that never finish by themselves: end
        # them first (their clients resume on the new process from the handed-over
        # window), or the wait below would last its whole 10 s bound.
        self._say_going_away()
        yield self._quiet(svc.site)
        yield svc.site.drain(self.reactor, timeout=0.0)  # closes the idle connections (requests were served above)
        yield self._kept_written()
        self.times = [time.monotonic()]
        self._take_sessions()
        self.conn.setblocking(True)
        self.conn.settimeout(STEP_TIMEOUT)
        try:
            self._send_sessions()
            self.times.append(time.monotonic())
            self._expect("adopted")
            self.times.append(time.monotonic())
            self._commit()
            _send(self.conn, {"type": "commit"})
            self.committed = True  # (sent: the new process may write to the connections from now on)
            timeout = serving_timeout(len(self.taken))
            self.conn.settimeout(timeout)
            try:
                self._expect("serving")
            except TimeoutError:
                raise HandoffError(f"the new process took the connections over but did not start serving within {timeout:.3g} s") from None
            self.times.append(time.monotonic())
        except (TimeoutError, OSError) as e:
            raise HandoffError(f"handoff socket: {e}") from None

    def _expect(self, kind: str) -> JSONObject:
        """The new process's next packet, which must be ``kind`` (blocking: the connections are out of the reactor)."""
        try:
            doc, fds = _expect(self._conn(), kind)
        except MalformedPacket as e:
            raise _malformed(kind, e) from None
        for fd in fds:
            os.close(fd)
        return doc

    @defer.inlineCallbacks
    def _quiet(self, site: ApiSite) -> Generator[Deferred[None], None, None]:
        """
        Serve requests in progress, and those arriving on open connections for
        ``HTTP_GRACE`` seconds more (a sender that has just connected, or sent
        while we stopped accepting), each answered with Connection: close (the
        caller then closes the remaining idle connections).  A channel whose
        connection is gone does not count: one upgraded to a WebSocket keeps its
        upgrade request forever (:meth:`ApiSite.busy`).
        """
        deadline = time.monotonic() + 5.0
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            if site.busy():
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= HTTP_GRACE:
                return
            yield task.deferLater(self.reactor, 0.005, lambda: None)

    @defer.inlineCallbacks
    def _kept_written(self) -> Generator[Deferred[None], None, None]:
        """Wait while kept messages are read from the store for a subscription (they would be written to the old process)."""
        factory = self._factory()
        deadline = time.monotonic() + KEPT_GRACE
        while True:
            reading = sum(1 for proto in factory.connections if proto.reading_kept)
            if not reading:
                return
            if time.monotonic() > deadline:
                raise HandoffError(f"kept messages of {reading} subscriptions are still being read from the store after {KEPT_GRACE:g} s")
            yield task.deferLater(self.reactor, 0.01, lambda: None)

    def _factory(self) -> AddinFactory:
        factory = self.service.addin_factory
        if factory is None:
            raise HandoffError("the server is not built yet")
        return factory

    def _say_going_away(self) -> None:
        core = self.service.core
        if core is None:
            return
        for session in list(core.hub.sessions()):
            if session.transport_name != AddinProtocol.transport_name:  # WebSocket, SSE: they resume on the new process
                session.going_away("server restarting")

    def _take_sessions(self) -> None:
        for proto in list(self._factory().connections):
            exported = proto.export_state()
            if exported is not None:
                self.taken.append((proto, *exported))

    def _send_sessions(self) -> None:
        conn = self._conn()
        for start in range(0, len(self.taken), MAX_FDS):
            batch = self.taken[start : start + MAX_FDS]
            sockets = [_tcp(proto) for proto, _, _ in batch]
            metas = [state_json(state, len(pending), int(t.socket.family)) for (_, state, pending), t in zip(batch, sockets)]
            _send(conn, {"type": "sessions", "sessions": metas}, [t.fileno() for t in sockets])
            self._send_blob(b"".join(pending for _, _, pending in batch))
        core = self.service.core
        if self.theirs >= RECOVERY_PROTOCOL and core is not None and isinstance(core.hub, LocalHub):
            window = json.dumps(core.hub.recovery.export(), separators=(",", ":")).encode()
            _send(conn, {"type": "recovery", "bytes": len(window)})
            self._send_blob(window)
        _send(conn, {"type": "end", "count": len(self.taken)})

    def _send_blob(self, data: bytes) -> None:
        conn = self._conn()
        for at in range(0, len(data), BLOB):
            conn.sendall(b"B" + data[at : at + BLOB])

    def _listening(self) -> socket.socket:
        if self.lsock is None:
            raise HandoffError("the handoff socket is not open")
        return self.lsock

    def _conn(self) -> socket.socket:
        if self.conn is None:
            raise HandoffError("the new process is not connected")
        return self.conn

    def _ports(self) -> list[Port]:
        return [port for port in self.service.ports if isinstance(port, Port)]

    def _commit(self) -> None:
        """From here on this process never touches the handed-over sockets (no shutdown() at exit)."""
        for port in self._ports():
            set_handed_over(port, True)
        for proto, _, _ in self.taken:
            proto.handed_over()

    def _rollback(self) -> int | None:
        """
        Kill the new process and serve here again: before ``commit``, every
        connection as it was (its queued bytes first); after it, the listeners
        only, closing the handed-over connections (their number is returned;
        None before the commit): the new process may have written to them.
        """
        self.service.site.closing = False
        if self.child.exit_code is None and self.child.pid:
            try:
                os.kill(self.child.pid, signal.SIGKILL)
            except OSError:
                pass
        closed = len(self.taken) if self.committed else None
        if self.committed:  # the new process may have written its PID file already
            try:
                control.write_pid(self.service.config.data_dir)
            except OSError as e:
                log.warn("cannot write the PID file again: {error}", error=str(e))
        if not self.paused:
            return closed
        for proto, state, pending in self.taken:
            if self.committed:
                proto.abandon()
            else:
                proto.take_back(state, pending)
        self.taken = []
        for port in self._ports():
            set_handed_over(port, False)
            port.startReading()
        return closed

    def _close(self) -> None:
        for s in (self.conn, self.lsock):
            if s is not None:
                s.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


def _malformed(step: str, problem: object) -> MalformedPacket:
    """The old process's word for a malformed packet from the new process where it expected the ``step`` packet."""
    return MalformedPacket(f"malformed handoff packet from the new process at the {step!r} step: {problem}")


# -- the admin command ---------------------------------------------------------------------------


def read_status(data_dir: Path) -> JSONObject | None:
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


def request_restart(data_dir: Path, timeout: float = 180.0) -> JSONObject:
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
