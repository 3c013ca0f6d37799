"""What a request sees when its server goes away or turns read-only (mountaineer_db.engines.failover),
on the suite's PostgreSQL. The same promises on a real Patroni cluster: tests/test_patroni.py.

- A request whose first statement lost its connection runs once more on a fresh connection
  and succeeds; a statement after the first, or after a commit, is never run again (503).
- SQLSTATE 25006 on the primary's connection (what a demoted primary answers) is a 503 with
  `Retry-After: 1` and replaces the pooled connections: once the address reaches a writable
  server again, the next requests write.
"""

import asyncio
import logging
import pickle
import secrets
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from mountaineer_db import DatabaseUnavailableError, PrimaryDemotedError, dispose_engines
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.engines.failover import _recover
from tests.failover_app import ADD, SCHEMA, FailoverConfig, failover_client
from tests.sample_apps import server_execute, superuser_connect

DEMOTED = {"detail": "The database primary changed while this request ran. Try again."}
UNAVAILABLE = {"detail": "The database is unavailable. Try again shortly."}
POOLS = {"NULL": {}, "FIXED_PROCESS": {"DATABASE_POOL_TYPE": "FIXED_PROCESS", "DATABASE_POOL_SIZE": 2}}


async def _lock_waiters(watcher: asyncpg.Connection, application: str) -> list[int]:
    rows = await watcher.fetch(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'", application
    )
    return [row["pid"] for row in rows]


async def _wait_for_waiter(watcher: asyncpg.Connection, application: str, *, other_than: int = 0) -> int:
    """The backend of `application` blocked on the gate's lock (not `other_than`), once there is one."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        waiting = [pid for pid in await _lock_waiters(watcher, application) if pid != other_than]
        if waiting:
            return waiting[0]
        await asyncio.sleep(0.02)
    raise AssertionError(f"no statement of {application} waited on the gate within 20 s")


@pytest.fixture
async def gate(pg_server: Any, test_database: str) -> Any:
    """(holder, watcher): the holder has locked the gate table in an open transaction."""
    await server_execute(pg_server, *SCHEMA, database=test_database)
    holder = await superuser_connect(pg_server, test_database)
    watcher = await superuser_connect(pg_server, test_database)
    transaction = holder.transaction()
    await transaction.start()
    await holder.execute("LOCK TABLE gate IN ACCESS EXCLUSIVE MODE")
    try:
        yield transaction, watcher
    finally:
        if holder.is_in_transaction():
            await transaction.rollback()
        await holder.close()
        await watcher.close()


@pytest.mark.parametrize("pool", sorted(POOLS))
async def test_a_request_whose_first_statement_lost_its_connection_runs_it_once_more_and_succeeds(
    pg_server: Any, test_database: str, gate: Any, tmp_path: Path, pool: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The request's first statement is waiting on a lock when its backend is terminated (as at a
    failover): nothing of the request reached the database, so it runs again on a new connection
    and the reader gets its page, not a 503."""
    transaction, watcher = gate
    application = f"gate_{secrets.token_hex(3)}"
    config = FailoverConfig(
        SQLALCHEMY_DATABASE_URI=pg_server.url(test_database), DATABASE_APPLICATION_NAME=application, **POOLS[pool]
    )
    caplog.set_level(logging.INFO, logger="mountaineer_db")
    async with failover_client(config, tmp_path / "views") as client:
        request = asyncio.ensure_future(client.get("/gate"))
        first = await _wait_for_waiter(watcher, application)
        assert await watcher.fetchval("SELECT pg_terminate_backend($1)", first)
        replay = await _wait_for_waiter(watcher, application, other_than=first)  # the statement, again
        await transaction.rollback()  # the lock goes: the replayed statement completes
        response = await request
    assert response.status_code == 200, response.text
    assert replay != first
    assert "The request's first statement lost its connection (" in caplog.text


async def test_the_first_statement_is_run_again_once_only(
    pg_server: Any, test_database: str, gate: Any, tmp_path: Path
) -> None:
    """If the replayed statement loses its connection too, the request gets the 503: no third try."""
    _transaction, watcher = gate
    application = f"gate_{secrets.token_hex(3)}"
    config = FailoverConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(test_database), DATABASE_APPLICATION_NAME=application)
    async with failover_client(config, tmp_path / "views") as client:
        request = asyncio.ensure_future(client.get("/gate"))
        first = await _wait_for_waiter(watcher, application)
        assert await watcher.fetchval("SELECT pg_terminate_backend($1)", first)
        replay = await _wait_for_waiter(watcher, application, other_than=first)
        assert await watcher.fetchval("SELECT pg_terminate_backend($1)", replay)
        async with asyncio.timeout(15):
            response = await request
        assert await _lock_waiters(watcher, application) == [], "the statement was run a third time"
    assert response.status_code == 503 and response.json() == UNAVAILABLE


@pytest.mark.parametrize("page", ["/gate-later", "/gate-after-commit", "/gate-pending", "/gate-autoflush"])
async def test_a_statement_after_the_first_or_after_a_commit_is_never_run_again(
    pg_server: Any, test_database: str, gate: Any, tmp_path: Path, page: str
) -> None:
    """The lost statement follows another one (its transaction had begun on the server), or
    follows a commit, or has a change pending that a replay would drop (flushed by the statement's
    autoflush or not): it is not run again. The request answers 503 while the gate is still
    locked (a replay would be stuck behind the lock), and no second statement ever waits."""
    _transaction, watcher = gate
    application = f"gate_{secrets.token_hex(3)}"
    config = FailoverConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(test_database), DATABASE_APPLICATION_NAME=application)
    async with failover_client(config, tmp_path / "views") as client:
        request = asyncio.ensure_future(client.get(page))
        first = await _wait_for_waiter(watcher, application)
        assert await watcher.fetchval("SELECT pg_terminate_backend($1)", first)
        async with asyncio.timeout(15):
            response = await request
        assert await _lock_waiters(watcher, application) == [], "the statement was run again"
    assert response.status_code == 503
    assert response.json() == UNAVAILABLE and response.headers["retry-after"] == "1"


async def test_a_read_only_answer_on_the_primary_is_a_503_and_the_pool_is_replaced(
    pg_server: Any, tmp_path: Path
) -> None:
    """SQLSTATE 25006 on the primary's connection, as a demoted primary answers: the write gets the
    documented 503 with Retry-After: 1, every pooled connection is replaced, and once the address
    reaches a writable server again the next writes succeed: no 500 at any point.

    Here the database's default_transaction_read_only stands in for "the server became a replica";
    like a standby's read-only state, it is fixed for a connection when it is opened. The real
    switchover: tests/test_patroni.py."""
    database = f"mdb_demoted_{secrets.token_hex(3)}"
    await server_execute(pg_server, f'CREATE DATABASE "{database}"')
    await server_execute(pg_server, *SCHEMA, database=database)
    application = f"demoted_{secrets.token_hex(3)}"
    config = FailoverConfig(
        SQLALCHEMY_DATABASE_URI=pg_server.url(database), DATABASE_APPLICATION_NAME=application, **POOLS["FIXED_PROCESS"]
    )
    holder = await superuser_connect(pg_server, database)
    watcher = await superuser_connect(pg_server, database)  # outside a transaction: pg_stat_activity is fresh
    try:
        async with failover_client(config, tmp_path / "views") as client:
            assert (await client.post(ADD, json={"note": "before"})).status_code == 200
            await server_execute(pg_server, f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
            engine = engine_for(config)
            await engine.dispose()  # the pool reconnects: its connections now land on a "replica"
            # Two readers at once (held on the gate until both have a connection): two pooled connections.
            async with holder.transaction():
                await holder.execute("LOCK TABLE gate IN ACCESS EXCLUSIVE MODE")
                readers = [asyncio.ensure_future(client.get("/gate")) for _ in range(2)]
                first = await _wait_for_waiter(watcher, application)
                await _wait_for_waiter(watcher, application, other_than=first)
            assert [(await reader).status_code for reader in readers] == [200, 200], "reads work on a replica"
            assert engine.pool.checkedin() == 2  # type: ignore[attr-defined]
            demoted = await client.post(ADD, json={"note": "during"})
            assert demoted.status_code == 503, demoted.text
            assert demoted.json() == DEMOTED and demoted.headers["retry-after"] == "1"
            # The address now reaches a writable server (the "DNS" follows the new primary).
            await server_execute(pg_server, f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
            statuses = [(await client.post(ADD, json={"note": f"after {n}"})).status_code for n in range(3)]
            assert statuses == [200, 200, 200], "a connection to the read-only server stayed in the pool"
    finally:
        await holder.close()
        await watcher.close()
        await dispose_engines()
        await server_execute(pg_server, f'DROP DATABASE "{database}" WITH (FORCE)')


async def test_a_read_only_transaction_the_caller_asked_for_is_not_a_failover(
    pg_server: Any, test_database: str
) -> None:
    """25006 inside a transaction begun READ ONLY on purpose (`postgresql_readonly`, as read sessions
    do) is the caller's error, not a demoted primary: it propagates as the driver's error and the
    pool is left alone."""
    await server_execute(pg_server, *SCHEMA, database=test_database)
    config = FailoverConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(test_database), **POOLS["FIXED_PROCESS"])
    engine = engine_for(config)
    async with engine.connect() as connection:
        pid = await connection.scalar(text("SELECT pg_backend_pid()"))
    with pytest.raises(DBAPIError) as caught:
        async with engine.connect() as connection:
            connection = await connection.execution_options(postgresql_readonly=True)
            await connection.execute(text("INSERT INTO ledger (note) VALUES ('read-only on purpose')"))
    assert getattr(caught.value.orig, "sqlstate", None) == "25006" or "read-only" in str(caught.value)
    assert not caught.value.connection_invalidated
    async with engine.connect() as connection:
        assert await connection.scalar(text("SELECT pg_backend_pid()")) == pid, "the pool was replaced"


def test_primary_demoted_error_is_a_503_that_keeps_its_message_when_pickled() -> None:
    error = PrimaryDemotedError("The primary's connection reached a read-only server.")
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, DatabaseUnavailableError) and copy.message == error.message
    assert (copy.status_code, copy.headers, copy.detail) == (503, {"Retry-After": "1"}, DEMOTED["detail"])


async def test_every_engine_has_the_demoted_primary_recovery(pg_server: Any, test_database: str) -> None:
    engine = engine_for(FailoverConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(test_database)))
    assert event.contains(engine.sync_engine, "handle_error", _recover)
