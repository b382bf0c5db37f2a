"""
The whole node as one Twisted service: open the store, load the registry, bind
the listeners, watch the store for CLI changes, purge tokens, stop gracefully.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

from twisted.application import service
from twisted.application.service import IServiceCollection
from twisted.internet import defer, error, task
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, Logger, LogLevel
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.components import Componentized
from twisted.python.failure import Failure

from . import __version__, compiled, control, handoff, logs, txinternals
from . import tls as _tls
from .admin.app import AdminPanel, AdminSite
from .config import Address, Config, ConfigError
from .core import Core, Limits
from .groups import Membership
from .http.connection import FrontFactory
from .http.handlers import Handlers
from .http.resources import SendAPI
from .http.site import ApiSite
from .hub import HubUnavailable, open_hub
from .store import Store, StoreError, StoreUnavailable, open_store
from .trace import Trace
from .transports.addin import AddinFactory, configure_socket
from .transports.web import WebSubscriptions

#: The admin panel listens here and nowhere else (docs/protocol.md section 6).
ADMIN_HOSTS = ("127.0.0.1", "::1")

#: Seconds between purges of expired kept messages (expired ones are never written anyway).
KEPT_PURGE_INTERVAL = 60.0


#: Listen queue: thousands of desktops reconnect at once (after a network outage);
#: the kernel caps it at net.core.somaxconn (4096 on current kernels).
LISTEN_BACKLOG = 4096


class StartupError(Exception):
    """The node cannot start (a port taken, a store unreadable): message for the operator."""


class PnsService(service.MultiService):
    log = Logger()
    #: The ``metrics_listen`` listener's site, if configured (set by :class:`pns4ones.observe.Observability`).
    metrics_site: ApiSite | None

    def __init__(self, config: Config, reactor: Any, tls: _tls.ReloadableServerTLS | None = None) -> None:
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.tls = tls
        self.metrics_site = None  # (observe sets it when metrics_listen is given)
        self._old_sighup: Any = None
        self.store: Store | None = None
        self.core: Core | None = None
        self.ports: list[Any] = []
        self.addin_factory: AddinFactory | None = None
        self.ready = False
        self._purge: task.LoopingCall | None = None
        self._purge_kept: task.LoopingCall | None = None
        self.port_options: dict[Any, str] = {}
        self.incoming: handoff.Incoming | None = None  # set when a previous process hands over
        self.restarting: handoff.Restart | None = None
        self.handed_over = False

    # twistd: an ILogObserver component on the application sets the log format and level.
    def setServiceParent(self, parent: IServiceCollection) -> None:
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver, None) is None:
            parent.setComponent(ILogObserver, logs.make_observer(self.config.log_level, self.config.log_format))
        super().setServiceParent(parent)

    # -- start -------------------------------------------------------------------------

    def build(self) -> None:
        """Open the store and build the node's parts (no network yet)."""
        cfg = self.config
        try:
            self.store = open_store(cfg, reactor=self.reactor)
        except StoreError as e:
            raise StartupError(str(e)) from None
        membership = Membership()
        limits = Limits(cfg.max_ttl, cfg.max_kept_per_user, cfg.max_kept_per_app, cfg.max_group_size, cfg.max_groups)
        try:
            hub = open_hub(cfg, membership.members, self.reactor)
        except HubUnavailable as e:
            raise StartupError(str(e)) from None
        trace = Trace(cfg.trace_size, cfg.trace_bodies)
        self.core = Core(
            self.store, hub, self.reactor, token_lifetime=cfg.token_lifetime, membership=membership, limits=limits, trace=trace
        )
        self.web_subscriptions = WebSubscriptions(self.core, cfg, self.reactor)
        self.api = Handlers(
            self.core,
            cfg.expires_in_format,
            log_sends=logs.level_enabled(cfg.log_level, LogLevel.info),
            send_rate_limit=cfg.send_rate_limit,
            max_batch=cfg.max_batch,
            subscriptions=self.web_subscriptions,
        )
        self.site = ApiSite(
            SendAPI(self.api).resource(), cfg.max_body_size, cfg.request_timeout, clock=self.reactor, trusted_proxies=cfg.trusted_proxies
        )
        self.api_factory: Any = self.site
        if cfg.http_engine == "lean":  # the front connection; "twisted": twisted.web alone, the reference path
            self.api_factory = FrontFactory(self.site, self.api)
        if cfg.ssl_mode != "None":
            if self.tls is None:
                try:
                    self.tls = _tls.from_config(cfg)
                except ConfigError as e:
                    raise StartupError(str(e)) from None
            assert self.tls is not None  # (from_config loads it for every ssl_mode but None)
            self.api_factory = TLSMemoryBIOFactory(self.tls, False, self.api_factory)
        self.addin_factory = AddinFactory(self.core, cfg, self.reactor, log_info=logs.level_enabled(cfg.log_level, LogLevel.info))
        self.admin_panel = AdminPanel(self.core, self.store, cfg, self.reactor)
        self.admin_site = AdminSite(self.admin_panel, cfg.admin_port, cfg.max_body_size, cfg.request_timeout, clock=self.reactor)
        from .observe import Observability  # prometheus_client imports the reactor: only now

        self.observability = Observability(self)

    def _listen(self, address: Address, factory: Any, option: str) -> None:
        handed = self.incoming.take(option, address.text) if self.incoming is not None else []
        for fd, family in handed:  # a restart: the same sockets, from the previous process
            port = self.reactor.adoptStreamPort(fd, family, factory)
            os.close(fd)
            port.stopReading()
            self.ports.append(port)
            self.port_options[port] = option
        if handed:
            return
        for host in address.hosts:
            try:
                port = self.reactor.listenTCP(address.port, factory, backlog=LISTEN_BACKLOG, interface=host)
            except error.CannotListenError as e:
                raise StartupError(
                    f"option '{option}' ({address.text}, from {self.config.source_of(option)}): cannot listen on {host} port {address.port}: {e.socketError}"
                ) from None
            port.stopReading()  # accept only once the registry is loaded
            self.ports.append(port)
            self.port_options[port] = option

    def _listen_admin(self) -> None:
        """The admin panel: loopback only, whatever else is configured; [::1] when the host has it."""
        port = self.config.admin_port
        handed = self.incoming.take("admin_port", str(port)) if self.incoming is not None else []
        for fd, family in handed:  # a restart: the same loopback sockets, from the previous process
            listener = self.reactor.adoptStreamPort(fd, family, self.admin_site)
            os.close(fd)
            listener.stopReading()
            self.ports.append(listener)
            self.port_options[listener] = "admin_port"
        if handed:
            return
        for host in ADMIN_HOSTS:
            try:
                listener = self.reactor.listenTCP(port, self.admin_site, interface=host)
            except error.CannotListenError as e:
                if host != ADMIN_HOSTS[0]:
                    self.log.info("admin panel not on [{host}]:{port}: {error}", host=host, port=port, error=str(e.socketError))
                    continue
                raise StartupError(
                    f"option 'admin_port' ({port}, from {self.config.source_of('admin_port')}): cannot listen on {host} port {port}: {e.socketError}"
                ) from None
            listener.stopReading()
            self.ports.append(listener)
            self.port_options[listener] = "admin_port"

    def _configure_addin_listeners(self) -> None:
        """Keepalive options on the add-in listening sockets: accepted ones inherit them."""
        assert self.addin_factory is not None  # (build() made it)
        try:
            for port in self.ports:
                if port.factory is self.addin_factory:
                    configure_socket(port.socket, self.config)
        except (AttributeError, OSError) as e:
            self.log.warn("cannot set keepalive options on the listening socket ({error}); setting them per connection", error=str(e))
        else:
            self.addin_factory.listener_configured = True

    def privilegedStartService(self) -> None:
        try:
            if self.core is None:
                self.build()
            if os.environ.get(handoff.ENV):
                self.incoming = handoff.Incoming(os.environ.pop(handoff.ENV))
                self.incoming.receive_listeners()
            self._listen(self.config.listen, self.api_factory, "listen")
            self._listen(self.config.service, self.addin_factory, "service")
            self._configure_addin_listeners()
            self._listen_admin()
            if self.metrics_site is not None and self.config.metrics_listen is not None:  # (Observability sets both or neither)
                self._listen(self.config.metrics_listen, self.metrics_site, "metrics_listen")
        except (StartupError, handoff.HandoffError) as e:
            if self.incoming is not None:  # never shutdown() sockets the old process still serves
                self.log.critical("cannot take over from the previous process: {error}", error=str(e), **{logs.ALWAYS: True})
                handoff.die()
            for port in self.ports:
                port.stopListening()
            self.log.critical("cannot start: {error}", error=str(e), **{logs.ALWAYS: True})
            if self.config.log_level == "None":
                sys.__stderr__.write(f"pns4ones: cannot start: {e}\n")  # type: ignore[union-attr]  # (None only with no stderr at all)
            raise SystemExit(1) from None
        super().privilegedStartService()

    def startService(self) -> None:
        assert self.core is not None  # (privilegedStartService built it)
        super().startService()
        txinternals.lean_dispatch(self.reactor)  # the epoll reactor's events without a log context each (docs/performance.md)
        self.core.hub.start()  # a hub between nodes connects now
        d = self.core.reload()
        d.addCallback(self._loaded)
        d.addErrback(self._failed_start)

    def _loaded(self, _: object) -> None:
        cfg = self.config
        assert self.core is not None  # (built before the service started)
        # Everything built so far lives as long as the process: keep it out of the
        # cyclic collector's way, and collect young objects less often.
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        adopted = None
        if self.incoming is not None:
            try:
                adopted = handoff.adopt_sessions(self, self.incoming)
            except Exception as e:  # before the commit: the old process takes everything back
                self.log.critical("cannot take over from the previous process: {error}", error=str(e), **{logs.ALWAYS: True})
                handoff.die()
        for port in self.ports:
            port.startReading()
        if self.store is not None:  # (always: build() opened it)
            self.store.start_watching(self.core.reload, cfg.store_poll_interval)
        self._purge = task.LoopingCall(self._store_task, self.core.purge_tokens, "token purge")
        self._purge.clock = self.reactor
        self._purge.start(3600, now=True).addErrback(lambda f: self.log.failure("token purge failed", f))
        self._purge_kept = task.LoopingCall(self._store_task, self.core.purge_kept, "kept-message purge")
        self._purge_kept.clock = self.reactor
        self._purge_kept.start(KEPT_PURGE_INTERVAL, now=True).addErrback(lambda f: self.log.failure("kept-message purge failed", f))
        self.ready = True
        self._store_task(self.admin_panel.prepare, "admin panel set-up")  # no administrator yet: print the set-up code
        self._start_control()
        self.observability.started()
        always = {logs.ALWAYS: True}
        self.log.info(
            "pns4ones {version} started ({build} send path); data in {data_dir}; config {config}",
            version=__version__,
            build=compiled.build(),
            data_dir=str(cfg.data_dir),
            config=cfg.config_file or "(none, defaults)",
            **always,
        )
        if self.tls is None:
            self.log.info("send API (HTTP) on {where}", where=cfg.listen.describe(), **always)
        else:
            self.log.info(
                "send API (HTTPS, ssl_mode={mode}) on {where}; certificate {certificate}",
                mode=cfg.ssl_mode,
                where=cfg.listen.describe(),
                certificate=self.tls.material.describe(),
                **always,
            )
            for warning in self.tls.material.warnings:
                self.log.warn("{warning}", warning=warning)
        addin = self.addin_factory
        self.log.info(
            "add-in subscriptions (TCP) on {where}; before registering: at most {total} connections ({per_address} per address), "
            "{reserve} of {limit} file descriptors kept free",
            where=cfg.service.describe(),
            total=cfg.max_unregistered,
            per_address=cfg.max_unregistered_per_address,
            reserve=addin.fd_reserve if addin is not None else 0,
            limit=addin.fd_limit if addin is not None else 0,
            **always,
        )
        self.log.info("admin panel (HTTP, loopback only) on http://127.0.0.1:{port}/", port=cfg.admin_port, **always)
        self.log.info(
            "WebSocket and SSE subscriptions at /subscribe/ws and /subscribe/sse of the send API; allowed_origins: {origins}",
            origins=", ".join(cfg.allowed_origins) or "none",
            **always,
        )
        self.log.info("{count} applications in the store", count=len(self.core.apps), **always)
        if self.incoming is not None:
            self.log.info("took over {count} subscriptions from process {pid}", count=adopted, pid=self.incoming.old_pid, **always)
            self.incoming.serving(adopted or 0)
            self.incoming = None
            handoff.sd_notify(f"MAINPID={os.getpid()}\nREADY=1")
        else:
            handoff.sd_notify("READY=1")

    def _store_task(self, fn: Callable[[], object], what: str) -> Deferred[object]:
        """A periodic store task that outlives a store outage (the store logs the outage itself)."""

        def failed(failure: Failure) -> None:
            if not failure.check(StoreUnavailable):
                self.log.failure("{what} failed", failure, what=what)

        return defer.maybeDeferred(fn).addErrback(failed)

    # -- control: PID file, SIGHUP = reload the certificate ---------------------------------

    def _start_control(self) -> None:
        try:
            control.write_pid(self.config.data_dir)
        except OSError as e:
            self.log.warn(
                "cannot write the PID file in {data_dir} (pns4ones-admin reload_tls will not find this server): {error}",
                data_dir=str(self.config.data_dir),
                error=str(e),
            )
        try:
            self._old_sighup = signal.signal(signal.SIGHUP, self._on_sighup)
            # A stop on SIGTERM/SIGINT is the normal way to end: exit 0 (twistd's
            # own handlers would make the process die by the signal again).
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_stop_signal)
            signal.signal(signal.SIGUSR2, self._on_sigusr2)
        except ValueError:  # not the main thread (embedded): no signal handling
            self._old_sighup = None

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.reactor.callFromThread(self._stop_requested, name)

    def _stop_requested(self, name: str) -> None:
        self.log.info("received {signal}: stopping gracefully", signal=name, **{logs.ALWAYS: True})
        if self.reactor.running:
            self.reactor.stop()

    def _on_sigusr2(self, signum: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self.restart, "SIGUSR2")

    def restart(self, trigger: str = "restart") -> Any:
        """Hand every listener and subscription over to a new process (see handoff.py), then exit."""
        if self.restarting is not None or not self.ready:
            self.log.warn("{trigger}: a restart is already under way or the server is not ready: ignored", trigger=trigger)
            return defer.succeed(False)
        self.restarting = handoff.Restart(self, trigger)

        def done(ok: Any) -> Any:
            self.restarting = None
            return ok

        return self.restarting.run().addBoth(done)

    def _on_sighup(self, signum: int, frame: FrameType | None) -> None:
        self.reactor.callFromThread(self.reload_tls, "SIGHUP")

    def reload_tls(self, trigger: str = "reload_tls") -> bool:
        """Re-read the certificate files; new connections use them.  A bad file keeps the old certificate."""
        always = {logs.ALWAYS: True}
        if self.tls is None:
            ok, message = True, "ssl_mode=None: no certificate to reload"
            self.log.info("{trigger}: {message}", trigger=trigger, message=message, **always)
        else:
            old = self.tls.material
            try:
                new = self.tls.reload()
            except ConfigError as e:
                ok, message = False, f"certificate reload failed, keeping the current one ({old.describe()}): {e}"
                self.log.error("{trigger}: {message}", trigger=trigger, message=message)
            except Exception:  # a bug, not a bad file: still keep serving with the old certificate
                ok, message = False, f"certificate reload failed unexpectedly, keeping the current one ({old.describe()}); see the log"
                self.log.failure("{trigger}: certificate reload failed unexpectedly", trigger=trigger)
            else:
                ok = True
                same = " (unchanged)" if new.serial == old.serial and new.certificate == old.certificate else ""
                message = f"certificate reloaded{same}: {new.describe()}"
                self.log.info("{trigger}: {message}", trigger=trigger, message=message, **always)
                for warning in new.warnings:
                    self.log.warn("{warning}", warning=warning)
        try:
            control.write_reload_status(self.config.data_dir, ok, message, trigger)
        except OSError as e:
            self.log.warn("cannot record the reload outcome in {data_dir}: {error}", data_dir=str(self.config.data_dir), error=str(e))
        return ok

    def _stop_control(self) -> None:
        if self._old_sighup is not None:
            try:
                signal.signal(signal.SIGHUP, self._old_sighup)
            except (ValueError, TypeError):
                pass
            self._old_sighup = None
        control.remove_pid(self.config.data_dir)
        if self.core is not None:
            self.observability.stopped()

    def _failed_start(self, failure: Failure) -> None:
        self.log.failure("cannot load the store; stopping", failure)
        self.reactor.stop()

    # -- stop ----------------------------------------------------------------------------

    @defer.inlineCallbacks
    def stopService(self) -> Any:
        self.ready = False
        self._stop_control()
        if self.handed_over:
            self.log.info("handed over to the new process: exiting", **{logs.ALWAYS: True})
        else:
            self.log.info("stopping: closing listeners and subscriptions", **{logs.ALWAYS: True})
        yield defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in self.ports], consumeErrors=True)
        self.ports = []
        if self._purge is not None and self._purge.running:
            self._purge.stop()
        if self._purge_kept is not None and self._purge_kept.running:
            self._purge_kept.stop()
        if self.addin_factory is not None:
            self.addin_factory.end_all("service stopping")
        if self.core is not None:
            self.web_subscriptions.end_all("service stopping")
        if self.store is not None:
            self.store.stop_watching()
        if self.core is not None:
            yield self.core.hub.close()
        yield self.site.drain(self.reactor, timeout=5.0)
        yield super().stopService()
        # Give queued frames and the goodbye FINs a moment to leave.
        yield task.deferLater(self.reactor, 0.2, lambda: None)
        if self.store is not None:
            yield self.store.close()
