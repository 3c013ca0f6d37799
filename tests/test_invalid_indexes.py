"""Statements run outside a transaction (`mountaineer_db.migrations.autocommit`): a failed or
killed CREATE INDEX CONCURRENTLY leaves an INVALID index, `apply` says so with the fix, the
next `apply` recovers, `check_database()` lists it; and a failure never claims a rollback that
did not happen. Against a real PostgreSQL, with the CLI as deploys run it."""

import asyncio
import os
import signal
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mountaineer_db import check_database, migrations
from mountaineer_db.settings.config import DatabaseConfig
from tests.sample_apps import (
    PYTHON,
    cli_env,
    fresh_database,
    run_cli,
    sample_app_on_path,
    server_execute,
    server_fetch,
    superuser_connect,
    write_migrations_folder,
)

CREATE = '''
    """create items"""
    from alembic import op

    revision = "ffff00000001"
    down_revision = None


    def upgrade():
        op.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        op.execute("INSERT INTO items SELECT g, 'item ' || (g % 50) FROM generate_series(1, 100) g")
        op.execute("CREATE TYPE mood AS ENUM ('calm')")


    def downgrade():
        op.execute("DROP TABLE items")
        op.execute("DROP TYPE mood")
'''
UNIQUE_TITLES = '''
    """unique titles"""
    from alembic import op

    revision = "ffff00000002"
    down_revision = "ffff00000001"


    def upgrade():
        with op.get_context().autocommit_block():
            op.create_index("ux_items_title", "items", ["title"], unique=True, postgresql_concurrently=True)


    def downgrade():
        with op.get_context().autocommit_block():
            op.drop_index("ux_items_title", table_name="items", postgresql_concurrently=True)
'''
INDEX_THEN_FAIL = '''
    """index, enum value, then a failing step"""
    from alembic import op

    revision = "ffff00000002"
    down_revision = "ffff00000001"


    def upgrade():
        with op.get_context().autocommit_block():
            op.create_index("ix_items_title", "items", ["title"], postgresql_concurrently=True{if_not_exists})
            op.execute("ALTER TYPE mood ADD VALUE IF NOT EXISTS 'glad'")
        op.execute("UPDATE items SET title = title || '!'")
        op.execute("SELECT 1 / {divisor}")


    def downgrade():
        pass
'''
CONFIG = "migrapp.config:TablesConfig"
INDEX_QUERY = (
    "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "WHERE c.relname LIKE '%_items_title' ORDER BY 1"
)


@pytest.fixture
def database(pg_server: Any) -> Iterator[str]:
    with fresh_database(pg_server, prefix="mdb_invalid") as name:
        yield name


@pytest.fixture
def package(tmp_path: Path) -> Iterator[Path]:
    with sample_app_on_path(tmp_path) as package:
        versions = write_migrations_folder(package) / "versions"
        (versions / "0001_create.py").write_text(textwrap.dedent(CREATE))
        yield package


def write_second(package: Path, source: str) -> None:
    (package / "migrations" / "versions" / "0002_second.py").write_text(textwrap.dedent(source))


def app_config(pg_server: Any, database: str) -> DatabaseConfig:
    from migrapp.config import TablesConfig  # type: ignore[import-not-found]

    config: DatabaseConfig = TablesConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(database))
    return config


async def indexes(pg_server: Any, database: str) -> list[tuple[str, bool]]:
    return [tuple(row) for row in await server_fetch(pg_server, INDEX_QUERY, database=database)]  # type: ignore[misc]


async def test_a_failed_concurrent_index_is_named_with_its_fix_and_the_next_apply_rebuilds_it(
    pg_server: Any, database: str, package: Path
) -> None:
    config = app_config(pg_server, database)
    await migrations.apply("ffff00000001", config=config)
    write_second(package, UNIQUE_TITLES)
    env = cli_env(pg_server.url(database))

    failed = run_cli("--config", CONFIG, "migrate", "apply", cwd=package.parent, env=env)
    assert failed.returncode == 1, failed.stderr
    assert failed.stderr == (
        "Error: Revision ffff00000002 (unique titles) failed in a statement run outside a transaction, so it was "
        'not rolled back: could not create unique index "ux_items_title". The database stays at revision '
        'ffff00000001. Index "public"."ux_items_title" is left INVALID (queries do not use it, writes still '
        "maintain it): fix the cause and run `mountaineer-db migrate apply` again, which drops it and builds it "
        'again, or drop it yourself: DROP INDEX CONCURRENTLY IF EXISTS "public"."ux_items_title";\n'
    )
    assert "item 7" not in failed.stderr, "no value from the failing rows in the message"
    assert await indexes(pg_server, database) == [("ux_items_title", False)]
    assert (await check_database(config)).invalid_indexes == ("public.ux_items_title",)

    # The cause fixed (duplicate titles), the same deploy again: the leftover is dropped and rebuilt.
    await server_execute(pg_server, "UPDATE items SET title = 'item ' || id", database=database)
    again = run_cli("--config", CONFIG, "migrate", "apply", cwd=package.parent, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "Applied ffff00000002 (head)  unique titles\n"
    assert again.stderr == (
        'Dropping the INVALID index "public"."ux_items_title", left by an earlier failed build, '
        "before building it again.\n"
    )
    assert await indexes(pg_server, database) == [("ux_items_title", True)]
    result = await check_database(config)
    assert result.invalid_indexes == () and result.as_dict()["invalid_indexes"] == []


@pytest.mark.slow
async def test_a_leader_killed_mid_concurrently_is_recovered_by_the_next_apply(
    pg_server: Any, database: str, package: Path
) -> None:
    """SIGKILL while the index build waits for an open writer: the server notices the vanished
    client within a second (client_connection_check_interval), cancels the build, which leaves
    an INVALID index, and ends the session, which releases the migration lock. The next
    `apply` drops the leftover and builds the index."""
    config = app_config(pg_server, database)
    await migrations.apply("ffff00000001", config=config)
    await server_execute(pg_server, "UPDATE items SET title = 'item ' || id", database=database)
    write_second(package, UNIQUE_TITLES)
    env = cli_env(pg_server.url(database), DATABASE_APPLICATION_NAME="mdb-leader")
    writer = await superuser_connect(pg_server, database)
    observer = await superuser_connect(pg_server, database)
    leader_sessions = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'mdb-leader'"
    try:
        await writer.execute("BEGIN; UPDATE items SET title = title WHERE id = 1")
        leader = subprocess.Popen(
            [PYTHON, "-m", "mountaineer_db.cli", "--config", CONFIG, "migrate", "apply"],
            cwd=package.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        building = (
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'mdb-leader' "
            "AND query LIKE 'CREATE UNIQUE INDEX CONCURRENTLY%' AND wait_event_type = 'Lock'"
        )
        async with asyncio.timeout(60):
            while not await observer.fetchval(building, database):
                await asyncio.sleep(0.05)
        os.kill(leader.pid, signal.SIGKILL)
        leader.communicate(timeout=30)
        # The writer is still open: without the check, the orphaned build would wait for it, holding the lock.
        async with asyncio.timeout(20):
            while await observer.fetchval(leader_sessions, database):
                await asyncio.sleep(0.05)
        assert await indexes(pg_server, database) == [("ux_items_title", False)]
        assert (await check_database(config)).invalid_indexes == ("public.ux_items_title",)
        await writer.execute("COMMIT")
    finally:
        await writer.close()
        await observer.close()
    again = run_cli("--config", CONFIG, "migrate", "apply", cwd=package.parent, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "Applied ffff00000002 (head)  unique titles\n"
    assert "Dropping the INVALID index" in again.stderr
    assert await indexes(pg_server, database) == [("ux_items_title", True)]
    assert [r.id for r in await migrations.current(config=config)] == ["ffff00000002"]


async def test_a_failure_after_statements_outside_a_transaction_names_what_stays(
    pg_server: Any, database: str, package: Path
) -> None:
    """The revision's transaction is rolled back, but the index and the enum value it made
    outside it stay: the message says both, and how to make the revision safe to re-run."""
    config = app_config(pg_server, database)
    await migrations.apply("ffff00000001", config=config)
    write_second(package, INDEX_THEN_FAIL.format(if_not_exists="", divisor="0"))
    with pytest.raises(migrations.MigrationError) as failed:
        await migrations.apply(config=config)
    assert str(failed.value) == (
        "Revision ffff00000002 (index, enum value, then a failing step) failed and its transaction was rolled "
        'back: division by zero. The database stays at revision ffff00000001. Index "public"."ix_items_title" '
        "was built and stays: running the revision again fails on it unless it creates the index with "
        'if_not_exists=True; or drop it: DROP INDEX CONCURRENTLY IF EXISTS "public"."ix_items_title"; '
        "Run outside a transaction before the failure, and not rolled back: ALTER TYPE mood."
    )
    titles = await server_fetch(pg_server, "SELECT count(*) FROM items WHERE title LIKE '%!'", database=database)
    assert titles == [(0,)], "the UPDATE in the revision's transaction was rolled back"
    assert await indexes(pg_server, database) == [("ix_items_title", True)]

    # Written as the message says, the revision runs again over what the failed run left.
    write_second(package, INDEX_THEN_FAIL.format(if_not_exists=", if_not_exists=True", divisor="1"))
    assert [r.id for r in await migrations.apply(config=config)] == ["ffff00000002"]
    assert await indexes(pg_server, database) == [("ix_items_title", True)]
