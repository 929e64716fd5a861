"""The metrics read at scrape time: the database's counts and ages, the pool, the statement log.

A scrape while the database is down still answers: ``access_database_up 0``, the error counted,
and the gauges that need the database left out (an absent series, not a made-up zero).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

import sqlalchemy as sa
from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from access.broker.store.gauges import DatabaseGauges, read_gauges
from access.shared.models import GrantState

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from access.broker.runtime import Broker

__all__ = ["DatabaseCollector", "StatementCounts"]

log = logging.getLogger(__name__)

# Every state a grant can be in: each is always exported, 0 when none is in it.
_STATES = tuple(state.value for state in GrantState)


class StatementCounts(Protocol):
    """What the scrape reads of the statement log (``audit.statements.StatementLog``)."""

    @property
    def pending(self) -> int: ...
    @property
    def pending_bytes(self) -> int: ...
    @property
    def refused(self) -> int: ...


class DatabaseCollector(Collector):
    """Reads the broker's database when scraped (in the scraping thread: never the event loop)."""

    def __init__(
        self, broker: Broker, errors: Counter, statement_log: Callable[[], StatementCounts | None]
    ) -> None:
        self._broker = weakref.ref(broker)  # the broker's metrics must not keep it alive
        self._errors = errors
        self._statement_log = statement_log

    def describe(self) -> Iterator[Metric]:
        return iter(())  # names known only when collected; the registry must not collect to learn them

    def collect(self) -> Iterator[Metric]:
        broker = self._broker()
        if broker is None:
            return
        yield from _pool(broker.engine)
        yield from _statement_log(self._statement_log())
        gauges: DatabaseGauges | None = None
        try:
            with broker.engine.connect() as conn:
                gauges = read_gauges(conn)
        except sa.exc.SQLAlchemyError as exc:
            if not getattr(getattr(exc, "orig", None), "access_counted", False):
                self._errors.inc()  # (the engine's ``handle_error`` hook counts most, not all)
            log.warning("metrics: cannot read the database: %s", exc.__class__.__name__)
        yield _gauge(
            "access_database_up", "1 if this scrape could read the database, else 0", int(gauges is not None)
        )
        if gauges is not None:
            yield from _database(gauges, broker.clock.now().timestamp())


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _pool(engine: sa.Engine) -> Iterator[Metric]:
    pool = engine.pool
    if isinstance(pool, sa.pool.QueuePool):
        yield _gauge(
            "access_database_pool_in_use", "pooled database connections checked out now", pool.checkedout()
        )
        yield _gauge(
            "access_database_pool_size",
            "the pool's size (more may open under load: max_overflow)",
            pool.size(),
        )


def _statement_log(statements: StatementCounts | None) -> Iterator[Metric]:
    if statements is None:
        return  # no channel has been logged yet in this process
    yield _gauge(
        "access_statement_log_pending",
        "statements tapped from channels and not yet written to the ledger (the statement audit's lag)",
        statements.pending,
    )
    yield _gauge("access_statement_log_pending_bytes", "bytes of those statements", statements.pending_bytes)
    refused = CounterMetricFamily(
        "access_statement_log_refused", "statements refused: the log was full or its journal failed"
    )
    refused.add_metric([], statements.refused)
    yield refused


def _database(gauges: DatabaseGauges, now: float) -> Iterator[Metric]:
    states = GaugeMetricFamily("access_grants", "grants in the database, by state", labels=["state"])
    for state in sorted({*_STATES, *gauges.grants_by_state}):
        states.add_metric([state], gauges.grants_by_state.get(state, 0))
    yield states
    yield _gauge(
        "access_approvals_pending",
        "grants waiting for a reviewer's approval",
        gauges.grants_by_state.get("pending", 0),
    )
    yield _gauge("access_outbox_depth", "after-commit work not done yet (outbox rows)", gauges.outbox_depth)
    oldest = 0.0 if gauges.outbox_oldest is None else max(0.0, now - gauges.outbox_oldest.timestamp())
    yield _gauge(
        "access_outbox_oldest_age_seconds", "age of the oldest outbox row not done (0: none)", oldest
    )
    yield _gauge("access_ledger_entries", "entries in the audit ledger", gauges.ledger_entries)
    yield _gauge(
        "access_ledger_entries_unsigned",
        "ledger entries after the last signed checkpoint",
        gauges.ledger_entries - gauges.checkpoint_seq,
    )
    if gauges.checkpoint_at is not None:
        yield _gauge(
            "access_checkpoint_age_seconds",
            "seconds since the last signed ledger checkpoint",
            max(0.0, now - gauges.checkpoint_at.timestamp()),
        )
