"""Waiting for the migration lock holds nothing (`mountaineer_db.migrations.lock`), and a
database already at head is answered without the lock. Against a real PostgreSQL, with the
CLI as deploys run it.

The deadlock these guard against: `CREATE INDEX CONCURRENTLY` (run by the lock holder)
waits for every older snapshot, and a waiter that sat in a transaction inside
`pg_advisory_lock` had one while it waited for the holder."""

import asyncio
import logging
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mountaineer_db import migrations
from mountaineer_db.migrations import lock as lock_module
from mountaineer_db.settings.config import DatabaseConfig
from tests.sample_apps import (
    HERE,
    PYTHON,
    cli_env,
    fresh_database,
    sample_app_on_path,
    server_fetch,
    superuser_connect,
    write_migrations_folder,
)

REVISIONS = {
    "0001_create.py": '''
        """create items"""
        from alembic import op

        revision = "eeee00000001"
        down_revision = None


        def upgrade():
            op.execute("CREATE TABLE items (id int PRIMARY KEY, title text)")
            op.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 100) g")
            op.execute("CREATE TABLE apply_log (revision text, pid int DEFAULT pg_backend_pid())")
            op.execute("SELECT pg_sleep(1)")


        def downgrade():
            op.execute("DROP TABLE items, apply_log")
    ''',
    "0002_index.py": '''
        """index title concurrently"""
        from alembic import op

        revision = "eeee00000002"
        down_revision = "eeee00000001"


        def upgrade():
            with op.get_context().autocommit_block():
                op.create_index("ix_items_title", "items", ["title"], postgresql_concurrently=True)
            op.execute("INSERT INTO apply_log (revision) VALUES ('eeee00000002')")


        def downgrade():
            with op.get_context().autocommit_block():
                op.drop_index("ix_items_title", table_name="items", postgresql_concurrently=True)
    ''',
}
CONFIG = "migrapp.config:TablesConfig"
KEY = lock_module.MIGRATION_LOCK_KEY


@pytest.fixture
def database(pg_server: Any) -> Iterator[str]:
    with fresh_database(pg_server, prefix="mdb_wait") as name:
        yield name


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Path]:
    with sample_app_on_path(tmp_path) as package:
        versions = write_migrations_folder(package) / "versions"
        for name, source in REVISIONS.items():
            (versions / name).write_text(textwrap.dedent(source))
        yield package


def app_config(pg_server: Any, database: str) -> DatabaseConfig:
    from migrapp.config import TablesConfig  # type: ignore[import-not-found]

    config: DatabaseConfig = TablesConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(database))
    return config


async def start_cli(root: Path, env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *[PYTHON, "-m", "mountaineer_db.cli", "--config", CONFIG, *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def wait_for_waiter(observer: asyncpg.Connection, database: str, application_name: str) -> None:
    """Until a session of `application_name` has asked for the migration lock (however it asks)."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 "
        "AND query ILIKE '%advisory_lock%'"
    )
    async with asyncio.timeout(60):
        while not await observer.fetchval(query, database, application_name):
            await asyncio.sleep(0.05)


async def test_a_waiting_apply_holds_nothing_so_the_holders_concurrent_index_completes(
    pg_server: Any, database: str, app: Path
) -> None:
    """The lock holder builds an index CONCURRENTLY while a `migrate apply` process waits for
    the lock: the build completes, and the waiter then applies the next revision.
    Waiting inside a transaction (the old way) makes this a deadlock: PostgreSQL fails one side."""
    await migrations.apply("eeee00000001", config=app_config(pg_server, database))
    holder = await superuser_connect(pg_server, database)
    observer = await superuser_connect(pg_server, database)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", KEY)
        waiter = await start_cli(
            app.parent, cli_env(pg_server.url(database), DATABASE_APPLICATION_NAME="mdb-waiter"), "migrate", "apply"
        )
        await wait_for_waiter(observer, database, "mdb-waiter")
        async with asyncio.timeout(60):
            await holder.execute("CREATE INDEX CONCURRENTLY ix_items_id_title ON items (id, title)")
        await holder.execute("SELECT pg_advisory_unlock($1)", KEY)
        out, err = await asyncio.wait_for(waiter.communicate(), timeout=60)
    finally:
        await holder.close()
        await observer.close()
    assert waiter.returncode == 0, err.decode()
    assert out.decode() == "Applied eeee00000002 (head)  index title concurrently\n"
    query = (
        "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname LIKE 'ix_items%' ORDER BY 1"
    )
    assert [tuple(row) for row in await server_fetch(pg_server, query, database=database)] == [
        ("ix_items_id_title", True),
        ("ix_items_title", True),
    ]


async def test_at_head_apply_returns_at_once_without_waiting_for_the_lock(
    pg_server: Any, database: str, app: Path
) -> None:
    """A replica starting after another one migrated: nothing to do, so no waiting, even while
    some other session holds the migration lock for as long as it likes."""
    await migrations.apply(config=app_config(pg_server, database))
    holder = await superuser_connect(pg_server, database)
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", KEY)
        process = await start_cli(app.parent, cli_env(pg_server.url(database)), "migrate", "apply")
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert await migrations.apply("eeee00000001", config=app_config(pg_server, database)) == []
    finally:
        await holder.close()
    assert (process.returncode, out.decode(), err.decode()) == (
        0,
        "Nothing to apply; the database is up to date.\n",
        "",
    )


async def test_a_waiter_says_who_holds_the_lock_and_finds_the_work_done(
    pg_server: Any,
    database: str,
    app: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every LOCK_REPORT_INTERVAL seconds the waiter logs the holder's pid, application_name and
    how long its session has existed (never a query's text); once it has the lock it looks at the
    revision again and runs nothing when the holder migrated everything meanwhile."""
    monkeypatch.setattr(lock_module, "LOCK_REPORT_INTERVAL", 0.2)
    url = pg_server.url(database)
    holder = await asyncpg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        database=database,
        ssl=False,
        server_settings={"application_name": "deploy-7"},
    )
    try:
        assert await holder.fetchval("SELECT pg_try_advisory_lock($1)", KEY)
        pid = await holder.fetchval("SELECT pg_backend_pid()")
        with caplog.at_level(logging.INFO, logger="mountaineer_db"):
            waiting = asyncio.create_task(migrations.apply(config=app_config(pg_server, database)))
            async with asyncio.timeout(60):
                while "Waiting for the migration lock" not in caplog.text:
                    await asyncio.sleep(0.05)
            # The holder migrates everything meanwhile, as a leader would, then lets go.
            await holder.execute(
                "CREATE TABLE items (id int PRIMARY KEY, title text); CREATE INDEX ix_items_title ON items (title); "
                "CREATE TABLE apply_log (revision text, pid int DEFAULT pg_backend_pid()); "
                "INSERT INTO apply_log (revision) VALUES ('by the holder'); "
                "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY); "
                "INSERT INTO alembic_version VALUES ('eeee00000002')"
            )
            await holder.execute("SELECT pg_advisory_unlock($1)", KEY)
            assert await asyncio.wait_for(waiting, timeout=60) == []
    finally:
        await holder.close()
    rows = await server_fetch(pg_server, "SELECT revision FROM apply_log", database=database)
    assert [row[0] for row in rows] == ["by the holder"]
    waits = [record for record in caplog.records if record.getMessage().startswith("Waiting for the migration lock")]
    message = waits[0].getMessage()
    assert f"it is held by pid {pid} (application_name 'deploy-7', session started " in message, message
    assert message.endswith("s ago, idle)."), message
    assert all(getattr(record, lock_module.PROGRESS_ATTRIBUTE, False) for record in waits)


@pytest.mark.slow
async def test_an_env_py_generated_before_keeps_working_with_three_alembic_processes(
    pg_server: Any, database: str, app: Path
) -> None:
    """`env.py` files written by `migrate init` in earlier versions import `migration_lock` and
    friends from `mountaineer_db.migrations`; with the plain `alembic` command (which uses
    that lock), three processes over a revision with CREATE INDEX CONCURRENTLY all succeed."""
    old_env = HERE.parent.parent / "example_app" / "todo_app" / "migrations" / "env.py"
    (app / "migrations" / "env.py").write_text(old_env.read_text())
    ini = app.parent / "alembic.ini"
    ini.write_text("[alembic]\nscript_location = migrapp/migrations\n")
    env = cli_env(pg_server.url(database), MOUNTAINEER_DB_CONFIG=CONFIG, PYTHONPATH=str(app.parent))
    processes = [
        await asyncio.create_subprocess_exec(
            *[PYTHON, "-m", "alembic", "-c", str(ini), "upgrade", "head"],
            cwd=app.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    outputs = [await asyncio.wait_for(process.communicate(), timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], [err.decode()[-2000:] for _, err in outputs]
    rows = await server_fetch(pg_server, "SELECT revision FROM apply_log", database=database)
    assert [row[0] for row in rows] == ["eeee00000002"]
    valid = await server_fetch(
        pg_server,
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = 'ix_items_title'",
        database=database,
    )
    assert valid == [(True,)]
