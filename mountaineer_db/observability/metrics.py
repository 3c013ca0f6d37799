"""Pool and connect figures of every engine in this process: `database_metrics()`.

```python
from mountaineer_db.observability.metrics import database_metrics

for engine in database_metrics():
    print(engine.database, engine.checked_out, engine.waits, engine.connects_per_second)
```

One `EngineMetrics` snapshot per engine (per event loop and settings, as engines are cached):

- in use now: `checked_out`; with `FIXED_PROCESS` also `idle`, `pool_size`, `overflow`;
- totals since the engine was built: `checkouts`, `waits` (checkouts that found every
  connection of a `FIXED_PROCESS` pool busy and queued) with `wait_seconds`, `timeouts`
  (gave up after DATABASE_POOL_TIMEOUT), `connects`, `connect_failures`, `connect_seconds`;
- the last minute: `connects_per_second` and `connect_latency_ms` (with the default `NULL`
  pool every request connects, through PgBouncer or not: these are its cost).

`mountaineer_db.observability.prometheus` exports the same figures. How they are taken:
`mountaineer_db.engines.metrics`.
"""

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from mountaineer_db.engines.engine import cached_engines
from mountaineer_db.engines.metrics import EngineStats
from mountaineer_db.exceptions import describe_target
from mountaineer_db.settings.config import PoolType

__all__ = ["EngineMetrics", "database_metrics", "engine_metrics"]


@dataclass(frozen=True)
class EngineMetrics:
    """One engine's figures at one moment; see the module docstring."""

    database: str
    pool_type: PoolType
    application_name: str | None
    checked_out: int
    idle: int | None
    pool_size: int | None
    overflow: int | None
    checkouts: int
    waits: int
    wait_seconds: float
    timeouts: int
    connects: int
    connect_failures: int
    connect_seconds: float
    connects_per_second: float
    connect_latency_ms: float | None


def engine_metrics(engine: AsyncEngine) -> EngineMetrics | None:
    """The figures of one engine built by mountaineer_db (None for any other engine)."""
    pool = engine.sync_engine.pool
    stats: EngineStats | None = getattr(pool, "mdb_stats", None)
    if stats is None:
        return None
    rate, latency = stats.recent()
    if isinstance(pool, AsyncAdaptedQueuePool):
        checked_out, idle, size, overflow = pool.checkedout(), pool.checkedin(), pool.size(), max(0, pool.overflow())
    else:
        checked_out, idle, size, overflow = max(0, stats.checkouts - stats.checkins), None, None, None
    return EngineMetrics(
        database=describe_target(engine.url, user=False),
        pool_type=stats.pool_type,
        application_name=stats.application_name,
        checked_out=checked_out,
        idle=idle,
        pool_size=size,
        overflow=overflow,
        checkouts=stats.checkouts,
        waits=stats.waits,
        wait_seconds=stats.wait_seconds,
        timeouts=stats.timeouts,
        connects=stats.connects,
        connect_failures=stats.connect_failures,
        connect_seconds=stats.connect_seconds,
        connects_per_second=rate,
        connect_latency_ms=latency,
    )


def database_metrics() -> list[EngineMetrics]:
    """A snapshot of every engine this process has cached (all event loops)."""
    return [metrics for engine in cached_engines() if (metrics := engine_metrics(engine)) is not None]
