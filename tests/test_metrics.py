"""`database_metrics()`: pool and connect figures per engine, taken on real connections."""

import asyncio
from collections.abc import Callable

import pytest
from sqlalchemy import text

from mountaineer_db import DatabaseConfig, DatabaseUnavailableError, PoolType, database_session
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.observability.metrics import EngineMetrics, database_metrics, engine_metrics


def _only(config: DatabaseConfig) -> EngineMetrics:
    metrics = engine_metrics(engine_for(config))
    assert metrics is not None
    assert metrics in database_metrics()
    return metrics


async def _query(config: DatabaseConfig) -> None:
    async with database_session(config) as session:
        await session.exec(text("SELECT 1"))  # type: ignore[call-overload]


async def test_null_pool_counts_connects_per_second_and_their_latency(
    make_config: Callable[..., DatabaseConfig],
) -> None:
    config = make_config(DATABASE_APPLICATION_NAME="metered")
    for _ in range(3):
        await _query(config)
    async with database_session(config) as session:
        await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        during = _only(config)
    after = _only(config)
    assert (during.checked_out, after.checked_out) == (1, 0)
    assert (after.pool_type, after.application_name, after.pool_size, after.idle) == (
        PoolType.NULL,
        "metered",
        None,
        None,
    )
    assert (after.connects, after.checkouts, after.connect_failures, after.waits) == (4, 4, 0, 0)
    assert after.connect_seconds > 0 and after.connect_latency_ms is not None
    assert after.connect_latency_ms == pytest.approx(after.connect_seconds / 4 * 1000)
    assert after.connects_per_second >= 4 / 60
    assert after.database.startswith('database "mdb_test_')


async def test_fixed_pool_counts_waits_and_timeouts(make_config: Callable[..., DatabaseConfig]) -> None:
    config = make_config(
        DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_POOL_SIZE=1, DATABASE_MAX_OVERFLOW=0, DATABASE_POOL_TIMEOUT=0.3
    )
    await _query(config)
    idle = _only(config)
    assert (idle.checked_out, idle.idle, idle.pool_size, idle.overflow, idle.connects) == (0, 1, 1, 0, 1)

    async with database_session(config) as holder:
        await holder.exec(text("SELECT 1"))  # type: ignore[call-overload]
        with pytest.raises(DatabaseUnavailableError):
            await _query(config)  # no connection free within DATABASE_POOL_TIMEOUT
        waiter = asyncio.create_task(_query(config))
        await asyncio.sleep(0.1)
        busy = _only(config)
    await waiter  # got the connection when the holder gave it back
    after = _only(config)
    assert (busy.checked_out, busy.idle) == (1, 0)
    assert (after.timeouts, after.waits, after.connects) == (1, 2, 1)
    assert after.wait_seconds >= 0.3 + 0.1
    assert after.checkouts == 3  # the timed-out checkout is not one


async def test_failed_connects_are_counted() -> None:
    from mountaineer_db.servers.cluster import free_port

    port = free_port()  # reserved: nothing comes to listen there
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=f"postgresql://u:p@127.0.0.1:{port}/db", DATABASE_CONNECT_TIMEOUT=1)
    with pytest.raises(DatabaseUnavailableError):
        await _query(config)
    metrics = _only(config)
    assert (metrics.connects, metrics.connect_failures, metrics.checked_out) == (0, 1, 0)


async def test_counters_survive_dispose(make_config: Callable[..., DatabaseConfig]) -> None:
    config = make_config(DATABASE_POOL_TYPE="FIXED_PROCESS")
    await _query(config)
    await engine_for(config).dispose()  # SQLAlchemy replaces the pool
    await _query(config)
    assert (_only(config).connects, _only(config).checkouts) == (2, 2)
