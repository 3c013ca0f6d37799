"""`check_database()`: readiness through the app's own path; never raises for a lost database."""

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import event

from mountaineer_db import DatabaseCheck, DatabaseConfig, DatabaseStatus, check_database
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.testing import counted_queries
from tests.sample_apps import fresh_database, superuser_connect

PASSWORD = "s3cret-Pa55"


async def test_a_reachable_database_without_migrations_is_ready(make_config: Callable[..., DatabaseConfig]) -> None:
    with counted_queries() as queries:
        result = await check_database(make_config())
    assert isinstance(result, DatabaseCheck)
    assert (result.ok, result.status, result.reachable, result.error) == (True, DatabaseStatus.OK, True, None)
    assert result.database_revisions is None and result.head_revisions is None
    assert result.round_trip_ms is not None and 0 < result.round_trip_ms <= result.total_ms < 5000
    assert result.as_dict()["status"] == "ok"
    assert queries.statements == [], "the probe's statements are internal: query counts leave them out"


@pytest.mark.pgbouncer
async def test_it_goes_through_pgbouncer_when_the_app_does(
    bouncer_config: Callable[..., DatabaseConfig], pgbouncer: Any
) -> None:
    config = bouncer_config()
    result = await check_database(config)
    assert result.ok, result
    assert result.database.endswith(f":{pgbouncer.port}")  # the app's own path, not the server's port


@pytest.mark.pgbouncer
async def test_a_database_that_accepts_but_never_answers_is_reported_within_the_connect_timeout(
    bouncer_config: Callable[..., DatabaseConfig], pgbouncer: Any, pg_server: Any, test_database: str
) -> None:
    """A paused PgBouncer lets the client log in and holds its queries (up to its query_wait_timeout,
    30 s here): the check still answers within DATABASE_CONNECT_TIMEOUT, as `unreachable`."""
    assert (await check_database(bouncer_config())).ok  # PgBouncer now knows the server: logins need no server
    await pgbouncer.admin(f"PAUSE {test_database}", user=pg_server.user, password=pg_server.password)
    try:
        result = await asyncio.wait_for(check_database(bouncer_config(DATABASE_CONNECT_TIMEOUT=0.5)), 10)
    finally:
        await pgbouncer.admin(f"RESUME {test_database}", user=pg_server.user, password=pg_server.password)
    assert result.status is DatabaseStatus.UNREACHABLE
    assert result.error == f"No answer from {result.database} within DATABASE_CONNECT_TIMEOUT=0.5s."


async def test_it_never_goes_through_the_migrations_url(make_config: Callable[..., DatabaseConfig]) -> None:
    """MIGRATIONS_DATABASE_URI is for migrations and admin commands: readiness is the app's own path."""
    elsewhere = f"postgresql://app:{PASSWORD}@127.0.0.1:{_free_port()}/app"  # nothing listens there
    result = await check_database(make_config(MIGRATIONS_DATABASE_URI=elsewhere))
    assert result.ok, result


def _free_port() -> int:
    from mountaineer_db.servers.cluster import free_port

    return free_port()  # reserved: nothing of another test comes to listen there


async def test_a_refused_connection_is_reported_not_raised() -> None:
    port = _free_port()
    config = DatabaseConfig(
        SQLALCHEMY_DATABASE_URI=f"postgresql://app:{PASSWORD}@127.0.0.1:{port}/app", DATABASE_CONNECT_TIMEOUT=2
    )
    result = await check_database(config)
    assert (result.ok, result.reachable, result.status) == (False, False, DatabaseStatus.UNREACHABLE)
    assert result.error is not None
    assert result.error.startswith(f'Could not connect to database "app" on 127.0.0.1:{port} as user "app": ')
    assert PASSWORD not in repr(result) and PASSWORD not in str(result.as_dict())
    assert result.round_trip_ms is None


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never answers (a black-holed database)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_a_silent_database_is_reported_within_the_connect_timeout(silent_server: int) -> None:
    config = DatabaseConfig(
        SQLALCHEMY_DATABASE_URI=f"postgresql://app:{PASSWORD}@127.0.0.1:{silent_server}/app",
        DATABASE_CONNECT_TIMEOUT=0.5,
    )
    started = time.monotonic()
    result = await check_database(config)
    assert time.monotonic() - started < 2
    assert result.status is DatabaseStatus.UNREACHABLE
    assert result.error is not None and "DATABASE_CONNECT_TIMEOUT" in result.error
    assert PASSWORD not in str(result.as_dict())


@pytest.fixture
def own_database(pg_server: Any) -> Iterator[str]:
    with fresh_database(pg_server, prefix="mdb_health") as name:
        yield name


async def test_invalid_indexes_are_listed_but_not_one_being_built(pg_server: Any, own_database: str) -> None:
    """A failed CREATE INDEX CONCURRENTLY leaves an INVALID index: listed (status unchanged). An
    index still being built is INVALID too until it is done: not listed."""
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(own_database))
    admin = await superuser_connect(pg_server, own_database)
    writer = await superuser_connect(pg_server, own_database)
    builder = await superuser_connect(pg_server, own_database)
    try:
        await admin.execute("CREATE TABLE t (id int, v int); INSERT INTO t VALUES (1, 1), (2, 1)")
        with pytest.raises(asyncpg.UniqueViolationError):
            await admin.execute("CREATE UNIQUE INDEX CONCURRENTLY ux_t_v ON t (v)")
        await writer.execute("BEGIN; UPDATE t SET id = id")
        building = asyncio.create_task(builder.execute("CREATE INDEX CONCURRENTLY ix_t_id ON t (id)"))
        waiting = (
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE query LIKE 'CREATE INDEX CONCURRENTLY%' AND wait_event_type = 'Lock'"
        )
        async with asyncio.timeout(30):
            while not await admin.fetchval(waiting):
                await asyncio.sleep(0.05)
        result = await check_database(config)
        assert (result.ok, result.invalid_indexes) == (True, ("public.ux_t_v",))
        assert result.as_dict()["invalid_indexes"] == ["public.ux_t_v"]
        await writer.execute("COMMIT")
        await building
        assert (await check_database(config)).invalid_indexes == ("public.ux_t_v",)
    finally:
        for connection in (admin, writer, builder):
            await connection.close()


# -- Issue 23: an unauthenticated route, probed by strangers --------------------------------------


async def test_concurrent_checks_share_one_probe_and_one_connection(make_config: Callable[..., DatabaseConfig]) -> None:
    """80 concurrent checks used to open 80 server connections: a flood of probes could use up
    max_connections and turn every request of the app away with "too many clients"."""
    config = make_config()
    engine = engine_for(config)
    connects: list[object] = []
    event.listen(engine.sync_engine.pool, "connect", lambda *_: connects.append(1))
    results = await asyncio.gather(*(check_database(config) for _ in range(80)))
    assert {(result.ok, result.status) for result in results} == {(True, DatabaseStatus.OK)}
    assert len(connects) == 1
    await check_database(config)
    assert len(connects) == 2, "a check after the shared one has finished probes again: results are not cached"


async def test_a_caller_that_goes_away_does_not_cancel_the_probe_of_the_others(
    make_config: Callable[..., DatabaseConfig],
) -> None:
    config = make_config()
    first = asyncio.create_task(check_database(config))
    others = [asyncio.create_task(check_database(config)) for _ in range(5)]
    await asyncio.sleep(0)  # one turn of the loop: every task has joined the probe the first one started
    first.cancel()
    results = await asyncio.gather(*others)
    assert all(result.ok for result in results)
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_the_public_answer_names_no_host_port_database_login_or_server_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The readiness JSON used to give anyone the host, port, database, login and the server's error text."""
    port = _free_port()
    config = DatabaseConfig(
        SQLALCHEMY_DATABASE_URI=f"postgresql://login-marker:{PASSWORD}@127.0.0.1:{port}/dbname-marker",
        DATABASE_CONNECT_TIMEOUT=2,
    )
    caplog.set_level(logging.WARNING, logger="mountaineer_db")
    results = await asyncio.gather(*(check_database(config) for _ in range(10)))
    public = results[0].as_dict()
    assert public == {
        "ok": False,
        "status": "unreachable",
        "round_trip_ms": None,
        "total_ms": public["total_ms"],
        "database_revisions": None,
        "head_revisions": None,
        "error": "The database cannot be reached.",
        "invalid_indexes": [],
    }
    shown = json.dumps(public)
    for detail in ("127.0.0.1", str(port), "dbname-marker", "login-marker", "refused", PASSWORD):
        assert detail not in shown
    detailed = results[0].as_dict(details=True)
    assert detailed["database"] == f'database "dbname-marker" on 127.0.0.1:{port}'
    assert detailed["error"].startswith(f'Could not connect to database "dbname-marker" on 127.0.0.1:{port} as user')
    # Operators find the reason in the log: once per probe, not once per caller.
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 1
    assert warnings[0].startswith('The readiness check failed: Could not connect to database "dbname-marker"')
    assert PASSWORD not in warnings[0]


def test_an_error_or_pending_migrations_are_public_without_the_server_text() -> None:
    failed = DatabaseCheck(
        status=DatabaseStatus.ERROR,
        database='database "app" on db.internal:5432',
        round_trip_ms=None,
        total_ms=1.0,
        database_revisions=None,
        head_revisions=None,
        error='The readiness check failed on database "app" on db.internal:5432: permission denied for table x',
    )
    assert failed.as_dict()["error"] == "The readiness check's statements failed."
    assert "db.internal" not in json.dumps(failed.as_dict())
    pending = DatabaseCheck(
        status=DatabaseStatus.MIGRATIONS_PENDING,
        database='database "app" on db.internal:5432',
        round_trip_ms=0.3,
        total_ms=1.0,
        database_revisions=("a1",),
        head_revisions=("b2",),
        error="The database is at a1, the code at b2: run `mountaineer-db migrate apply`.",
    )
    assert pending.as_dict()["error"] == pending.error, "what to run is no secret"
