"""DATABASE_POOLER_PREPARED_STATEMENTS: named statements and the statement cache through PgBouncer >= 1.21.

Set against a pooler that cannot take them (PgBouncer 1.18, or 1.24 with max_prepared_statements
= 0), the first request fails with one clear error naming the setting, and so does every later
one, never a random "prepared statement ... does not exist" later.
"""

import asyncio
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from mountaineer_db import DatabaseConfig, SchemaChangedError, database_session, dispose_engines
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.exceptions import DatabaseConfigError, PoolerPreparedStatementsError, ResourceNotFoundError
from mountaineer_db.servers.pgbouncer import PgBouncer
from mountaineer_db.testing import pgbouncer_for
from tests.conftest import require_old_pgbouncer
from tests.sample_apps import server_execute
from tests.stale_load import SCHEMA, StaleConfig, app_client

pytestmark = pytest.mark.pgbouncer

POOLS = pytest.mark.parametrize("pool", ["NULL", "FIXED_PROCESS"])

NAMED = "SELECT name FROM pg_prepared_statements WHERE statement LIKE '%' || :marker || '%' AND name <> ''"


def _refused(port: int, database: str) -> str:
    return (
        f'DATABASE_POOLER_PREPARED_STATEMENTS is on, but the pooler in front of database "{database}" on '
        f"127.0.0.1:{port} passes named prepared statements through unchanged: it is PgBouncer older than "
        "1.21, or PgBouncer with max_prepared_statements = 0, or a pooler in session mode. Named statements "
        'would then fail at random later ("prepared statement ... does not exist"). Upgrade PgBouncer to '
        "1.21 or later (1.24+ recommended) with max_prepared_statements > 0 (200 is the default from 1.24), "
        "or turn DATABASE_POOLER_PREPARED_STATEMENTS off."
    )


def _config(bouncer: PgBouncer, pg_server: Any, database: str, pool: str, **overrides: Any) -> DatabaseConfig:
    url = bouncer.url(database, user=pg_server.user, password=pg_server.password)
    return DatabaseConfig(
        SQLALCHEMY_DATABASE_URI=url, DATABASE_POOL_TYPE=pool, DATABASE_POOLER_PREPARED_STATEMENTS=True, **overrides
    )


async def _named_statements(config: DatabaseConfig) -> list[str]:
    """Run a marked statement three times, then list the names it has on the server connection."""
    marker = f"mdb_marker_{secrets.token_hex(4)}"  # server connections outlive the test: a text of its own
    async with database_session(config) as session:
        for n in range(3):
            value = (await session.exec(text(f"SELECT CAST(:n AS int) AS {marker}").bindparams(n=n))).one()  # type: ignore[call-overload]
            assert value[0] == n
        return [row[0] for row in (await session.exec(text(NAMED).bindparams(marker=marker))).all()]  # type: ignore[call-overload]


async def _request_fails_with(config: DatabaseConfig, expected: str) -> None:
    for _ in range(2):  # the first request, and every later one: no success in between
        with pytest.raises(PoolerPreparedStatementsError) as caught:
            async with database_session(config) as session:
                await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        assert str(caught.value) == expected


@POOLS
async def test_through_pgbouncer_124_both_pools_use_named_statements(
    pool: str, pgbouncer_124: PgBouncer, pg_server: Any, test_database: str
) -> None:
    """PgBouncer prepared the statement under its own name: the client sent a named one."""
    names = await _named_statements(_config(pgbouncer_124, pg_server, test_database, pool))
    assert names and all(name.startswith("PGBOUNCER_") for name in names), names


@POOLS
async def test_without_the_setting_statements_stay_unnamed_through_pgbouncer_124(
    pool: str, pgbouncer_124: PgBouncer, pg_server: Any, test_database: str
) -> None:
    """Nothing changes without the setting (FIXED_PROCESS through PgBouncer: cache size 0, as documented)."""
    url = pgbouncer_124.url(test_database, user=pg_server.user, password=pg_server.password)
    extra = {"DATABASE_STATEMENT_CACHE_SIZE": 0} if pool == "FIXED_PROCESS" else {}
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=url, DATABASE_POOL_TYPE=pool, **extra)
    assert await _named_statements(config) == []


@POOLS
async def test_against_pgbouncer_118_the_first_request_fails_naming_the_setting(
    pool: str, pgbouncer: PgBouncer, pg_server: Any, test_database: str
) -> None:
    require_old_pgbouncer()
    config = _config(pgbouncer, pg_server, test_database, pool)
    await _request_fails_with(config, _refused(pgbouncer.port, test_database))


async def test_against_pgbouncer_124_with_max_prepared_statements_0_the_first_request_fails(
    pg_server: Any, test_database: str
) -> None:
    with pgbouncer_for(pg_server, settings={"max_prepared_statements": "0"}, min_version=(1, 21)) as bouncer:
        config = _config(bouncer, pg_server, test_database, "NULL")
        await _request_fails_with(config, _refused(bouncer.port, test_database))
        # Without the setting the same PgBouncer is fine (unnamed statements).
        async with database_session(DatabaseConfig(SQLALCHEMY_DATABASE_URI=config.database_url)) as session:
            assert (await session.exec(text("SELECT 2"))).one()[0] == 2  # type: ignore[call-overload]


async def test_a_failed_check_answers_a_request_with_500_and_logs_the_reason(
    pgbouncer: PgBouncer, pg_server: Any, test_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In the user's shape: a Mountaineer page whose first query meets the refused check."""
    require_old_pgbouncer()
    await server_execute(pg_server, *SCHEMA, database=test_database)
    url = pgbouncer.url(test_database, user=pg_server.user, password=pg_server.password)
    config = StaleConfig(SQLALCHEMY_DATABASE_URI=url, DATABASE_POOLER_PREPARED_STATEMENTS=True)
    caplog.set_level(logging.ERROR)
    async with app_client(config, tmp_path / "views") as client:
        assert (await client.get("/items")).status_code == 500
    assert any(_refused(pgbouncer.port, test_database) in record.getMessage() for record in caplog.records), [
        record.getMessage() for record in caplog.records
    ]


@POOLS
async def test_directly_to_postgresql_the_setting_is_harmless(
    pool: str, make_config: Callable[..., DatabaseConfig]
) -> None:
    """No pooler between us: the check passes and asyncpg's own names reach the server."""
    names = await _named_statements(make_config(DATABASE_POOL_TYPE=pool, DATABASE_POOLER_PREPARED_STATEMENTS=True))
    assert names and all(name.startswith("__asyncpg_stmt_") for name in names), names


def test_the_setting_with_no_statement_cache_is_refused(make_config: Callable[..., DatabaseConfig]) -> None:
    with pytest.raises(DatabaseConfigError) as caught:
        make_config(DATABASE_POOLER_PREPARED_STATEMENTS=True, DATABASE_STATEMENT_CACHE_SIZE=0)
    assert (
        "DATABASE_POOLER_PREPARED_STATEMENTS is on but DATABASE_STATEMENT_CACHE_SIZE is 0, which means unnamed "
        "statements and no cache. Leave DATABASE_STATEMENT_CACHE_SIZE unset (100) or set it above 0, or turn "
        "DATABASE_POOLER_PREPARED_STATEMENTS off."
    ) in str(caught.value)


async def test_statement_texts_follow_the_migration_revision(
    pgbouncer_124: PgBouncer, pg_server: Any, test_database: str
) -> None:
    """Two engines (two processes) that see the same revisions prepare the same texts, so PgBouncer
    prepares each once per server connection; a new revision gives new texts to both."""
    await server_execute(
        pg_server,
        "DROP TABLE IF EXISTS alembic_version",
        "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)",
        "INSERT INTO alembic_version VALUES ('aaaa00000001')",
        database=test_database,
    )
    configs = [_config(pgbouncer_124, pg_server, test_database, pool) for pool in ("NULL", "FIXED_PROCESS")]

    async def texts() -> set[str]:
        """The statement text each engine's connection ran, as the server received it."""
        found = set()
        for config in configs:
            async with database_session(config) as session:
                found.add((await session.exec(text("SELECT current_query() AS mdb_texts_marker"))).one()[0])  # type: ignore[call-overload]
            await engine_for(config).dispose()
        return found

    try:
        first = await texts()
        assert len(first) == 1 and next(iter(first)).startswith("/* mdb:"), first
        await server_execute(
            pg_server, "UPDATE alembic_version SET version_num = 'aaaa00000002'", database=test_database
        )
        # New engines (processes started after the migration) read the new revision at once.
        await dispose_engines()
        second = await texts()
        assert len(second) == 1 and second != first and next(iter(second)).startswith("/* mdb:"), (first, second)
    finally:
        await server_execute(pg_server, "DROP TABLE IF EXISTS alembic_version", database=test_database)


async def test_the_test_kit_refuses_a_pgbouncer_version_it_cannot_find(pg_server: Any) -> None:
    with pytest.raises(ResourceNotFoundError) as caught, pgbouncer_for(pg_server, min_version=(9, 0)):
        pass
    assert str(caught.value) == (
        "No PgBouncer 9.0 or newer was found; build one with `bash scripts/build_pgbouncer.sh` "
        "(PgBouncer 1.24 from Debian 13's source package)."
    )


async def test_after_a_migration_a_new_process_never_meets_the_old_statements(
    pgbouncer_124: PgBouncer, pg_server: Any, test_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    """`migrate apply` writes a new revision with its DDL: processes started afterwards prepare new
    texts, so the stale ones left on every PgBouncer server connection are never used."""
    await server_execute(
        pg_server,
        "DROP TABLE IF EXISTS alembic_version, mdb_after_migration",
        "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)",
        "INSERT INTO alembic_version VALUES ('bbbb00000001')",
        "CREATE TABLE mdb_after_migration (id int PRIMARY KEY)",
        "INSERT INTO mdb_after_migration VALUES (1)",
        database=test_database,
    )
    config = _config(pgbouncer_124, pg_server, test_database, "NULL")

    async def on_every_server_connection() -> set[int]:
        """`SELECT *` in 4 sessions at once: one per server connection of PgBouncer's pool of 4."""
        widths: set[int] = set()
        gate = asyncio.Barrier(4)

        async def one() -> None:
            async with database_session(config) as session:
                await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
                await gate.wait()  # all four hold a server connection now
                row = (await session.exec(text("SELECT * FROM mdb_after_migration"))).one()  # type: ignore[call-overload]
                widths.add(len(row))

        await asyncio.gather(*(one() for _ in range(4)))
        return widths

    try:
        assert await on_every_server_connection() == {1}
        await dispose_engines()  # the old process goes away
        await server_execute(
            pg_server,
            "ALTER TABLE mdb_after_migration ADD COLUMN note text",
            "UPDATE alembic_version SET version_num = 'bbbb00000002'",
            database=test_database,
        )
        caplog.clear()
        assert await on_every_server_connection() == {2}
        assert [
            r.getMessage() for r in caplog.records if r.name == "mountaineer_db" and r.levelno >= logging.INFO
        ] == []
    finally:
        await server_execute(
            pg_server, "DROP TABLE IF EXISTS alembic_version, mdb_after_migration", database=test_database
        )


@POOLS
async def test_after_a_schema_change_only_the_first_later_statement_fails(
    pool: str, pgbouncer_124: PgBouncer, pg_server: Any, test_database: str
) -> None:
    """DDL without a new revision, the stale statement prepared on every server connection of
    PgBouncer's pool: one request fails (503, its stale statement was not its first), then the
    engine prepares new texts. Re-preparing the old text would fail once per server connection."""
    table = f"mdb_changed_{secrets.token_hex(3)}"
    await server_execute(
        pg_server,
        f"CREATE TABLE {table} (id int PRIMARY KEY)",
        f"INSERT INTO {table} VALUES (1)",
        database=test_database,
    )
    config = _config(
        pgbouncer_124, pg_server, test_database, pool, **({"DATABASE_POOL_SIZE": 4} if pool != "NULL" else {})
    )
    gate = asyncio.Barrier(4)

    async def warm() -> None:
        async with database_session(config) as session:
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
            await gate.wait()  # four server connections held at once: each prepares the statement
            await session.exec(text(f"SELECT * FROM {table}"))  # type: ignore[call-overload]

    async def later() -> int:
        try:
            async with database_session(config) as session:
                await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
                return len((await session.exec(text(f"SELECT * FROM {table}"))).one())  # type: ignore[call-overload]
        except SchemaChangedError:
            return 503

    try:
        await asyncio.gather(*(warm() for _ in range(4)))
        await server_execute(pg_server, f"ALTER TABLE {table} ADD COLUMN note text", database=test_database)
        assert [await later() for _ in range(8)] == [503] + [2] * 7
    finally:
        await server_execute(pg_server, f"DROP TABLE IF EXISTS {table}", database=test_database)
