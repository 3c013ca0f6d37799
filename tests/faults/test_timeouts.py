"""Scenario 5: timeouts that hold through PgBouncer, and a black-holed network.

The server-side timeouts ride on BEGIN as SET LOCAL (PgBouncer rejects them as startup
parameters) and each fails with an error naming it. The connect and per-command timeouts
bound what a network that silently stops forwarding can cost.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from mountaineer_db import DatabaseUnavailableError, database_session
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.requests.session import RequestSyncSession, session_scope
from mountaineer_db.servers.cluster import PostgresCluster
from mountaineer_db.servers.pgbouncer import PgBouncer

from .app import TABLE
from .helpers import (
    Ledger,
    admin_connect,
    app_client,
    assert_no_leaks,
    assert_rows_match,
    bouncer_url,
    faults_config,
    post_insert,
    table_ids,
)

pytestmark = pytest.mark.faults

SLACK = 1.0  # scheduling slack on a busy 2-core machine, on top of the configured timeout


async def _run(config: object, *statements: str) -> None:
    async with database_session(config) as session:  # type: ignore[arg-type]
        for statement in statements:
            if statement.startswith("sleep:"):
                await asyncio.sleep(float(statement[6:]))
            else:
                await session.exec(text(statement))  # type: ignore[call-overload]
        await session.commit()


@pytest.fixture
def bouncer(cluster: PostgresCluster, make_bouncer: Callable[..., PgBouncer]) -> PgBouncer:
    return make_bouncer(cluster)


async def test_statement_timeout_through_pgbouncer(cluster: PostgresCluster, bouncer: PgBouncer) -> None:
    config = faults_config(bouncer_url(bouncer, cluster), DATABASE_STATEMENT_TIMEOUT=0.2)
    with pytest.raises(DBAPIError, match="canceling statement due to statement timeout") as caught:
        await _run(config, f"INSERT INTO {TABLE} VALUES (1)", "SELECT pg_sleep(3)")
    # The statement's own failure, not the database's: propagates unchanged, not as a 503.
    assert not isinstance(caught.value, DatabaseUnavailableError)
    await _run(config, f"INSERT INTO {TABLE} VALUES (2)", "SELECT pg_sleep(0.01)")
    assert await table_ids(cluster) == {2}
    await assert_no_leaks(cluster, allow_idle=5)


async def test_lock_timeout_through_pgbouncer(cluster: PostgresCluster, bouncer: PgBouncer) -> None:
    config = faults_config(bouncer_url(bouncer, cluster), DATABASE_LOCK_TIMEOUT=0.2)
    holder = await admin_connect(cluster)
    try:
        await holder.execute(f"BEGIN; LOCK TABLE {TABLE} IN ACCESS EXCLUSIVE MODE")
        start = time.monotonic()
        with pytest.raises(DBAPIError, match="canceling statement due to lock timeout"):
            await _run(config, f"INSERT INTO {TABLE} VALUES (1)")
        assert time.monotonic() - start < 0.2 + SLACK
        await holder.execute("ROLLBACK")
    finally:
        await holder.close()
    await _run(config, f"INSERT INTO {TABLE} VALUES (2)")
    assert await table_ids(cluster) == {2}
    await assert_no_leaks(cluster, allow_idle=5)


async def test_idle_in_transaction_timeout_through_pgbouncer(cluster: PostgresCluster, bouncer: PgBouncer) -> None:
    config = faults_config(bouncer_url(bouncer, cluster), DATABASE_IDLE_IN_TRANSACTION_TIMEOUT=0.2)
    with pytest.raises(DatabaseUnavailableError, match="idle-in-transaction") as caught:
        await _run(config, f"INSERT INTO {TABLE} VALUES (1)", "sleep:0.8", "SELECT 1")
    assert "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT" in str(caught.value)
    await _run(config, f"INSERT INTO {TABLE} VALUES (2)")
    assert await table_ids(cluster) == {2}
    await assert_no_leaks(cluster, allow_idle=5)


async def test_startup_parameter_timeouts_break_pgbouncer(cluster: PostgresCluster, bouncer: PgBouncer) -> None:
    """The naive setup: statement_timeout as a startup parameter (connect_args) fails every connection."""
    url = bouncer_url(bouncer, cluster)
    engine = create_async_engine(url, connect_args={"server_settings": {"statement_timeout": "200"}})
    try:
        with pytest.raises(Exception, match="unsupported startup parameter"):
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
    finally:
        await engine.dispose()


class BlackHoleProxy:
    """A TCP proxy to PostgreSQL that forwards until told to stop, then silently drops everything."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.forwarding = True
        self.delay = 0.0  # seconds added to every answer from the server, when set
        self.client_sent: asyncio.Event | None = None  # set when the client sends `watch_for`
        self.watch_for = b""
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if not self.forwarding:  # a black hole: accept, read, never answer
            await self._pipe(reader, None)
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers.append(up_writer)
        task = asyncio.create_task(self._pipe(up_reader, writer, from_server=True))
        self._tasks.add(task)
        await self._pipe(reader, up_writer)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None, *, from_server: bool = False
    ) -> None:
        try:
            while data := await reader.read(65536):
                if not from_server and self.client_sent is not None and self.watch_for and self.watch_for in data:
                    self.client_sent.set()
                if from_server and self.delay:
                    await asyncio.sleep(self.delay)
                if self.forwarding and writer is not None:
                    writer.write(data)
                    await writer.drain()
        except ConnectionError:
            pass

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def proxy(cluster: PostgresCluster) -> AsyncIterator[BlackHoleProxy]:
    proxy = BlackHoleProxy(cluster.port)
    await proxy.start()
    yield proxy
    await proxy.close()


def _proxied_url(cluster: PostgresCluster, proxy: BlackHoleProxy) -> object:
    return cluster.url("faults").set(port=proxy.port)


async def test_connect_timeout_on_a_black_hole(cluster: PostgresCluster, proxy: BlackHoleProxy) -> None:
    """A network that swallows packets: connecting fails within DATABASE_CONNECT_TIMEOUT, naming it."""
    config = faults_config(_proxied_url(cluster, proxy), DATABASE_CONNECT_TIMEOUT=1.0)
    proxy.forwarding = False
    start = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match="DATABASE_CONNECT_TIMEOUT") as caught:
        await _run(config, "SELECT 1")
    assert time.monotonic() - start < 1.0 + SLACK
    assert f"127.0.0.1:{proxy.port}" in str(caught.value) and '"faults"' in str(caught.value)


async def test_command_timeout_on_a_black_hole(
    cluster: PostgresCluster, proxy: BlackHoleProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The network goes silent mid-request: the action fails (503) within DATABASE_COMMAND_TIMEOUT."""
    # The server cannot see a silent network either: its half of the transaction is ended by
    # the idle-in-transaction timeout (or TCP keepalives), which is why we recommend setting it.
    config = faults_config(
        _proxied_url(cluster, proxy), DATABASE_COMMAND_TIMEOUT=1.0, DATABASE_IDLE_IN_TRANSACTION_TIMEOUT=1.0
    )
    ledger = Ledger()
    async with app_client(config) as client:
        assert (await post_insert(client, ledger)).status == 200
        in_flight = asyncio.create_task(post_insert(client, ledger, sleep=0.5))
        await asyncio.sleep(0.2)
        proxy.forwarding = False
        start = time.monotonic()
        outcome = await asyncio.wait_for(in_flight, 10)
        assert time.monotonic() - start < 1.0 + SLACK
        assert outcome.status == 503, outcome.body
        assert "DATABASE_COMMAND_TIMEOUT" in caplog.text
        # One error line for one failure: no second one from closing the silent connection.
        assert [r.name for r in caplog.records if r.levelno >= logging.ERROR] == ["mountaineer_db"]
        proxy.forwarding = True  # the network heals: the process carries on
        assert (await post_insert(client, ledger)).status == 200
    await assert_rows_match(cluster, ledger)
    await assert_no_leaks(cluster, within=3.0)


async def test_closing_a_connection_on_a_black_hole_is_bounded(cluster: PostgresCluster, proxy: BlackHoleProxy) -> None:
    """Default settings (no command timeout): the request commits, the network goes silent, and the
    request's end (closing its kept connection) still returns within about DATABASE_CONNECT_TIMEOUT."""
    config = faults_config(_proxied_url(cluster, proxy), DATABASE_CONNECT_TIMEOUT=1.0)
    engine = engine_for(config)
    closing: list[float] = []

    async def request() -> None:
        async with session_scope(engine, sync_session_class=RequestSyncSession) as session:
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
            await session.commit()  # the request's connection stays open, with no transaction
            proxy.forwarding = False
            closing.append(time.monotonic())

    task = asyncio.create_task(request())
    done, _ = await asyncio.wait({task}, timeout=1.0 + SLACK + 1)  # the query and commit, then the close
    if task not in done:
        await proxy.close()  # cut the connection, so the hanging close ends with the test
    await task
    assert task in done, "closing waited on the silent network"
    assert closing, "the network was never black-holed"


async def _backend_pid(config: object) -> int:
    async with database_session(config) as session:  # type: ignore[arg-type]
        return int((await session.exec(text("SELECT pg_backend_pid()"))).one()[0])  # type: ignore[call-overload]


async def test_cleanup_cancelled_again_still_rolls_back_and_returns_the_connection(
    cluster: PostgresCluster, proxy: BlackHoleProxy
) -> None:
    """A handler fails; while its session rolls back, the task is cancelled again. The rollback is
    shielded: it completes, and the pooled connection goes back to the pool (not discarded)."""
    config = faults_config(
        _proxied_url(cluster, proxy), DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_POOL_SIZE=1, DATABASE_MAX_OVERFLOW=0
    )
    first = await _backend_pid(config)
    proxy.client_sent, proxy.watch_for = asyncio.Event(), b"ROLLBACK"
    proxy.delay = 0.5  # the server's answers (the ROLLBACK's too) take a while

    async def failing_handler() -> None:
        async with database_session(config) as session:
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
            raise ValueError("the handler failed")

    task = asyncio.create_task(failing_handler())
    await asyncio.wait_for(proxy.client_sent.wait(), 10)
    task.cancel()  # the second interruption, mid-rollback
    with pytest.raises(asyncio.CancelledError):
        await task
    proxy.delay = 0
    pool: Any = engine_for(config).pool
    assert (pool.checkedout(), pool.checkedin()) == (0, 1), "the connection went back to the pool"
    assert await _backend_pid(config) == first, "rolled back and reused, not discarded"
    await assert_no_leaks(cluster, allow_idle=1)


async def test_naive_engine_hangs_on_a_black_hole(cluster: PostgresCluster, proxy: BlackHoleProxy) -> None:
    """The naive setup (create_async_engine defaults): a query on a silent network never returns."""
    engine = create_async_engine(_proxied_url(cluster, proxy))
    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            proxy.forwarding = False
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(2.5):
                    await connection.execute(text("SELECT 1"))
            connection.sync_connection.invalidate()  # type: ignore[union-attr]
    except asyncpg.PostgresError:
        raise
    finally:
        await engine.dispose()
