"""The counters behind `database_metrics()`: kept per engine by its pool, from the moment it is built.

`engine_for` builds every engine's pool from a subclass of SQLAlchemy's (`MeasuredQueuePool`,
`MeasuredNullPool`) that times `Pool.connect()` (public: every checkout goes through it), and
times the creator that opens each connection, into the engine's `EngineStats`. About a
microsecond per checkout; no I/O. The snapshots users read are built from these counters in
`mountaineer_db.observability.metrics`.
"""

import time
from collections import deque
from typing import Any

from sqlalchemy import event, exc
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool, Pool, PoolProxiedConnection, QueuePool

from mountaineer_db.engines.fair_pool import FairAsyncAdaptedQueuePool
from mountaineer_db.settings.config import PoolType

__all__ = [
    "EngineStats",
    "MeasuredNullPool",
    "MeasuredQueuePool",
    "install_metrics",
]

_WINDOW = 60  # seconds of recent connects kept for the rates


class EngineStats:
    """The counters of one engine; shared by the pools `dispose()` replaces."""

    def __init__(self, pool_type: PoolType, application_name: str | None) -> None:
        self.pool_type = pool_type
        self.application_name = application_name
        self.started = time.monotonic()
        self.checkouts = 0
        self.checkins = 0  # NULL pools only (`install_metrics`)
        self.waits = 0
        self.wait_seconds = 0.0
        self.timeouts = 0
        self.connects = 0
        self.connect_failures = 0
        self.connect_seconds = 0.0
        self._recent: deque[list[float]] = deque()  # [second, connects, seconds]

    def connected(self, seconds: float) -> None:
        self.connects += 1
        self.connect_seconds += seconds
        now = int(time.monotonic())
        if not self._recent or self._recent[-1][0] != now:
            self._recent.append([now, 0, 0.0])
            self._forget(now)
        self._recent[-1][1] += 1
        self._recent[-1][2] += seconds

    def _forget(self, now: int) -> None:
        while self._recent and self._recent[0][0] <= now - _WINDOW:
            self._recent.popleft()

    def recent(self) -> tuple[float, float | None]:
        """Connects per second over the last minute, and their mean latency in ms."""
        now = time.monotonic()
        self._forget(int(now))
        count = sum(int(bucket[1]) for bucket in self._recent)
        seconds = sum(bucket[2] for bucket in self._recent)
        span = max(1.0, min(float(_WINDOW), now - self.started))
        return count / span, (seconds / count * 1000 if count else None)

    def timed_creator(self, creator: Any) -> Any:
        """`creator` (the pool's connection factory), timed."""

        def create() -> Any:
            began = time.perf_counter()
            try:
                connection = creator()
            except BaseException:
                self.connect_failures += 1
                raise
            self.connected(time.perf_counter() - began)
            return connection

        return create

    def on_checkin(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        self.checkins += 1


class _Measured:
    """`Pool.connect()`, timed: every checkout of an engine's connections goes through it."""

    mdb_stats: EngineStats | None = None

    def _mdb_all_busy(self) -> bool:
        return False

    def connect(self) -> PoolProxiedConnection:
        stats = self.mdb_stats
        if stats is None:
            return super().connect()  # type: ignore[misc, no-any-return]
        waiting = self._mdb_all_busy()
        began = time.perf_counter()
        try:
            connection: PoolProxiedConnection = super().connect()  # type: ignore[misc]
        except exc.TimeoutError:
            stats.timeouts += 1
            stats.waits += 1
            stats.wait_seconds += time.perf_counter() - began
            raise
        if waiting:
            stats.waits += 1
            stats.wait_seconds += time.perf_counter() - began
        stats.checkouts += 1
        return connection

    def _mdb_carry(self, pool: Pool) -> None:
        pool.mdb_stats = self.mdb_stats  # type: ignore[attr-defined]  # `dispose()` swaps the pool; counters go on


class MeasuredQueuePool(_Measured, FairAsyncAdaptedQueuePool):
    """SQLAlchemy's async queue pool (FIXED_PROCESS), waiters served in order (`fair_pool`), measured."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._mdb_max_overflow: int = kwargs.get("max_overflow", 10)  # QueuePool's default

    def recreate(self) -> QueuePool:
        pool = super().recreate()
        self._mdb_carry(pool)
        return pool

    def _mdb_all_busy(self) -> bool:
        if self._mdb_idle or self._mdb_max_overflow < 0:  # a connection is idle; unlimited overflow never waits
            return False
        # None idle, so every connection is out: all busy once the overflow is used up (QueuePool's own test).
        return self.overflow() >= self._mdb_max_overflow


class MeasuredNullPool(_Measured, NullPool):
    """SQLAlchemy's NullPool (the default NULL pool type: a connection per checkout), measured."""

    def recreate(self) -> NullPool:
        pool = super().recreate()
        self._mdb_carry(pool)
        return pool


def install_metrics(engine: AsyncEngine, stats: EngineStats) -> None:
    """Attach `stats` to `engine`'s measured pool (called once, when the engine is built)."""
    pool = engine.sync_engine.pool
    pool.mdb_stats = stats  # type: ignore[attr-defined]
    if not isinstance(pool, QueuePool):
        # Checkins tell how many connections a NULL pool has out; a queue pool counts its own
        # (`checkedout()`), so there a checkin costs nothing extra.
        event.listen(pool, "checkin", stats.on_checkin)
