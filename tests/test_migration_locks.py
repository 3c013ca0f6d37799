"""Lock safety of `apply` against a real PostgreSQL: DDL behind a transaction holding a lock
fails fast with one clear error (MIGRATIONS_LOCK_TIMEOUT), while CREATE INDEX CONCURRENTLY,
the advisory lock between replicas and long statements are not cut short."""

import asyncio
import re
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from mountaineer_db import DatabaseConfigError, migrations
from mountaineer_db.settings.config import DatabaseConfig
from tests.sample_apps import (
    PYTHON,
    cli_env,
    fresh_database,
    sample_app_on_path,
    server_fetch,
    superuser_connect,
    write_migrations_folder,
)

CREATE = '''
    """create items"""
    from alembic import op

    revision = "bbbb00000001"
    down_revision = None


    def upgrade():
        op.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
        op.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g")


    def downgrade():
        op.execute("DROP TABLE items")
'''
ADD_COLUMN = '''
    """add note"""
    from alembic import op

    revision = "bbbb00000002"
    down_revision = "bbbb00000001"


    def upgrade():
        op.execute("ALTER TABLE items ADD COLUMN note text")


    def downgrade():
        op.execute("ALTER TABLE items DROP COLUMN note")
'''
CONCURRENT_INDEX = '''
    """index title concurrently"""
    from alembic import op

    revision = "bbbb00000002"
    down_revision = "bbbb00000001"


    def upgrade():
        with op.get_context().autocommit_block():
            op.create_index("ix_items_title", "items", ["title"], postgresql_concurrently=True)


    def downgrade():
        with op.get_context().autocommit_block():
            op.drop_index("ix_items_title", table_name="items", postgresql_concurrently=True)
'''
SLOW = '''
    """slow"""
    import time

    from alembic import op

    revision = "bbbb00000002"
    down_revision = "bbbb00000001"


    def upgrade():
        op.execute("SELECT pg_sleep(1.0)")  # one statement longer than the app's statement and command timeouts
        time.sleep(0.6)  # idle in the transaction for longer than the app's idle-in-transaction timeout
        op.execute("ALTER TABLE items ADD COLUMN slow text")


    def downgrade():
        op.execute("ALTER TABLE items DROP COLUMN slow")
'''

LOCK_TIMEOUT_ERROR = (
    "Revision bbbb00000002 (add note) waited more than MIGRATIONS_LOCK_TIMEOUT=0.5s for a lock held by another "
    "transaction and was rolled back; the database stays at revision bbbb00000001. Find the blocking transaction "
    "in pg_stat_activity (long-running or idle in transaction) and end it, or retry off-peak, or raise "
    "MIGRATIONS_LOCK_TIMEOUT."
)


@pytest.fixture
def database(pg_server: Any) -> Iterator[str]:
    with fresh_database(pg_server, prefix="mdb_lock") as name:
        yield name


def app_with(tmp_path: Path, second: str) -> Iterator[Path]:
    with sample_app_on_path(tmp_path) as package:
        versions = write_migrations_folder(package) / "versions"
        (versions / "0001_create.py").write_text(textwrap.dedent(CREATE))
        (versions / "0002_second.py").write_text(textwrap.dedent(second))
        yield package


@pytest.fixture
def add_column_app(tmp_path: Path) -> Iterator[Path]:
    yield from app_with(tmp_path, ADD_COLUMN)


@pytest.fixture
def index_app(tmp_path: Path) -> Iterator[Path]:
    yield from app_with(tmp_path, CONCURRENT_INDEX)


@pytest.fixture
def slow_app(tmp_path: Path) -> Iterator[Path]:
    yield from app_with(tmp_path, SLOW)


def app_config(pg_server: Any, database: str, **overrides: Any) -> DatabaseConfig:
    from migrapp.config import TablesConfig  # type: ignore[import-not-found]

    config: DatabaseConfig = TablesConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(database), **overrides)
    return config


@asynccontextmanager
async def reader_in_transaction(server: Any, database: str) -> AsyncIterator[Any]:
    """A session that read `items` and sits idle in its transaction: it holds ACCESS SHARE on the table."""
    connection = await superuser_connect(server, database)
    try:
        await connection.execute("BEGIN")
        await connection.fetch("SELECT * FROM items LIMIT 1")
        yield connection
    finally:
        await connection.close()


async def column_names(server: Any, database: str) -> set[str]:
    rows = await server_fetch(
        server, "SELECT column_name FROM information_schema.columns WHERE table_name = 'items'", database=database
    )
    return {row[0] for row in rows}


async def test_ddl_behind_a_lock_fails_fast_naming_the_setting(
    pg_server: Any, database: str, add_column_app: Path
) -> None:
    config = app_config(pg_server, database, MIGRATIONS_LOCK_TIMEOUT=0.5)
    await migrations.apply("bbbb00000001", config=config)
    async with reader_in_transaction(pg_server, database):
        started = time.monotonic()
        with pytest.raises(migrations.MigrationLockTimeoutError) as error:
            await migrations.apply(config=config)
        elapsed = time.monotonic() - started
    assert str(error.value) == LOCK_TIMEOUT_ERROR
    assert 0.5 <= elapsed < 3.0, f"took {elapsed:.2f}s"
    assert [r.id for r in await migrations.current(config=config)] == ["bbbb00000001"]
    assert "note" not in await column_names(pg_server, database)
    # Once the blocker is gone, the same deploy goes through.
    assert [r.id for r in await migrations.apply(config=config)] == ["bbbb00000002"]
    assert "note" in await column_names(pg_server, database)


async def test_the_cli_reports_a_lock_timeout_in_one_line(pg_server: Any, database: str, add_column_app: Path) -> None:
    await migrations.apply("bbbb00000001", config=app_config(pg_server, database))
    env = cli_env(pg_server.url(database), MIGRATIONS_LOCK_TIMEOUT="0.5")
    argv = [PYTHON, "-m", "mountaineer_db.cli", "--config", "migrapp.config:TablesConfig", "migrate", "apply"]
    async with reader_in_transaction(pg_server, database):
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=add_column_app.parent,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 1, (out, err)
    assert err.decode() == f"Error: {LOCK_TIMEOUT_ERROR}\n"


async def test_a_concurrent_index_waits_past_the_lock_timeout_for_a_writer(
    pg_server: Any, database: str, index_app: Path
) -> None:
    """CREATE INDEX CONCURRENTLY runs outside a transaction, so without the lock timeout: it waits
    for an open writing transaction (as PostgreSQL requires) without blocking anyone, and the
    index comes out valid instead of being left INVALID by a timeout."""
    config = app_config(pg_server, database, MIGRATIONS_LOCK_TIMEOUT=0.2)
    await migrations.apply("bbbb00000001", config=config)
    writer = await superuser_connect(pg_server, database)
    try:
        await writer.execute("BEGIN")
        await writer.execute("UPDATE items SET title = 'changed' WHERE id = 1")

        async def commit_later() -> None:
            await asyncio.sleep(1.5)
            await writer.execute("COMMIT")

        committer = asyncio.create_task(commit_later())
        started = time.monotonic()
        assert [r.id for r in await migrations.apply(config=config)] == ["bbbb00000002"]
        elapsed = time.monotonic() - started
        await committer
    finally:
        await writer.close()
    assert elapsed >= 1.2, f"the index did not wait for the writer ({elapsed:.2f}s)"
    valid = await server_fetch(
        pg_server,
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = 'ix_items_title'",
        database=database,
    )
    assert valid == [(True,)]


async def test_replicas_wait_for_each_other_longer_than_the_lock_timeout(
    pg_server: Any, database: str, slow_app: Path
) -> None:
    """The advisory lock between deploy processes is not bounded by MIGRATIONS_LOCK_TIMEOUT."""
    config = app_config(pg_server, database, MIGRATIONS_LOCK_TIMEOUT=0.2)
    results = await asyncio.gather(migrations.apply(config=config), migrations.apply(config=config))
    assert sorted(len(done) for done in results) == [0, 2]


@pytest.mark.parametrize(
    "timeouts",
    [
        {"DATABASE_STATEMENT_TIMEOUT": 0.2, "DATABASE_LOCK_TIMEOUT": 0.1},
        {"DATABASE_COMMAND_TIMEOUT": 0.2},
        {"DATABASE_IDLE_IN_TRANSACTION_TIMEOUT": 0.2},
    ],
    ids=["statement", "command", "idle-in-transaction"],
)
async def test_migrations_do_not_inherit_the_apps_timeouts(
    pg_server: Any, database: str, slow_app: Path, timeouts: dict[str, float]
) -> None:
    """A migration may run longer than any request: the app's request timeouts never cut it short."""
    config = app_config(pg_server, database, **timeouts)
    assert [r.id for r in await migrations.apply(config=config)] == ["bbbb00000001", "bbbb00000002"]
    assert "slow" in await column_names(pg_server, database)


def test_the_lock_timeout_must_be_positive() -> None:
    with pytest.raises(DatabaseConfigError) as error:
        DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://u@127.0.0.1/x", MIGRATIONS_LOCK_TIMEOUT=0)
    assert "MIGRATIONS_LOCK_TIMEOUT is 0.0; use a number of seconds greater than 0 (default 5)." in str(error.value)
    assert DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://u@127.0.0.1/x").MIGRATIONS_LOCK_TIMEOUT == 5.0
    assert re.search(r"\(default 5\)", DatabaseConfig.model_fields["MIGRATIONS_LOCK_TIMEOUT"].description or "")
