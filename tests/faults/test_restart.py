"""Scenario 1: PostgreSQL restarted (fast mode) under load, direct and through PgBouncer.

Requests succeed again within 2 s of PostgreSQL accepting connections; a request that fails
in the window gets a 503 "database unavailable", never a generic 500.
"""

import asyncio
from collections.abc import Callable

import pytest

from mountaineer_db.servers.cluster import PostgresCluster
from mountaineer_db.servers.pgbouncer import PgBouncer

from .helpers import (
    Ledger,
    app_client,
    assert_no_leaks,
    assert_rows_match,
    bouncer_url,
    clock,
    direct_url,
    faults_config,
    post_insert,
    sleep_on_clock,
    steady_load,
    wait_for,
)

pytestmark = pytest.mark.faults

RECOVERY_BOUND = 2.0


async def _restart_under_load(cluster: PostgresCluster, url: object, **config: object) -> tuple[Ledger, float]:
    """Drive inserts, restart PostgreSQL (fast), keep going; returns the ledger and the ready time."""
    ledger = Ledger()
    async with app_client(faults_config(url, **config)) as client:
        async with steady_load(client, ledger, concurrency=4):
            await asyncio.sleep(0.5)
            await asyncio.to_thread(cluster.stop, "fast")
            stopped = clock()
            await asyncio.sleep(0.3)  # a real outage window: connections are refused meanwhile
            starting = clock()
            await asyncio.to_thread(cluster.start)
            ready = clock()  # times on clock(): a busy machine's load does not eat the bound
            await sleep_on_clock(RECOVERY_BOUND + 0.5)
        final = await post_insert(client, ledger)
        assert final.status == 200, f"no recovery without a restart of the app: {final.body}"
    # The fault was real: no request that started while PostgreSQL was down succeeded before it
    # came back. (One that committed just before the stop may finish after it on a busy machine.)
    assert not [o for o in ledger.outcomes if o.status == 200 and stopped < o.started and o.finished < starting]
    return ledger, ready


def _check_window(ledger: Ledger, ready: float) -> float:
    """Failures are 503s only; everything finishing 2 s after ready succeeded. Returns recovery time."""
    statuses = ledger.statuses()
    assert set(statuses) <= {200, 503}, f"failures other than 503: {statuses} {ledger.bodies(500)}"
    # Through PgBouncer, requests that arrive while PostgreSQL is down wait in its queue and
    # succeed afterwards: an outage may cost no request at all. Direct ones fail with a 503.
    late = [o for o in ledger.outcomes if o.finished > ready + RECOVERY_BOUND]
    assert late, "no request finished after the recovery bound"
    assert all(o.status == 200 for o in late), f"still failing {RECOVERY_BOUND}s after PostgreSQL was ready"
    assert all("database is unavailable" in body for body in ledger.bodies(503))
    first_ok = min(o.finished for o in ledger.outcomes if o.status == 200 and o.finished > ready)
    return first_ok - ready


@pytest.mark.parametrize("pool", ["NULL", "FIXED_PROCESS"])
async def test_restart_direct(cluster: PostgresCluster, pool: str) -> None:
    """Direct connections: refused connects and dropped sessions are 503s; back as soon as PostgreSQL is."""
    ledger, ready = await _restart_under_load(cluster, direct_url(cluster), DATABASE_POOL_TYPE=pool)
    print(
        f"measured: direct {pool}: first success {_check_window(ledger, ready):.2f}s after ready, {ledger.statuses()}"
    )
    await assert_rows_match(cluster, ledger, unknown_ok=True)
    await assert_no_leaks(cluster, allow_idle=5 if pool == "FIXED_PROCESS" else 0)


async def test_restart_through_pgbouncer(cluster: PostgresCluster, make_bouncer: Callable[..., PgBouncer]) -> None:
    """Through our PgBouncer (server_login_retry = 1): back within 2 s of PostgreSQL being ready."""
    bouncer = make_bouncer(cluster)
    ledger, ready = await _restart_under_load(cluster, bouncer_url(bouncer, cluster))
    print(f"measured: pgbouncer: first success {_check_window(ledger, ready):.2f}s after ready, {ledger.statuses()}")
    await assert_rows_match(cluster, ledger, unknown_ok=True)
    await assert_no_leaks(cluster, allow_idle=5)


async def test_naive_pgbouncer_login_retry_prolongs_the_outage(
    cluster: PostgresCluster, make_bouncer: Callable[..., PgBouncer]
) -> None:
    """The naive setup: PgBouncer's default server_login_retry (15 s) keeps failing well after PostgreSQL is back.

    This is why our PgBouncer fixture and README set `server_login_retry = 1`.
    """
    bouncer = make_bouncer(cluster, server_login_retry="15")
    ledger = Ledger()
    async with (
        app_client(faults_config(bouncer_url(bouncer, cluster))) as client,
        steady_load(client, ledger, concurrency=2, cancel_on_exit=True),
    ):
        async def serving() -> bool:  # the load runs before the fault (not a fixed 0.3 s: a busy machine)
            return len(ledger.ok_ids) > 0

        await wait_for(serving, timeout=60)
        served_before = len(ledger.ok_ids)
        await asyncio.to_thread(cluster.stop, "fast")
        await asyncio.sleep(0.3)
        await asyncio.to_thread(cluster.start)
        ready = clock()
        await sleep_on_clock(RECOVERY_BOUND + 0.3)
    assert served_before > 0, "the load never ran"
    # Requests fail ("server login has been failing") or sit in PgBouncer's queue: either
    # way, none is served in the 2 s after PostgreSQL is back.
    recovered = [o for o in ledger.outcomes if o.status == 200 and ready < o.finished <= ready + RECOVERY_BOUND]
    assert not recovered, "PgBouncer's default login retry no longer prolongs outages"
