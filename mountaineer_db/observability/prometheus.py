"""Prometheus metrics of the database layer (the `metrics` extra: `pip install mountaineer-db[metrics]`).

```python
from mountaineer_db.observability.prometheus import register_collector

register_collector()   # once, at startup: the default registry, served by your /metrics route
```

A collector over `mountaineer_db.observability.metrics.database_metrics()`, read at scrape time (nothing
runs between scrapes), labelled by `database`, `pool_type` and `application_name`; engines
with the same labels (one per event loop) are added up:

| metric | type | what |
|---|---|---|
| `mountaineer_db_connections_checked_out` | gauge | connections in use |
| `mountaineer_db_pool_idle_connections` | gauge | FIXED_PROCESS: connections idle in the pool |
| `mountaineer_db_pool_size` | gauge | FIXED_PROCESS: DATABASE_POOL_SIZE |
| `mountaineer_db_pool_overflow_connections` | gauge | FIXED_PROCESS: connections open beyond it |
| `mountaineer_db_checkouts_total` | counter | connections handed out |
| `mountaineer_db_pool_waits_total` | counter | checkouts that waited for a busy pool |
| `mountaineer_db_pool_wait_seconds_total` | counter | time spent waiting |
| `mountaineer_db_pool_timeouts_total` | counter | waits that gave up (DATABASE_POOL_TIMEOUT) |
| `mountaineer_db_connects_total` | counter | connections opened |
| `mountaineer_db_connect_failures_total` | counter | connection attempts that failed |
| `mountaineer_db_connect_seconds_total` | counter | time spent opening connections |
| `mountaineer_db_lazy_loads_total` | counter | DATABASE_LAZY_LOADS=warn: lazy loads by `model`, `attribute`, `origin` |
| `mountaineer_db_n_plus_one_total` | counter | requests with an N+1 warning, by `origin` (controller.action) |

`rate(mountaineer_db_connects_total[1m])` is the connect rate (with the default NULL pool,
one per request), and `rate(..._connect_seconds_total) / rate(..._connects_total)` their
latency. Counters restart when an engine is disposed. Under gunicorn's multiprocess mode
custom collectors are not aggregated: scrape each worker, or export per process.
"""

import weakref
from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from mountaineer_db.engines.loading_metrics import loading_metrics
from mountaineer_db.observability.metrics import EngineMetrics, database_metrics

__all__ = ["DatabaseCollector", "register_collector"]

_LABELS = ["database", "pool_type", "application_name"]
_GAUGES = (
    ("connections_checked_out", "checked_out", "Connections in use."),
    ("pool_idle_connections", "idle", "FIXED_PROCESS: connections idle in the pool."),
    ("pool_size", "pool_size", "FIXED_PROCESS: connections the pool keeps (DATABASE_POOL_SIZE)."),
    ("pool_overflow_connections", "overflow", "FIXED_PROCESS: connections open beyond the pool size."),
)
_COUNTERS = (
    ("checkouts", "checkouts", "Connections handed out by the pool."),
    ("pool_waits", "waits", "Checkouts that waited because every pooled connection was busy."),
    ("pool_wait_seconds", "wait_seconds", "Seconds spent waiting for a pooled connection."),
    ("pool_timeouts", "timeouts", "Waits that gave up after DATABASE_POOL_TIMEOUT."),
    ("connects", "connects", "Connections opened to the database (or PgBouncer)."),
    ("connect_failures", "connect_failures", "Connection attempts that failed."),
    ("connect_seconds", "connect_seconds", "Seconds spent opening connections."),
)


class DatabaseCollector(Collector):
    """Reads `database_metrics()` at each scrape; see the module docstring."""

    def collect(self) -> Iterator[Metric]:
        groups: dict[tuple[str, str, str], list[EngineMetrics]] = {}
        for metrics in database_metrics():
            key = (metrics.database, metrics.pool_type.value, metrics.application_name or "")
            groups.setdefault(key, []).append(metrics)
        for name, field, documentation in _GAUGES:
            gauge = GaugeMetricFamily(f"mountaineer_db_{name}", documentation, labels=_LABELS)
            for labels, engines in groups.items():
                values = [getattr(engine, field) for engine in engines if getattr(engine, field) is not None]
                if values:
                    gauge.add_metric(list(labels), float(sum(values)))
            yield gauge
        for name, field, documentation in _COUNTERS:
            counter = CounterMetricFamily(f"mountaineer_db_{name}", documentation, labels=_LABELS)
            for labels, engines in groups.items():
                counter.add_metric(list(labels), float(sum(getattr(engine, field) for engine in engines)))
            yield counter
        yield from _loading_counters()


def _loading_counters() -> Iterator[Metric]:
    """Lazy loads (warn mode) and N+1 warnings (`mountaineer_db.engines.loading_metrics`), per process."""
    figures = loading_metrics()
    lazy = CounterMetricFamily(
        "mountaineer_db_lazy_loads",
        "Lazy loads of relationships in request sessions (DATABASE_LAZY_LOADS=warn).",
        labels=["model", "attribute", "origin"],
    )
    for (model, attribute, origin), count in figures.lazy_loads.items():
        lazy.add_metric([model, attribute, origin], float(count))
    yield lazy
    repeated = CounterMetricFamily(
        "mountaineer_db_n_plus_one",
        "Requests in which one statement ran more than DATABASE_N_PLUS_ONE_THRESHOLD times.",
        labels=["origin"],
    )
    for origin, count in figures.n_plus_one.items():
        repeated.add_metric([origin], float(count))
    yield repeated


_registered: "weakref.WeakKeyDictionary[CollectorRegistry, DatabaseCollector]" = weakref.WeakKeyDictionary()


def register_collector(registry: CollectorRegistry = REGISTRY) -> DatabaseCollector:
    """Register the collector with `registry` (default: prometheus_client's); once per registry."""
    collector = _registered.get(registry)
    if collector is None:
        collector = _registered[registry] = DatabaseCollector()
        registry.register(collector)
    return collector
