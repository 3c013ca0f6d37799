"""Database admin against a real PostgreSQL: createdb (hostile names, tables), dropdb, and
waiting for a server that is still starting."""

import asyncio
import logging
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mountaineer_db import (
    ConfigurationError,
    DatabaseConfig,
    DatabaseUnavailableError,
    ResourceNotFoundError,
    admin,
)
from mountaineer_db.servers.cluster import PostgresCluster, free_port
from tests.sample_apps import sample_app_on_path, server_execute, server_fetch

HOSTILE = 'my-app"; drop table x; --'


async def database_names(server: Any) -> set[str]:
    return {row[0] for row in await server_fetch(server, "SELECT datname FROM pg_database")}


def test_quote_identifier_doubles_quotes() -> None:
    assert admin.quote_identifier(HOSTILE) == '"my-app""; drop table x; --"'


async def test_createdb_with_a_hostile_name_creates_exactly_that_database(pg_server: Any) -> None:
    """The name is quoted: it becomes a database called `my-app"; drop table x; --`, and the
    table x that the name "drops" is untouched."""
    had_x = await server_fetch(pg_server, "SELECT to_regclass('public.x') IS NOT NULL") == [(True,)]
    if not had_x:
        await server_execute(pg_server, "CREATE TABLE x (id int)")
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(HOSTILE))
    try:
        assert await admin.createdb(config) is True
        assert HOSTILE in await database_names(pg_server)
        assert await server_fetch(pg_server, "SELECT to_regclass('public.x') IS NOT NULL") == [(True,)]
        assert await admin.database_exists(config) is True
        assert await admin.createdb(config) is False  # exists already: nothing to do

        await admin.dropdb(config)
        assert HOSTILE not in await database_names(pg_server)
        assert await server_fetch(pg_server, "SELECT to_regclass('public.x') IS NOT NULL") == [(True,)]
    finally:
        await server_execute(pg_server, f"DROP DATABASE IF EXISTS {admin.quote_identifier(HOSTILE)}")
        if not had_x:
            await server_execute(pg_server, "DROP TABLE x")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "app\x00x",
            "The database name holds a NUL character, which PostgreSQL names cannot contain; check POSTGRES_DB or "
            "the database part of the URL (a %00 there).",
        ),
        (
            "app\udcff",
            "The database name holds bytes that are not UTF-8 text (an unpaired surrogate); check POSTGRES_DB.",
        ),
        ("é" * 32, "The database name 'éééééééééééééééééééé'... is 64 bytes long; PostgreSQL allows 63."),
    ],
    ids=["nul", "not_utf8", "too_long"],
)
async def test_names_postgresql_cannot_take_are_refused_before_any_statement(
    pg_server: Any, name: str, expected: str
) -> None:
    """Even for a config that skipped validation (`model_copy(update=...)`, as the embedded database does)."""
    valid = DatabaseConfig(SQLALCHEMY_DATABASE_URI=pg_server.url("placeholder"))
    config = valid.model_copy(update={"SQLALCHEMY_DATABASE_URI": pg_server.url(name)})
    for operation in (admin.createdb, admin.dropdb, admin.database_exists):
        with pytest.raises(ConfigurationError) as caught:
            await operation(config)
        assert str(caught.value) == expected


@pytest.fixture
def tables_config(pg_server: Any, tmp_path: Path) -> Iterator[DatabaseConfig]:
    """TablesConfig of the sample app, for a database name that does not exist yet."""
    with sample_app_on_path(tmp_path):
        from migrapp.config import TablesConfig  # type: ignore[import-not-found]

        name = f"mdb_admin_{secrets.token_hex(4)}"
        config: DatabaseConfig = TablesConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(name))
        yield config
        asyncio.run(server_execute(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def test_createdb_create_tables_creates_the_models_tables(pg_server: Any, tables_config: DatabaseConfig) -> None:
    assert await admin.createdb(tables_config, create_tables=True) is True
    name = tables_config.migrations_url.database
    assert name is not None
    rows = await server_fetch(pg_server, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'", database=name)
    assert {row[0] for row in rows} == {"author", "note"}
    constraints = await server_fetch(pg_server, "SELECT conname FROM pg_constraint", database=name)
    assert "fk_note_author_id_author" in {row[0] for row in constraints}


async def test_dropdb_of_a_missing_database_is_resource_not_found(tables_config: DatabaseConfig) -> None:
    with pytest.raises(
        ResourceNotFoundError, match=r'^database "mdb_admin_\w+" on 127\.0\.0\.1:\d+ as user .* does not'
    ):
        await admin.dropdb(tables_config)


async def test_dropdb_refuses_a_database_in_use_unless_forced(pg_server: Any, tables_config: DatabaseConfig) -> None:
    await admin.createdb(tables_config)
    name = tables_config.migrations_url.database
    assert name is not None
    url = pg_server.url(name)
    holder = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, database=name, ssl=False
    )
    try:
        with pytest.raises(admin.DatabaseAdminError, match=r"being used by other sessions.*--force"):
            await admin.dropdb(tables_config)
        assert name in await database_names(pg_server)
        await admin.dropdb(tables_config, force=True)
        assert name not in await database_names(pg_server)
    finally:
        holder.terminate()


async def test_wait_for_database_gives_up_with_a_clear_error() -> None:
    port = free_port()
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=f"postgresql://app:secret-pw@127.0.0.1:{port}/app")
    with pytest.raises(DatabaseUnavailableError) as error:
        await admin.wait_for_database(config, timeout=0.5, interval=0.1)
    message = str(error.value)
    assert message.startswith("Gave up waiting after ")
    attempts = int(message.split("after ")[1].split(" ")[0])
    assert attempts >= 2
    assert f'Could not connect to database "app" on 127.0.0.1:{port} as user "app"' in message
    assert "secret-pw" not in message


async def test_wait_for_database_waits_for_a_server_that_is_starting(caplog: pytest.LogCaptureFixture) -> None:
    """The server is initialised and started while we wait: refused at first, then ready."""
    root = Path(tempfile.mkdtemp(prefix="mountaineer-db-wait-"))
    root.chmod(0o755)
    cluster = PostgresCluster(root / "data")
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=cluster.url("postgres"))
    starter = threading.Thread(target=cluster.start)
    caplog.set_level(logging.INFO, logger="mountaineer_db")
    starter.start()
    try:
        await admin.wait_for_database(config, timeout=60, interval=0.1)
        waited = [r.getMessage() for r in caplog.records if "is available after" in r.getMessage()]
        assert len(waited) == 1 and int(waited[0].split("after ")[1].split(" ")[0]) > 1
    finally:
        await asyncio.to_thread(starter.join)
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
