"""Scenario 6: PgBouncer maintenance under load: PAUSE/RESUME, RECONNECT, KILL + RESUME.

PAUSE/RESUME and RECONNECT cost no request an error; after KILL, requests succeed again
within 2 s of RESUME.
"""

import asyncio
from collections.abc import Callable

import pytest

from mountaineer_db.servers.cluster import PostgresCluster
from mountaineer_db.servers.pgbouncer import PgBouncer

from .helpers import (
    DATABASE,
    Ledger,
    app_client,
    assert_no_leaks,
    assert_rows_match,
    bouncer_url,
    clock,
    faults_config,
    post_insert,
    sleep_on_clock,
    sleeping_pids,
    steady_load,
    wait_for,
)

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("maintenance", ["pause-resume", "reconnect"])
async def test_maintenance_without_errors(
    cluster: PostgresCluster, make_bouncer: Callable[..., PgBouncer], maintenance: str
) -> None:
    """Every request of the load succeeds across the maintenance (they wait while paused)."""
    bouncer = make_bouncer(cluster)

    async def admin(command: str) -> None:
        await bouncer.admin(command, user=cluster.user, password=cluster.password)

    ledger = Ledger()
    async with app_client(faults_config(bouncer_url(bouncer, cluster))) as client:
        async with steady_load(client, ledger, concurrency=4, sleep=0.02):
            await asyncio.sleep(0.4)
            if maintenance == "pause-resume":
                await admin(f"PAUSE {DATABASE}")
                paused_at = len(ledger.outcomes)
                await asyncio.sleep(0.5)
                assert len(ledger.outcomes) <= paused_at + 4, "requests went through while paused"
                await admin(f"RESUME {DATABASE}")
            else:
                await admin("RECONNECT")
            await asyncio.sleep(0.5)
        assert ledger.statuses() == {200: len(ledger.outcomes)}, ledger.statuses()
        assert (await post_insert(client, ledger)).status == 200
    await assert_rows_match(cluster, ledger)
    await assert_no_leaks(cluster, allow_idle=5)


async def test_kill_then_resume(cluster: PostgresCluster, make_bouncer: Callable[..., PgBouncer]) -> None:
    """KILL drops everyone (503s); once RESUMEd, requests succeed again within 2 s."""
    bouncer = make_bouncer(cluster)
    ledger = Ledger()
    async with app_client(faults_config(bouncer_url(bouncer, cluster), DATABASE_CONNECT_TIMEOUT=2.0)) as client:
        # Transactions of 0.3 s, so KILL always finds some in flight.
        async with steady_load(client, ledger, concurrency=4, sleep=0.3):
            # KILL when transactions are in flight (the server runs their pg_sleep), not after a
            # fixed 0.5 s: on a loaded machine none had started by then and KILL failed nothing.
            async def in_flight() -> bool:
                return len(await sleeping_pids(cluster)) >= 2

            await wait_for(in_flight, timeout=60)
            await bouncer.admin(f"KILL {DATABASE}", user=cluster.user, password=cluster.password)
            await asyncio.sleep(0.5)
            try:
                await bouncer.admin(f"RESUME {DATABASE}", user=cluster.user, password=cluster.password)
            except OSError as error:  # seen once under load: say what PgBouncer was doing
                alive = bouncer.process is not None and bouncer.process.poll() is None
                log = bouncer.log_path.read_text()[-3000:]
                raise AssertionError(f"RESUME refused ({error}); PgBouncer alive: {alive}; its log:\n{log}") from error
            resumed = clock()  # times on clock(): a busy machine's load does not eat the 2 s
            await sleep_on_clock(2.5)
        statuses = ledger.statuses()
        assert set(statuses) <= {200, 503}, statuses
        assert statuses.get(503, 0) > 0, "KILL failed nothing: the fault was not injected"
        late = [o for o in ledger.outcomes if o.finished > resumed + 2.0]
        assert late and all(o.status == 200 for o in late), "not recovered within 2 s of RESUME"
        first_ok = min(o.finished for o in ledger.outcomes if o.status == 200 and o.finished > resumed)
        assert first_ok - resumed < 2.0
        print(f"measured: first success {first_ok - resumed:.2f}s after RESUME; {statuses}")
    await assert_rows_match(cluster, ledger, unknown_ok=True)
    await assert_no_leaks(cluster, allow_idle=5)
