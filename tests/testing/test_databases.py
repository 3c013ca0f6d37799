"""`mountaineer_db.testing.databases`: servers, throwaway databases and their tables."""

import asyncio
import secrets
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Column, Integer, MetaData, Table, text

from mountaineer_db import DatabaseConfig, ResourceAlreadyExistsError
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.exceptions import ConfigurationError
from mountaineer_db.servers.cluster import ExternalServer
from mountaineer_db.testing import (
    KIT_COMMENT,
    TEST_URL_ENV,
    Server,
    apply_migrations,
    create_schema,
    postgres_server,
    throwaway_database,
)


async def _fetch(server: Server, query: str, *args: Any, database: str = "postgres") -> list[Any]:
    url = server.url(database)
    connection = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, database=database
    )
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


async def _comment(server: Server, name: str) -> str | None:
    rows = await _fetch(
        server, "SELECT shobj_description(oid, 'pg_database') AS c FROM pg_database WHERE datname = $1", name
    )
    return rows[0]["c"] if rows else "<no such database>"


async def test_a_throwaway_database_is_fresh_marked_and_dropped(mdb_server: Server) -> None:
    with throwaway_database(mdb_server) as database:
        assert database.name.startswith("mdb_test_")
        assert await _comment(mdb_server, database.name) == KIT_COMMENT
        tables = await _fetch(
            mdb_server, "SELECT count(*) AS n FROM pg_tables WHERE schemaname = 'public'", database=database.name
        )
        assert tables[0]["n"] == 0
        assert mdb_server.password not in repr(database) + str(database.url)
    assert await _comment(mdb_server, database.name) == "<no such database>"


async def test_an_existing_database_not_made_by_the_kit_is_refused_and_left_alone(mdb_server: Server) -> None:
    name = f"users_own_{secrets.token_hex(3)}"
    await _fetch(mdb_server, f'CREATE DATABASE "{name}"')
    try:
        await _fetch(mdb_server, "CREATE TABLE precious (id int)", database=name)
        with pytest.raises(ResourceAlreadyExistsError) as caught, throwaway_database(mdb_server, name=name):
            pass
        port = mdb_server.url().port
        assert str(caught.value) == (
            f'The database "{name}" on 127.0.0.1:{port} as user "postgres" already exists and was not made by '
            "the test kit; the kit never reuses or wipes a database it did not create. Pick another name, or "
            "drop that database yourself if it is disposable."
        )
        query = "SELECT count(*) AS n FROM pg_tables WHERE tablename = 'precious'"
        still_there = await _fetch(mdb_server, query, database=name)
        assert still_there[0]["n"] == 1
    finally:
        await _fetch(mdb_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_a_database_left_behind_by_the_kit_is_recreated_empty(mdb_server: Server) -> None:
    name = f"mdb_test_left_{secrets.token_hex(3)}"
    await _fetch(mdb_server, f'CREATE DATABASE "{name}"')
    await _fetch(mdb_server, f"COMMENT ON DATABASE \"{name}\" IS '{KIT_COMMENT}'")
    await _fetch(mdb_server, "CREATE TABLE stale (id int)", database=name)
    with throwaway_database(mdb_server, name=name):
        stale = await _fetch(mdb_server, "SELECT count(*) AS n FROM pg_tables WHERE tablename = 'stale'", database=name)
        assert stale[0]["n"] == 0
    assert await _comment(mdb_server, name) == "<no such database>"


def test_the_server_named_by_the_environment_is_used_as_is(mdb_server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TEST_URL_ENV, mdb_server.url("postgres").render_as_string(hide_password=False))
    with postgres_server() as server:
        assert isinstance(server, ExternalServer)
        assert (server.port, server.user, server.password) == (mdb_server.port, mdb_server.user, mdb_server.password)


async def _tables(config: DatabaseConfig) -> set[str]:
    async with engine_for(config).connect() as connection:
        rows = await connection.execute(text("SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
        return {row[0] for row in rows}


async def test_tables_come_from_metadata_or_from_a_hook_sync_or_async(mdb_server: Server) -> None:
    metadata = MetaData()
    Table("from_metadata", metadata, Column("id", Integer, primary_key=True))
    calls: list[str] = []

    def sync_hook(config: DatabaseConfig) -> None:
        # Like a migrations command that runs its own event loop (Alembic's async env.py does).
        async def run() -> None:
            async with engine_for(config).begin() as connection:
                await connection.execute(text("CREATE TABLE from_sync_hook (id int)"))

        asyncio.run(run())
        calls.append("sync")

    async def async_hook(config: DatabaseConfig) -> None:
        engine = engine_for(config)
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE from_async_hook (id int)"))
        await engine.dispose()
        calls.append("async")

    with throwaway_database(mdb_server) as database:
        config = database.config()
        create_schema(config, metadata)  # called from a running event loop: runs in a helper thread
        create_schema(config, sync_hook)
        create_schema(config, async_hook)
        assert await _tables(config) == {"from_metadata", "from_sync_hook", "from_async_hook"}
    assert calls == ["sync", "async"]


def test_a_schema_that_is_neither_metadata_nor_callable_is_refused() -> None:
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://app@db.invalid/app")
    with pytest.raises(ConfigurationError) as caught:
        create_schema(config, "migrations")  # type: ignore[arg-type]
    assert str(caught.value) == "The schema must be a sqlalchemy MetaData or a callable hook(config), not str."


async def test_tables_can_come_from_the_apps_migrations(mdb_server: Server, tmp_path: Path) -> None:
    from mountaineer_db import migrations
    from tests.sample_apps import sample_app_on_path, write_migrations_folder

    with sample_app_on_path(tmp_path) as package:
        write_migrations_folder(package)
        from migrapp.config import TablesConfig  # type: ignore[import-not-found]

        with throwaway_database(mdb_server) as scratch:  # generate the first revision against an empty database
            assert await migrations.generate("initial", config=TablesConfig(SQLALCHEMY_DATABASE_URI=scratch.url))
        with throwaway_database(mdb_server) as database:
            create_schema(database.config(), apply_migrations(TablesConfig))
            assert await _tables(database.config()) == {"alembic_version", "author", "note"}


class KitAppConfig(DatabaseConfig):
    """An app's config: its class default database name, as in the README Quickstart."""

    POSTGRES_DB: str = "myapp"


async def test_the_kit_takes_over_the_connection_whatever_the_project_env_says(
    mdb_server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A project's `.env` and environment name a developer database; tests must never reach it."""
    (tmp_path / ".env").write_text(
        "POSTGRES_HOST=localhost\nPOSTGRES_USER=myapp\nPOSTGRES_PASSWORD=change-me\nPOSTGRES_SSLMODE=require\n"
        "MIGRATIONS_DATABASE_URI=postgresql://owner@dev-primary/myapp\nDATABASE_EMBEDDED=true\n"
        "DATABASE_STATEMENT_TIMEOUT=7\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone@production-host/myapp")
    with throwaway_database(mdb_server) as database:
        config = database.config(KitAppConfig)
        assert isinstance(config, KitAppConfig)
        assert config.database_url.database == database.name
        assert config.migrations_url == config.database_url, "migrations go to the kit's database too"
        assert not config.DATABASE_EMBEDDED
        assert config.DATABASE_STATEMENT_TIMEOUT == 7, "the app's other settings are still read"
        async with engine_for(config).connect() as connection:
            assert await connection.scalar(text("SELECT current_database()")) == database.name
            assert await connection.scalar(text("SHOW statement_timeout")) == "7s"
