"""Scenario 3: cancellation. Task cancellation, timeouts around the session, a storm of requests
cancelled at random points, and a client that disconnects mid-request.

In every case the statement stops on the server within 1 s (asyncpg sends a cancel request
when a query's task is cancelled, and we discard the connection), nothing is committed that
the handler did not commit, and no connection leaks.
"""

import asyncio
import random
from collections.abc import Callable

import pytest
from sqlalchemy import text

from mountaineer_db import database_session
from mountaineer_db.servers.cluster import PostgresCluster
from mountaineer_db.servers.pgbouncer import PgBouncer

from .app import TABLE, UNCOMMITTED_PATH
from .helpers import (
    Ledger,
    Outcome,
    admin_fetch,
    app_client,
    assert_no_leaks,
    assert_rows_match,
    faults_config,
    post_insert,
    sleeping_pids,
    table_ids,
    url_via,
    wait_for,
)

pytestmark = pytest.mark.faults

STOP_BOUND = 1.0


async def wait_sleeping(cluster: PostgresCluster, count: int = 1) -> None:
    async def started() -> bool:
        return len(await sleeping_pids(cluster)) >= count

    await wait_for(started, timeout=5)


async def assert_sleep_stops(cluster: PostgresCluster) -> float:
    """No pg_sleep left running on the server within STOP_BOUND seconds; returns how long it took."""

    async def stopped() -> bool:
        return not await sleeping_pids(cluster)

    try:
        return await wait_for(stopped, timeout=STOP_BOUND)
    except AssertionError:
        raise AssertionError(f"statements still running on the server {STOP_BOUND}s after cancellation") from None


async def _insert_then_sleep(config: object, row_id: int, seconds: float = 30) -> None:
    async with database_session(config) as session:  # type: ignore[arg-type]
        await session.exec(text(f"INSERT INTO {TABLE} (id) VALUES (:id)").bindparams(id=row_id))  # type: ignore[call-overload]
        await session.exec(text("SELECT pg_sleep(:s)").bindparams(s=seconds))  # type: ignore[call-overload]
        await session.commit()


@pytest.mark.parametrize("via", ["direct", "pgbouncer"])
async def test_task_cancelled_mid_statement(
    cluster: PostgresCluster, make_bouncer: Callable[..., PgBouncer], via: str
) -> None:
    """Cancelling the task running a statement stops it on the server and commits nothing."""
    config = faults_config(url_via(via, cluster, make_bouncer))
    task = asyncio.create_task(_insert_then_sleep(config, 1))
    await wait_sleeping(cluster)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    print(f"measured: {via}: statement stopped {await assert_sleep_stops(cluster):.2f}s after the cancel returned")
    assert await table_ids(cluster) == set()
    await assert_no_leaks(cluster, allow_idle=5 if via == "pgbouncer" else 0)
    await _insert_then_sleep(config, 2, seconds=0)  # and the process goes on
    assert await table_ids(cluster) == {2}


@pytest.mark.parametrize("pool", ["NULL", "FIXED_PROCESS"])
@pytest.mark.parametrize("via", ["direct", "pgbouncer"])
async def test_anyio_cancel_scope_stops_the_statement_on_the_server(
    cluster: PostgresCluster, make_bouncer: Callable[..., PgBouncer], via: str, pool: str
) -> None:
    """`anyio.move_on_after` (Starlette and anyio code cancel this way): the statement stops too.

    asyncpg's cancel request can be cut short when the connection is discarded at once; the
    server's client_connection_check_interval (set with each BEGIN) ends the statement then.
    """
    import anyio

    settings = {"DATABASE_STATEMENT_CACHE_SIZE": 0} if via == "pgbouncer" else {}
    config = faults_config(url_via(via, cluster, make_bouncer), DATABASE_POOL_TYPE=pool, **settings)
    with anyio.move_on_after(0.5) as scope:
        await _insert_then_sleep(config, 1, seconds=5)
    assert scope.cancelled_caught
    await assert_sleep_stops(cluster)
    assert await table_ids(cluster) == set()
    await assert_no_leaks(cluster, allow_idle=5 if via == "pgbouncer" or pool == "FIXED_PROCESS" else 0)


@pytest.mark.parametrize("via", ["direct", "pgbouncer"])
async def test_timeout_around_the_session(
    cluster: PostgresCluster, make_bouncer: Callable[..., PgBouncer], via: str
) -> None:
    """`asyncio.timeout` around `database_session()`: TimeoutError, statement stopped, nothing committed."""
    config = faults_config(url_via(via, cluster, make_bouncer))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await _insert_then_sleep(config, 1)
    await assert_sleep_stops(cluster)
    assert await table_ids(cluster) == set()
    await assert_no_leaks(cluster, allow_idle=5 if via == "pgbouncer" else 0)
    await _insert_then_sleep(config, 2, seconds=0)
    assert await table_ids(cluster) == {2}


@pytest.mark.parametrize("via", ["direct", "fixed", "pgbouncer"])
async def test_cancellation_storm(cluster: PostgresCluster, make_bouncer: Callable[..., PgBouncer], via: str) -> None:
    """Hundreds of action requests cancelled at random points: no leak, no stray commit, service goes on."""
    url = url_via("pgbouncer" if via == "pgbouncer" else "direct", cluster, make_bouncer)
    pool = {"DATABASE_POOL_TYPE": "FIXED_PROCESS", "DATABASE_POOL_SIZE": 10} if via == "fixed" else {}
    config = faults_config(url, **pool)
    rng = random.Random(6)
    ledger = Ledger()
    uncommitted: set[int] = set()
    async with app_client(config) as client:

        async def uncommitted_request() -> None:
            row_id = ledger.take_id()
            uncommitted.add(row_id)
            response = await client.post(UNCOMMITTED_PATH, json={"id": row_id, "sleep_before_commit": 0.05})
            ledger.outcomes.append(Outcome(row_id, response.status_code, response.text, 0.0))

        async def one() -> None:
            if rng.random() < 0.5:
                request = post_insert(client, ledger, sleep=rng.choice([0, 0.02, 0.1, 5]))
            else:
                request = uncommitted_request()
            task = asyncio.create_task(request)
            await asyncio.sleep(rng.uniform(0, 0.15))
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        for _wave in range(6):
            await asyncio.gather(*(one() for _ in range(50)))
        await assert_sleep_stops(cluster)
        final = await post_insert(client, ledger)
        assert final.status == 200, final.body
    rows = await table_ids(cluster)
    assert not rows & uncommitted, "a request that never committed left a row"
    cancelled_inserts = {o for o in range(1, ledger.next_id)} - uncommitted - {o.id for o in ledger.outcomes}
    # A cancelled insert may or may not have reached its COMMIT; everything that got a 200 must be there.
    ok_inserts = ledger.ok_ids - uncommitted
    assert ok_inserts <= rows
    assert rows - ok_inserts <= cancelled_inserts
    assert len(ledger.outcomes) < 300, "the storm cancelled nothing: the fault was not injected"
    await assert_no_leaks(cluster, allow_idle=10 if via == "fixed" else (5 if via == "pgbouncer" else 0))


async def test_rows_match_helper_is_strict(cluster: PostgresCluster) -> None:
    """The ledger check itself fails on a row nobody got a 200 for (guards the guard)."""
    ledger = Ledger()
    await admin_fetch(cluster, f"INSERT INTO {TABLE} (id) VALUES (424242)")
    with pytest.raises(AssertionError):
        await assert_rows_match(cluster, ledger)


@pytest.mark.parametrize("via", ["direct", "pgbouncer"])
async def test_client_disconnect_cancels_the_request(
    cluster: PostgresCluster, make_bouncer: Callable[..., PgBouncer], db_logs: pytest.LogCaptureFixture, via: str
) -> None:
    """Policy: a client that disconnects mid-action cancels the action's database work.

    Served by uvicorn (a real socket): the client sends the action and closes the connection
    while its statement runs. The statement stops on the server within 1 s, the transaction
    is rolled back (nothing committed), and the connection is given back.
    """
    import uvicorn

    from mountaineer_db.servers.cluster import free_port

    from .app import INSERT_PATH, build_app

    config = faults_config(url_via(via, cluster, make_bouncer))
    app = build_app(config)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app.app, host="127.0.0.1", port=port, http="h11", loop="asyncio", log_level="warning", lifespan="off"
        )
    )
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        body = b'{"id": 7, "sleep_before_commit": 30}'
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST " + INSERT_PATH.encode() + b" HTTP/1.1\r\nHost: faults\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        await writer.drain()
        await wait_sleeping(cluster)
        writer.close()
        await writer.wait_closed()
        await assert_sleep_stops(cluster)
        await assert_no_leaks(cluster, allow_idle=5 if via == "pgbouncer" else 0)
        assert await table_ids(cluster) == set()
        assert "disconnected" in db_logs.text

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = b'{"id": 8}'
        writer.write(
            b"POST " + INSERT_PATH.encode() + b" HTTP/1.1\r\nHost: faults\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        response = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert response.startswith(b"HTTP/1.1 200"), response[:200]
        assert await table_ids(cluster) == {8}
    finally:
        server.should_exit = True
        await serving
