"""
Observability counters, behind one object the hot paths call.

:data:`NULL` is a do-nothing stand-in (the default everywhere, so parts built
without a service, as in unit tests, need no registry).  :class:`Metrics` is the
real thing over ``prometheus_client``; import it only once the reactor is
installed (``prometheus_client.twisted`` imports the reactor), i.e. from the
service, never from the twistd plugin.

Cost rules: the hot paths call at most one method per send and per route.  The
counters a send moves (messages sent, deliveries, frame bytes, the send latency
histogram, HTTP requests) are plain numbers in dictionaries, added to in the
reactor thread (no lock, no ``prometheus_client`` child per call: a few
hundred nanoseconds instead of six locked ``inc()``), and turned into metric
families only when scraped (:class:`_CounterFamily`, :class:`_Histogram`),
with the same names, help, labels, order and values as ``Counter`` and
``Histogram`` would expose.  A scrape may run in a worker thread
(``MetricsResource``): it reads copies taken in one C-level step each.  Live
subscriptions are not counted per event: a collector asks the hub at scrape
time.  Labels never carry user ids, information base ids or
peers: only application ids (bounded by the store), recipient types, reasons,
routes and statuses from fixed sets.
"""

from __future__ import annotations

import collections
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric


class NullMetrics:
    """Counts nothing (parts used without a service)."""

    __slots__ = ("deliveries", "sends")

    def __init__(self) -> None:
        #: Plain running totals (Metrics: for the status command's "last minute" figures).
        self.sends = 0
        self.deliveries = 0

    def registration_accepted(self) -> None:
        pass

    def registration_rejected(self, reason: str) -> None:
        pass

    def cut(self, reason: str) -> None:
        pass

    def addin_refused(self, reason: str) -> None:
        pass

    def sent(self, app_id: str, kind: str, seconds: float) -> None:
        pass

    def panel_sent(self, app_id: str, kind: str, seconds: float) -> None:
        pass

    def routed(self, app_id: str, written: int, frame_bytes: int) -> None:
        pass

    def token_issued(self, app_id: str) -> None:
        pass

    def http_request(self, path: bytes, status: int) -> None:
        pass


NULL = NullMetrics()

#: Registration rejections by reason (anything else is counted as "other").
REJECT_REASONS = (
    "unknown-application", "bad-signature", "malformed", "truncated", "signature-length",
    "oversized", "not-allowed", "limit", "other",
)  # fmt: skip
#: Subscriptions the server cut: slow reader (send_buffer_limit), idle (no registration in time), admin (disconnected in the panel).
CUT_REASONS = ("slow-reader", "idle", "admin")
#: Add-in connections closed before they registered, to keep the listener's bounds: refused at
#: accept (too many unregistered from the address or in all, too few free file descriptors), or
#: the oldest unregistered one closed to make room for a new one.
ADDIN_REFUSE_REASONS = ("unregistered-per-address", "unregistered-total", "fd-reserve", "evicted")
#: Routes of the send API listener for the HTTP request counter (anything else: "other").
ROUTES = {
    b"/auth": "/auth",
    b"/sendmessage": "/sendmessage",
    b"/sendmessages": "/sendmessages",
    b"/health": "/health",
    b"/ready": "/ready",
    b"/metrics": "/metrics",
}
#: Send latency buckets (seconds): a local send takes tens of microseconds, a big fan-out milliseconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _CounterFamily:
    """
    A labelled counter whose values are plain numbers (``values[labels] += n``
    in the reactor thread), exposed at scrape time exactly as a
    ``prometheus_client.Counter`` of that name, help and labels.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        source: Callable[[], Iterable[tuple[tuple[str, ...], int | float]]] | None = None,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = list(labelnames)
        self.values: dict[tuple[str, ...], int | float] = {}
        #: Where the values are read at scrape time instead (labels, value), if not in ``values``.
        self.source = source

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        samples = self.values.copy().items() if self.source is None else self.source()  # (a C-level copy: safe from a scrape thread)
        for labels, value in samples:
            family.add_metric(labels, float(value))
        return [family]

    def describe(self) -> Iterable[Metric]:
        from prometheus_client.core import CounterMetricFamily

        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]


class _Histogram:
    """
    An unlabelled histogram counted in a plain list (``counts[bisect_left(bounds,
    value)] += 1``: the first bucket whose bound is at least the value, as
    ``Histogram.observe`` picks), exposed exactly as ``prometheus_client.Histogram``.
    """

    __slots__ = ("bounds", "counts", "documentation", "name", "sum")

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = (*(float(b) for b in buckets), float("inf"))
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        counts, total = self.counts.copy(), self.sum
        family = HistogramMetricFamily(self.name, self.documentation)
        acc = 0.0
        buckets = []
        for bound, count in zip(self.bounds, counts):
            acc += count
            buckets.append((floatToGoString(bound), acc))
        family.add_metric([], buckets, total)
        return [family]

    def describe(self) -> Iterable[Metric]:
        from prometheus_client.core import HistogramMetricFamily

        return [HistogramMetricFamily(self.name, self.documentation)]


class _AppTotals:
    """
    One application's running totals of the counters a send moves, found with
    one look-up by its id (the counter families read them at scrape time).
    """

    __slots__ = ("deliveries", "frame_bytes", "sent")

    def __init__(self) -> None:
        #: Frames written to subscriptions, and their bytes.
        self.deliveries = 0
        self.frame_bytes = 0
        #: Messages accepted, by recipient type.
        self.sent: dict[str, int] = {}


class Metrics(NullMetrics):
    """The node's metrics in their own registry (with the library's process metrics)."""

    __slots__ = (
        "_accepted",
        "_addin_refused",
        "_apps",
        "_bytes",
        "_cuts",
        "_deliveries",
        "_history",
        "_http",
        "_http_counts",
        "_http_labels",
        "_latency",
        "_latency_bounds",
        "_latency_counts",
        "_messages",
        "_panel_messages",
        "_registrations",
        "_rejected",
        "_token_children",
        "_tokens",
        "clock",
        "registry",
        "started",
    )

    def __init__(self, clock: Any) -> None:
        from prometheus_client import (
            GC_COLLECTOR,
            PLATFORM_COLLECTOR,
            CollectorRegistry,
            Counter,
            ProcessCollector,
            disable_created_metrics,
        )

        disable_created_metrics()  # no *_created series: half the series, nothing the dashboard uses

        self.clock = clock
        self.started = time.time()
        self.registry = registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=registry)
        for default in (PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(default)
        self._registrations = Counter(
            "pns4ones_registrations",
            "Add-in registrations by result (accepted, rejected) and reason of a rejection",
            ["result", "reason"],
            registry=registry,
        )
        self._accepted = self._registrations.labels("accepted", "")
        self._rejected = {r: self._registrations.labels("rejected", r) for r in REJECT_REASONS}
        cuts = Counter(
            "pns4ones_subscriptions_cut",
            "Subscriptions the server cut off: slow-reader (over send_buffer_limit queued), idle (no registration within registration_timeout), "
            "admin (disconnected from the admin panel)",
            ["reason"],
            registry=registry,
        )
        self._cuts = {r: cuts.labels(r) for r in CUT_REASONS}
        refused = Counter(
            "pns4ones_addin_refused",
            "Add-in connections closed before registering to keep the listener's bounds: unregistered-per-address "
            "(max_unregistered_per_address), unregistered-total (max_unregistered), fd-reserve (fewer than fd_reserve "
            "file descriptors free), evicted (the oldest unregistered connection closed to admit a new one)",
            ["reason"],
            registry=registry,
        )
        self._addin_refused = {r: refused.labels(r) for r in ADDIN_REFUSE_REASONS}
        self._apps: dict[str, _AppTotals] = {}
        self._messages = _CounterFamily(
            "pns4ones_messages_sent",
            "Messages accepted for sending, by application and recipient type",
            ["application", "recipient_type"],
            self._sent_samples,
        )
        registry.register(self._messages)
        self._deliveries = _CounterFamily(
            "pns4ones_deliveries",
            "Frames written to subscriptions (one per recipient session), by application",
            ["application"],
            self._delivery_samples,
        )
        registry.register(self._deliveries)
        self._panel_messages = Counter(
            "pns4ones_panel_test_messages",
            "Test messages sent from the admin panel, by application (also counted in pns4ones_messages_sent)",
            ["application"],
            registry=registry,
        )
        self._bytes = _CounterFamily(
            "pns4ones_frame_bytes", "Bytes of message frames written to subscriptions, by application", ["application"], self._byte_samples
        )
        registry.register(self._bytes)
        self._tokens = Counter(
            "pns4ones_tokens_issued", "Access tokens issued by /auth, by application", ["application"], registry=registry
        )
        self._latency = _Histogram(
            "pns4ones_send_latency_seconds", "From a send request received to the write to its last recipient queued", LATENCY_BUCKETS
        )
        registry.register(self._latency)
        self._http = _CounterFamily(
            "pns4ones_http_requests", "HTTP requests of the send API listener by route and status", ["route", "status"]
        )
        registry.register(self._http)
        self._latency_bounds = self._latency.bounds
        self._latency_counts = self._latency.counts
        self._http_counts = self._http.values
        #: (path, status) -> the labels it is counted under (bounded: unknown paths share "other").
        self._http_labels: dict[tuple[bytes, int], tuple[str, str]] = {}
        self._token_children: dict[str, Any] = {}
        super().__init__()  # (the running totals)
        self._history: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=62)

    # -- the hot paths ---------------------------------------------------------------

    def registration_accepted(self) -> None:
        self._accepted.inc()

    def registration_rejected(self, reason: str) -> None:
        (self._rejected.get(reason) or self._rejected["other"]).inc()

    def cut(self, reason: str) -> None:
        self._cuts[reason].inc()

    def addin_refused(self, reason: str) -> None:
        self._addin_refused[reason].inc()

    def _totals(self, app_id: str) -> _AppTotals:
        totals = self._apps[app_id] = _AppTotals()
        return totals

    def sent(self, app_id: str, kind: str, seconds: float) -> None:
        totals = self._apps.get(app_id)
        if totals is None:
            totals = self._totals(app_id)
        counts = totals.sent
        counts[kind] = counts.get(kind, 0) + 1
        self._latency_counts[bisect_left(self._latency_bounds, seconds)] += 1
        self._latency.sum += seconds
        self.sends += 1

    def panel_sent(self, app_id: str, kind: str, seconds: float) -> None:
        """A test message from the admin panel: a send like any other, and counted as the panel's."""
        self.sent(app_id, kind, seconds)
        self._panel_messages.labels(app_id).inc()

    def routed(self, app_id: str, written: int, frame_bytes: int) -> None:
        """Once per routed message: ``written`` sessions got ``frame_bytes`` each."""
        totals = self._apps.get(app_id)
        if totals is None:
            totals = self._totals(app_id)
        totals.deliveries += written
        totals.frame_bytes += written * frame_bytes
        self.deliveries += written

    # The counter families' values, read at scrape time (list(): a C-level copy, safe from a scrape thread).

    def _sent_samples(self) -> Iterator[tuple[tuple[str, ...], int]]:
        for app_id, totals in list(self._apps.items()):
            for kind, count in totals.sent.copy().items():
                yield (app_id, kind), count

    def _delivery_samples(self) -> Iterator[tuple[tuple[str, ...], int]]:
        for app_id, totals in list(self._apps.items()):
            if totals.deliveries or totals.frame_bytes:
                yield (app_id,), totals.deliveries

    def _byte_samples(self) -> Iterator[tuple[tuple[str, ...], int]]:
        for app_id, totals in list(self._apps.items()):
            if totals.deliveries or totals.frame_bytes:
                yield (app_id,), totals.frame_bytes

    def token_issued(self, app_id: str) -> None:
        child = self._token_children.get(app_id)
        if child is None:
            child = self._token_children[app_id] = self._tokens.labels(app_id)
        child.inc()

    def http_request(self, path: bytes, status: int) -> None:
        """The API site's per-answer hook (instead of an access log line)."""
        key = (path, status)
        labels = self._http_labels.get(key)
        if labels is None:
            labels = (ROUTES.get(path, "other"), str(status))
            if len(self._http_labels) < 1000:  # unknown paths share "other" but are distinct keys
                self._http_labels[key] = labels
        counts = self._http_counts
        counts[labels] = counts.get(labels, 0) + 1

    # -- live figures ------------------------------------------------------------------

    def add_collector(self, collect: Callable[[], Any]) -> None:
        """A collector computed at scrape time (``collect()`` yields metric families)."""

        class _Collector:
            def collect(self) -> Any:
                return collect()

            def describe(self) -> Any:
                return []

        self.registry.register(_Collector())

    def tick(self) -> None:
        """Every second: remember the totals, for figures over the last minute."""
        self._history.append((self.clock.seconds(), self.sends, self.deliveries))

    def last_minute(self) -> dict[str, int]:
        """Sends and deliveries over (about) the last 60 seconds."""
        now = self.clock.seconds()
        base = None
        for entry in self._history:
            if now - entry[0] <= 60.5:
                base = entry
                break
        if base is None:
            return {"sends": 0, "deliveries": 0}
        return {"sends": self.sends - base[1], "deliveries": self.deliveries - base[2]}

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
