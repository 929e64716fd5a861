"""The broker's Prometheus metrics: one registry per broker (``metrics_for``), names ``access_*``.

Counters and histograms move where things happen (the request middleware, the tunnel's opens,
closes and cuts, the ledger's appends, the rate limits, the event bus's grant decisions and
ends); what lives in the database is read when scraped (``observe.collector``). The tunnel's
per-frame path is never touched: a channel's bytes are added once, when it closes.

The registry is the broker's own, not prometheus_client's global one, so that several brokers
in one process (the tests) each count for themselves.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from sqlalchemy import event
from sqlalchemy.engine import Engine, ExceptionContext

from access.broker.events.bus import Event, GrantDecided, GrantEnded
from access.broker.observe.collector import DatabaseCollector, StatementCounts
from access.broker.perbroker import PerBroker

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = ["CONTENT_TYPE", "UNMATCHED", "Metrics", "for_engine", "metrics_for"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The route label of a request no route matched: raw paths would make a label per scanner probe.
UNMATCHED = "unmatched"

# Seconds: from a fast route to the database's statement timeout.
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_CUT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_APPEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# Ends by another reason (free-form ones such as "sessions revoked") count as "other".
_END_REASONS = frozenset({"expired", "revoked", "locked", "policy", "denied"})


class Metrics:
    """The broker's metrics. Every method is thread-safe (worker threads count too)."""

    def __init__(self, broker: Broker) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.database_errors = Counter(
            "access_database_errors",
            "database errors seen by this process (statements, connections, the scrape's own reads)",
            registry=None,
        )
        # The statement log, once made, puts itself here (audit imports observe, not the reverse).
        self.statement_log: Callable[[], StatementCounts | None] = _nothing
        # The database's readings first: an error they meet is counted in the same scrape.
        registry.register(DatabaseCollector(broker, self.database_errors, lambda: self.statement_log()))
        registry.register(self.database_errors)
        self.requests = Counter(
            "access_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "access_http_request_duration_seconds",
            "time to answer an HTTP request, by route template and method",
            ["route", "method"],
            buckets=_REQUEST_BUCKETS,
            registry=registry,
        )
        self.grant_decisions = Counter(
            "access_grant_decisions",
            "grant requests decided by this process, by outcome (active, denied, pending)",
            ["decision"],
            registry=registry,
        )
        self.grant_ends = Counter(
            "access_grant_ends", "grants ended by this process, by reason", ["reason"], registry=registry
        )
        self.tunnels_open = Gauge("access_tunnels_open", "tunnel WebSockets open now", registry=registry)
        self.channels_open = Gauge(
            "access_channels_open", "channels (connections to targets) open now", registry=registry
        )
        self.tunnel_bytes = Counter(
            "access_tunnel_bytes",
            "bytes relayed by closed channels: up (client to target) and down",
            ["direction"],
            registry=registry,
        )
        self.cut_seconds = Histogram(
            "access_tunnel_cut_seconds",
            "from a tunnel's end being decided here (grant or session ended) to its socket closed",
            buckets=_CUT_BUCKETS,
            registry=registry,
        )
        self.ledger_append_seconds = Histogram(
            "access_ledger_append_seconds",
            "one ledger append: the chain's lock, its head and the insert",
            buckets=_APPEND_BUCKETS,
            registry=registry,
        )
        self.rate_limited = Counter(
            "access_rate_limited",
            "requests refused by a rate limit or a per-user ceiling, by limit",
            ["limit"],
            registry=registry,
        )
        broker.events.subscribe(self._on_event)
        event.listen(broker.engine, "handle_error", self._on_database_error)
        _by_engine[broker.engine] = self

    def _on_event(self, happened: Event) -> None:
        if isinstance(happened, GrantDecided):
            self.grant_decisions.labels(happened.state).inc()
        elif isinstance(happened, GrantEnded):
            reason = happened.reason if happened.reason in _END_REASONS else "other"
            self.grant_ends.labels(reason).inc()

    def _on_database_error(self, context: ExceptionContext) -> None:
        self.database_errors.inc()
        # Marked, so that the scrape that meets the same error (``collector``) counts it once.
        with contextlib.suppress(AttributeError, TypeError):
            context.original_exception.access_counted = True  # type: ignore[attr-defined]

    def exposition(self) -> bytes:
        """The text format a Prometheus scrape reads (the database gauges read now)."""
        return generate_latest(self.registry)


def _nothing() -> None:
    return None


# The ledger and the rate limits see a connection, not the broker: its engine finds the metrics.
_by_engine: weakref.WeakKeyDictionary[Engine, Metrics] = weakref.WeakKeyDictionary()


def for_engine(engine: Engine) -> Metrics | None:
    """The metrics of the broker on ``engine``, if it has any yet (admin commands have none)."""
    return _by_engine.get(engine)


metrics_for = PerBroker(Metrics)
