"""
The service's observability surface: ``/metrics`` (Prometheus, through
``prometheus_client``'s Twisted ``MetricsResource``) and ``/status.json`` on the
loopback admin listener, an optional ``metrics_listen`` listener with basic auth,
and ``DATA_DIR/admin.json`` which tells ``pns4ones-admin status`` where to ask.

``/status.json`` answers only with the bearer token written (mode 0600) to
``DATA_DIR/admin.json`` at start: whoever can read the data directory's secrets
may read the live figures, other local users may not (the admin listener is on
loopback, open to every local user).  ``/metrics`` on the admin listener holds no
secrets nor user ids and needs no token, so a local Prometheus can scrape it.

Import this module from the service only: it imports the reactor.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.twisted import MetricsResource
from twisted.internet.interfaces import IReactorTime
from twisted.internet.tcp import Port
from twisted.logger import Logger
from twisted.web import resource, server
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from . import __version__, compiled, control, trace
from .config import Config
from .http.site import ApiSite, json_body
from .jsondoc import JSONObject
from .metrics import CUT_REASONS, Metrics
from .status import ADMIN_FILE
from .store import Store, redact_url

if TYPE_CHECKING:
    from .core import Core
    from .http.handlers import Handlers
    from .tls import ReloadableServerTLS
    from .transports.addin import AddinFactory

# -- what this module reads and sets of the service -------------------------------------------


class StatusPanel(Protocol):
    """The admin panel, as far as observability is concerned: where its status page gets its figures."""

    status_source: Callable[[], JSONObject] | None


class ObservedService(Protocol):
    """
    Every part of the service (:class:`pns4ones.service.PnsService`) this module
    reads, or hooks into; the parts are read-only but for ``metrics_site``,
    which :class:`Observability` sets.
    """

    metrics_site: ApiSite | None

    @property
    def config(self) -> Config: ...
    @property
    def reactor(self) -> IReactorTime: ...
    @property
    def ready(self) -> bool: ...
    @property
    def running(self) -> int: ...
    @property
    def core(self) -> Core | None: ...
    @property
    def store(self) -> Store | None: ...
    @property
    def tls(self) -> ReloadableServerTLS | None: ...
    @property
    def api(self) -> Handlers: ...
    @property
    def site(self) -> ApiSite: ...
    @property
    def api_factory(self) -> object: ...
    @property
    def addin_factory(self) -> AddinFactory | None: ...
    @property
    def admin_site(self) -> ApiSite: ...
    @property
    def admin_panel(self) -> StatusPanel: ...
    @property
    def ports(self) -> Sequence[Port]: ...


def _built(service: ObservedService) -> tuple[Core, Store, AddinFactory]:
    """The parts :meth:`PnsService.build` makes before this module is wired in (and so before any of its answers)."""
    core, store, factory = service.core, service.store, service.addin_factory
    assert core is not None and store is not None and factory is not None  # (built before Observability)
    return core, store, factory


# -- the figures computed at scrape time ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Figures:
    """One scrape's live figures (before the first refresh: none)."""

    #: Subscriptions per application that has any.
    apps: dict[str, int] = field(default_factory=dict)
    #: Every application of the registry (0 subscriptions when not in ``apps``).
    known: list[str] = field(default_factory=list)
    connections: int = 0
    ready: float = 0.0
    store_up: float = 1.0
    #: When the HTTPS certificate expires (Unix time); None without HTTPS.
    expiry: float | None = None


class LiveFigures:
    """
    Figures read from the service at scrape time, in the reactor thread (the
    scrape's ``render``), then exposed by the collector that ``MetricsResource``
    runs in a worker thread: the hub is never read from another thread.
    """

    def __init__(self, service: ObservedService) -> None:
        self.service = service
        self._snapshot = _Figures()

    def refresh(self) -> None:
        svc = self.service
        counts = svc.core.hub.counts() if svc.core is not None else {}
        factory = svc.addin_factory
        material = svc.tls.material if svc.tls is not None else None
        self._snapshot = _Figures(
            apps={app: sum(ibs.values()) for app, ibs in counts.items()},
            known=list(svc.core.apps) if svc.core is not None else [],
            connections=len(factory.connections) if factory is not None else 0,
            ready=1.0 if svc.ready else 0.0,
            store_up=1.0 if svc.store is None or svc.store.available else 0.0,
            expiry=material.certificate.not_valid_after_utc.timestamp() if material is not None else None,
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self._snapshot
        subs = GaugeMetricFamily("pns4ones_subscriptions", "Live add-in subscriptions by application", labels=["application"])
        apps = dict.fromkeys(snap.known, 0)
        apps.update(snap.apps)
        for app, count in sorted(apps.items()):
            subs.add_metric([app], count)
        yield subs
        yield GaugeMetricFamily("pns4ones_connections", "Open add-in TCP connections, registered or not", value=snap.connections)
        yield GaugeMetricFamily(
            "pns4ones_ready", "1 while the node accepts work (store open, listeners bound, not stopping)", value=snap.ready
        )
        yield GaugeMetricFamily(
            "pns4ones_store_up", "1 while the store answers (0: PostgreSQL unreachable, reconnecting)", value=snap.store_up
        )
        info = GaugeMetricFamily("pns4ones_info", "The running version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        if snap.expiry is not None:
            yield GaugeMetricFamily(
                "pns4ones_tls_certificate_expiry_timestamp_seconds",
                "Unix time when the send API's HTTPS certificate expires",
                value=snap.expiry,
            )


class ScrapeResource(resource.Resource):
    """``MetricsResource`` behind a refresh of the live figures in the reactor thread."""

    isLeaf = True

    def __init__(self, metrics: Metrics, figures: LiveFigures) -> None:
        super().__init__()
        self.figures = figures
        self.inner = MetricsResource(metrics.registry)

    def render(self, request: server.Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return _not_allowed(request)
        self.figures.refresh()
        return self.inner.render(request)


def _not_allowed(request: server.Request) -> bytes:
    """405 in the JSON shape of every other error (twisted.web's is HTML; prometheus_client's plain text)."""
    request.setHeader(b"Allow", b"GET, HEAD")
    method = request.method.decode("latin-1")
    return json_body(request, 405, {"error": "method_not_allowed", "reason": f"{method} is not allowed here; use GET"})


# -- status for pns4ones-admin status ---------------------------------------------------------


def status_doc(service: ObservedService, metrics: Metrics) -> JSONObject:
    core, store, factory = _built(service)
    counts = core.hub.counts()
    apps = {}
    for app_id in sorted(set(core.apps) | set(counts)):
        ibs = counts.get(app_id, {})
        app = core.apps.get(app_id)
        apps[app_id] = {
            "title": app.title if app is not None else None,
            "subscriptions": sum(ibs.values()),
            "ibs": dict(sorted(ibs.items())),
        }
    data_dir = Path(service.config.data_dir)
    store_bytes = 0
    for path in data_dir.glob("*.db*"):
        try:
            store_bytes += path.stat().st_size
        except OSError:
            pass
    return {
        "version": __version__,
        "build": compiled.build(),
        "pid": os.getpid(),
        "started": metrics.started,
        "uptime": round(time.time() - metrics.started, 3),
        "ready": bool(service.ready),
        "subscriptions": len(core.hub),
        "connections": len(factory.connections),
        "applications": apps,
        "last_minute": metrics.last_minute(),
        "totals": {"sends": metrics.sends, "deliveries": metrics.deliveries},
        "store": {
            "directory": str(data_dir),
            "bytes": store_bytes,
            "location": store.location,
            "available": store.available,
        },
        "listeners": listeners(service),
    }


def _samples(metrics: Metrics) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in metrics.registry.collect() for s in family.samples]


def console_status(service: ObservedService, metrics: Metrics, figures: LiveFigures) -> JSONObject:
    """The admin panel's status page: :func:`status_doc` and the figures of ``/metrics``, summed for people."""
    figures.refresh()
    doc = status_doc(service, metrics)
    samples = _samples(metrics)

    def total(name: str, **match: str) -> float:
        return sum(v for n, labels, v in samples if n == name and all(labels.get(k) == x for k, x in match.items()))

    def by(name: str, label: str, **match: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for n, labels, v in samples:
            if n == name and v and all(labels.get(k) == x for k, x in match.items()):
                out[labels.get(label, "")] = out.get(labels.get(label, ""), 0) + int(v)
        return dict(sorted(out.items()))

    cfg = service.config
    _ready, reason = readiness(service)()
    redis = cfg.hub != "local"
    doc.update(
        ready_reason=reason,
        registrations={
            "accepted": int(total("pns4ones_registrations_total", result="accepted")),
            "rejected": by("pns4ones_registrations_total", "reason", result="rejected"),
        },
        cuts={reason: int(total("pns4ones_subscriptions_cut_total", reason=reason)) for reason in CUT_REASONS},
        tokens_issued=int(total("pns4ones_tokens_issued_total")),
        panel_test_messages=int(total("pns4ones_panel_test_messages_total")),
        http=by("pns4ones_http_requests_total", "status"),
        process={
            "cpu_seconds": total("process_cpu_seconds_total"),
            "resident_bytes": total("process_resident_memory_bytes"),
            "open_fds": total("process_open_fds"),
            "max_fds": total("process_max_fds"),
        },
        hub={
            "kind": "redis" if redis else "local",
            "location": redact_url(cfg.hub) if redis else "",
            "connected": bool(total("pns4ones_hub_connected")),
            "node": cfg.node,
            "nodes": 1 + int(total("pns4ones_hub_nodes")),
            "published": int(total("pns4ones_hub_publishes_total", result="ok")),
            "publish_failures": int(total("pns4ones_hub_publishes_total", result="failed")),
            "received": int(total("pns4ones_hub_received_total")),
        },
    )
    return doc


def listeners(service: ObservedService) -> list[JSONObject]:
    names = {id(service.api_factory): "send API", id(service.addin_factory): "add-in subscriptions", id(service.admin_site): "admin panel"}
    site = service.metrics_site
    if site is not None:
        names[id(site)] = "metrics"
    out = []
    for port in service.ports:
        host = port.getHost()
        out.append({"name": names.get(id(port.factory), "other"), "host": host.host, "port": host.port})
    return out


class StatusResource(resource.Resource):
    isLeaf = True
    log = Logger()

    def __init__(self, service: ObservedService, metrics: Metrics, token: str) -> None:
        super().__init__()
        self.service = service
        self.metrics = metrics
        self._expected = f"Bearer {token}".encode()

    def render(self, request: server.Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return _not_allowed(request)
        return super().render(request)

    def render_GET(self, request: server.Request) -> bytes:
        given = request.getHeader(b"authorization") or b""
        if not hmac.compare_digest(given, self._expected):
            self.log.warn(
                "status: refused a request without the status token from {peer}",
                peer=getattr(request.getClientAddress(), "host", "?"),
                event="rejected",
            )
            return json_body(
                request,
                401,
                {"error": "unauthorized", "reason": f"send the token of {ADMIN_FILE} in the data directory (Authorization: Bearer ...)"},
            )
        return self.answer(request)

    def answer(self, request: server.Request) -> bytes:
        return json_body(request, 200, status_doc(self.service, self.metrics))


_NUMBER = re.compile(r"[0-9]{1,19}")


class TraceResource(StatusResource):
    """
    ``/trace.json?app=&ib=&user=&id=&limit=``: this node's delivery trace
    (``pns4ones-admin trace``), with the status token.
    """

    def answer(self, request: server.Request) -> bytes:
        def arg(name: bytes) -> str:
            values = request.args.get(name) or [b""]
            return values[0].decode("utf-8", "replace")

        message_id, limit = arg(b"id").strip() or "0", arg(b"limit").strip() or "50"
        if not _NUMBER.fullmatch(message_id) or not _NUMBER.fullmatch(limit) or not 1 <= int(limit) <= 1_000_000:
            reason = "id must be a message id (digits) and limit a number from 1 to 1000000"
            return json_body(request, 400, {"error": "bad_request", "reason": reason})
        core, _, _ = _built(self.service)
        query = trace.Query(arg(b"app"), arg(b"ib"), arg(b"user"), int(message_id))
        groups_of = trace.UserGroups(core.membership.groups_of, core.presence)
        titles = {app.id: app.title for app in core.apps.values()}
        return json_body(request, 200, trace.report(core.trace, query, groups_of, int(limit), self.service.config.node, titles))


class AdminRoot(resource.Resource):
    """The admin listener's root: ``/metrics`` and ``/status.json`` here, the rest to the panel."""

    def __init__(self, panel: IResource, children: dict[bytes, IResource]) -> None:
        super().__init__()
        self._panel = panel
        self._mine = children

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        mine = self._mine.get(path)
        if mine is not None and not request.postpath:
            return mine
        request.prepath.pop()
        request.postpath.insert(0, path)
        return self._panel

    def render(self, request: server.Request) -> bytes | int:
        return self._panel.render(request)


# -- metrics_listen ---------------------------------------------------------------------------


class BasicAuth(resource.Resource):
    """Basic authentication in front of a resource; the secret compared in constant time."""

    isLeaf = True
    log = Logger()

    def __init__(self, inner: IResource, credentials: str) -> None:
        super().__init__()
        self.inner = inner
        self._expected = credentials.encode("utf-8")

    def render(self, request: server.Request) -> bytes | int:
        given = request.getUser() + b":" + request.getPassword()
        if not hmac.compare_digest(given, self._expected):
            self.log.warn(
                "metrics: refused a scrape with wrong or missing credentials from {peer}",
                peer=getattr(request.getClientAddress(), "host", "?"),
                event="rejected",
            )
            request.setHeader(b"WWW-Authenticate", b'Basic realm="pns4ones metrics"')
            return json_body(request, 401, {"error": "unauthorized", "reason": "basic authentication required (metrics_auth)"})
        return self.inner.render(request)


class MetricsOnly(resource.Resource):
    """The ``metrics_listen`` root: ``/metrics`` and nothing else."""

    def __init__(self, scrape: IResource) -> None:
        super().__init__()
        self._scrape = scrape

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        if path == b"metrics" and not request.postpath:
            return self._scrape
        return _NotFound()

    def render(self, request: server.Request) -> bytes:
        return _NotFound().render(request)


class _NotFound(resource.Resource):
    isLeaf = True

    def render(self, request: server.Request) -> bytes:
        return json_body(request, 404, {"error": "not_found", "reason": "only /metrics is served here"})


# -- DATA_DIR/admin.json ------------------------------------------------------------------------


def new_status_token() -> str:
    return secrets.token_urlsafe(32)


def write_admin_file(data_dir: Path, admin_port: int, token: str) -> Path:
    """Where the admin listener is and the status token (mode 0600: mkstemp's)."""
    path = Path(data_dir) / ADMIN_FILE
    doc = {"pid": os.getpid(), "admin_port": admin_port, "host": "127.0.0.1", "status_token": token, "started": time.time()}
    control.atomic_write(path, json.dumps(doc) + "\n")
    return path


def remove_admin_file(data_dir: Path) -> None:
    path = Path(data_dir) / ADMIN_FILE
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass


def readiness(service: ObservedService) -> Callable[[], tuple[bool, str]]:
    """``/ready``: the ``ready`` flag is set once the store is loaded and the listeners accept, cleared first on stop."""

    def ready() -> tuple[bool, str]:
        if service.ready:
            core, store, _ = _built(service)
            if not store.available:
                return False, f"store unavailable: {store.unavailable_reason}"
            return core.hub.status()
        return False, "stopping" if service.running else "starting"

    return ready


# -- wiring into the service ----------------------------------------------------------------------


class Observability:
    """Built with the service's parts (:meth:`PnsService.build`); one hook on each part."""

    log = Logger()

    def __init__(self, service: ObservedService) -> None:
        from twisted.internet import task

        cfg = service.config
        core, _, factory = _built(service)
        self.service = service
        self.metrics = metrics = Metrics(service.reactor)
        self.figures = LiveFigures(service)
        metrics.add_collector(self.figures.collect)
        # the hub's own (between nodes: connected, publishes)
        metrics.add_collector(core.hub.metric_families)
        core.metrics = metrics
        core.hub.on_routed = metrics.routed
        service.api.metrics = metrics
        service.api.readiness = readiness(service)
        service.site.on_request = metrics.http_request
        factory.metrics = metrics
        self.token = new_status_token()
        scrape = ScrapeResource(metrics, self.figures)
        admin = service.admin_site
        admin.resource = AdminRoot(
            admin.resource,
            {
                b"metrics": scrape,
                b"status.json": StatusResource(service, metrics, self.token),
                b"trace.json": TraceResource(service, metrics, self.token),
            },
        )
        service.admin_panel.status_source = lambda: console_status(service, metrics, self.figures)
        service.metrics_site = None
        if cfg.metrics_listen is not None:
            from .http.site import ApiSite

            guarded = BasicAuth(scrape, cfg.metrics_auth) if cfg.metrics_auth else scrape
            service.metrics_site = ApiSite(MetricsOnly(guarded), cfg.max_body_size, cfg.request_timeout, clock=service.reactor)
            service.metrics_site.noisy = False
        self._ticker = task.LoopingCall(metrics.tick)
        self._ticker.clock = service.reactor

    def started(self) -> None:
        cfg = self.service.config
        self._ticker.start(1.0, now=True)
        try:
            write_admin_file(cfg.data_dir, cfg.admin_port, self.token)
        except OSError as e:
            self.log.warn(
                "cannot write {file} in {data_dir} (pns4ones-admin status will not find this server): {error}",
                file=ADMIN_FILE,
                data_dir=str(cfg.data_dir),
                error=str(e),
            )
        if cfg.metrics_listen is not None:
            auth = "basic auth" if cfg.metrics_auth else "no authentication"
            self.log.info(
                "metrics (HTTP, {auth}) on {where}, path /metrics", auth=auth, where=cfg.metrics_listen.describe(), pns_always=True
            )

    def stopped(self) -> None:
        if self._ticker.running:
            self._ticker.stop()
        remove_admin_file(self.service.config.data_dir)
