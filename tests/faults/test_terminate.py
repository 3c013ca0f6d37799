"""Scenario 2: a backend terminated mid-transaction, and idle pooled connections terminated.

The in-flight request fails cleanly (503, the real cause in the log), the next one succeeds,
and for FIXED_PROCESS a pool full of dead connections costs no request at all.
"""

import asyncio
import logging
from collections.abc import Callable

import pytest

from mountaineer_db.requests.dependencies import get_db
from mountaineer_db.servers.cluster import PostgresCluster
from mountaineer_db.servers.pgbouncer import PgBouncer
from tests.handovers import idle_connections

from .app import APP_NAME
from .helpers import (
    Ledger,
    admin_fetch,
    app_client,
    assert_no_leaks,
    assert_rows_match,
    direct_url,
    faults_config,
    post_insert,
    sleeping_pids,
    url_via,
    wait_for,
)

pytestmark = pytest.mark.faults


async def _terminate_sleeping(cluster: PostgresCluster) -> int:
    """Terminate the backend running our pg_sleep, once it is running; returns its pid."""
    pids: list[int] = []

    async def sleeping() -> bool:
        pids[:] = await sleeping_pids(cluster, like="SELECT pg_sleep%")
        return bool(pids)

    await wait_for(sleeping, timeout=5)
    await admin_fetch(cluster, "SELECT pg_terminate_backend($1)", pids[0])
    return pids[0]


@pytest.mark.parametrize("via", ["direct", "pgbouncer"])
async def test_backend_terminated_mid_transaction(
    cluster: PostgresCluster,
    make_bouncer: Callable[..., PgBouncer],
    db_logs: pytest.LogCaptureFixture,
    via: str,
) -> None:
    """The in-flight request gets a 503 naming no secret, the log has the server's reason, the next succeeds."""
    config = faults_config(url_via(via, cluster, make_bouncer))
    ledger = Ledger()
    async with app_client(config) as client:
        in_flight = asyncio.create_task(post_insert(client, ledger, sleep=30))
        await _terminate_sleeping(cluster)
        outcome = await asyncio.wait_for(in_flight, 5)
        assert outcome.status == 503, outcome.body
        assert "database is unavailable" in outcome.body
        # The server's own words; through PgBouncer, PgBouncer's ("server conn crashed?").
        cause = "terminating connection due to administrator command" if via == "direct" else "server conn crashed"
        assert cause in db_logs.text
        assert 'Lost the connection to database "faults" on 127.0.0.1' in db_logs.text

        after = await post_insert(client, ledger)
        assert after.status == 200, after.body
    await assert_rows_match(cluster, ledger)
    await assert_no_leaks(cluster, allow_idle=5 if via == "pgbouncer" else 0)


async def test_idle_pooled_connections_terminated(cluster: PostgresCluster, db_logs: pytest.LogCaptureFixture) -> None:
    """FIXED_PROCESS: every pooled connection killed while idle; the next requests all succeed."""
    config = faults_config(direct_url(cluster), DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_POOL_SIZE=3)
    ledger = Ledger()
    async with app_client(config) as client:
        first = await asyncio.gather(*(post_insert(client, ledger, sleep=0.2) for _ in range(3)))
        assert [o.status for o in first] == [200, 200, 200]
        killed = await admin_fetch(
            cluster,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            APP_NAME,
        )
        assert len(killed) == 3

        async def gone() -> bool:
            rows = await admin_fetch(cluster, "SELECT 1 FROM pg_stat_activity WHERE application_name = $1", APP_NAME)
            return not rows

        await wait_for(gone, timeout=5)
        engine = await get_db(config=config)

        async def noticed() -> bool:  # the client saw the closed sockets, as any idle moment lets it
            idle = idle_connections(engine)
            return len(idle) == 3 and all(connection.driver_connection.is_closed() for connection in idle)

        await wait_for(noticed, timeout=5)
        again = await asyncio.gather(*(post_insert(client, ledger) for _ in range(3)))
        assert [o.status for o in again] == [200, 200, 200], [o.body for o in again]
        assert not [r for r in db_logs.records if r.levelno >= logging.ERROR]
        # Replaced at checkout, before any statement: not recovered by running a first statement again.
        replays = [r.getMessage() for r in db_logs.records if "lost its connection" in r.getMessage()]
        assert not replays, replays
    await assert_rows_match(cluster, ledger)
    await assert_no_leaks(cluster, allow_idle=3)


async def test_statement_errors_propagate_unchanged(cluster: PostgresCluster) -> None:
    """Only connection-level failures become 503s: a constraint violation stays what it is."""
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from mountaineer_db import DatabaseUnavailableError, database_session

    config = faults_config(direct_url(cluster))
    with pytest.raises(IntegrityError) as caught:
        async with database_session(config) as session:
            for _ in range(2):
                await session.exec(text("INSERT INTO fault_rows (id) VALUES (5)"))  # type: ignore[call-overload]
    assert not isinstance(caught.value, DatabaseUnavailableError)
    await assert_no_leaks(cluster)
