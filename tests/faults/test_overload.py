"""Scenario 4: overload. 100 concurrent slow requests against fewer connection slots.

Direct with the NULL pool (the server runs out of slots), with FIXED_PROCESS (the client pool
runs out), and through PgBouncer (its queue times out): no request hangs past the configured
timeouts, the ones that cannot be served get a clear 503, and connections are back to
baseline afterwards.
"""

import asyncio
from collections.abc import Callable

import pytest

from mountaineer_db.servers.cluster import PostgresCluster
from mountaineer_db.servers.pgbouncer import PgBouncer

from .helpers import (
    Ledger,
    Stopwatch,
    app_client,
    assert_no_leaks,
    assert_rows_match,
    bouncer_url,
    direct_url,
    faults_config,
    post_insert,
)

pytestmark = pytest.mark.faults

REQUESTS = 100
SLOW = 0.5  # seconds each request holds its transaction


async def _burst(config: object) -> tuple[Ledger, Stopwatch]:
    """100 concurrent slow inserts; returns the ledger and the burst's stopwatch."""
    ledger = Ledger()
    async with app_client(config) as client:  # type: ignore[arg-type]
        watch = Stopwatch()
        await asyncio.gather(*(post_insert(client, ledger, sleep=SLOW) for _ in range(REQUESTS)))
        watch.stop()
        after = await post_insert(client, ledger)
        assert after.status == 200, f"no recovery once the load stopped: {after.body}"
    return ledger, watch


def _check(ledger: Ledger, watch: Stopwatch, bound: float) -> None:
    statuses = ledger.statuses()
    assert set(statuses) <= {200, 503}, f"not a clear 503: {statuses}, {ledger.bodies(500)}"
    assert statuses.get(503, 0) > 0, "capacity was never exhausted: the fault was not injected"
    assert statuses.get(200, 0) > 0, "nothing was served at all"
    assert all("database is unavailable" in body for body in ledger.bodies(503))
    # The time the burst took on this process's share of the CPU: what another process's load
    # added (waiting for a core) is not the code's (it made this bound flaky on a busy machine).
    assert watch.unstarved < bound, (
        f"the burst took {watch.elapsed:.1f}s ({watch.starved:.1f}s of it waiting for a CPU), "
        f"past the configured timeouts ({bound}s)"
    )


async def test_overload_direct_null_pool(
    make_cluster: Callable[..., PostgresCluster], db_logs: pytest.LogCaptureFixture
) -> None:
    """NULL pool straight to a server with 10 slots: the surplus gets 503 at once, naming the cause."""
    cluster = make_cluster(max_connections="10")
    ledger, watch = await _burst(faults_config(direct_url(cluster)))
    # Connect timeout (5 s) plus one slow transaction, with room for a busy machine.
    _check(ledger, watch, bound=5.0 + SLOW + 2.0)
    assert "too many clients" in db_logs.text or "remaining connection slots" in db_logs.text
    await assert_rows_match(cluster, ledger)
    await assert_no_leaks(cluster)


async def test_overload_fixed_process_pool(cluster: PostgresCluster, db_logs: pytest.LogCaptureFixture) -> None:
    """FIXED_PROCESS, 5 connections, 1 s pool timeout: the surplus gets 503 after 1 s, not a 500 after 30 s."""
    config = faults_config(
        direct_url(cluster),
        DATABASE_POOL_TYPE="FIXED_PROCESS",
        DATABASE_POOL_SIZE=5,
        DATABASE_MAX_OVERFLOW=0,
        DATABASE_POOL_TIMEOUT=1.0,
    )
    ledger, watch = await _burst(config)
    _check(ledger, watch, bound=1.0 + 2 * SLOW + 2.0)
    assert "DATABASE_POOL_TIMEOUT" in db_logs.text
    await assert_rows_match(cluster, ledger)
    await assert_no_leaks(cluster, allow_idle=5)


async def test_overload_through_pgbouncer(
    cluster: PostgresCluster, make_bouncer: Callable[..., PgBouncer], db_logs: pytest.LogCaptureFixture
) -> None:
    """PgBouncer with 5 server connections and a 2 s query_wait_timeout: the surplus gets 503 after 2 s."""
    bouncer = make_bouncer(cluster, query_wait_timeout="2")
    ledger, watch = await _burst(faults_config(bouncer_url(bouncer, cluster)))
    # The bound tells 2 s from PgBouncer's default 120 s, with room for PgBouncer's and
    # PostgreSQL's own processes waiting for a core on a busy machine (not counted as starved:
    # they are not this process); the 503s and the log line show the timeout itself.
    _check(ledger, watch, bound=2.0 + SLOW + 10.0)
    assert "query_wait_timeout" in db_logs.text
    await assert_rows_match(cluster, ledger)
    await assert_no_leaks(cluster, allow_idle=5)
