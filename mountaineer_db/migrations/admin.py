"""Database admin: create and drop the app's database, wait for a server that is starting.

```python
from mountaineer_db.migrations import admin

await admin.wait_for_database(config, timeout=30)   # e.g. in a container entrypoint
await admin.createdb(config, create_tables=True)    # tables from the models; head stamped if migrations exist
await admin.dropdb(config)
```

`createdb` and `dropdb` connect to the `postgres` maintenance database with the
credentials of `config.migrations_url` (the direct URL when the app goes through
PgBouncer). Database names are always quoted as identifiers, so any name is only a name.
With DATABASE_EMBEDDED=true (development) each function starts (or reuses) the embedded
PostgreSQL first, as the `mountaineer-db` commands do, so an app's own `cli.py` needs no
more than `await admin.createdb(create_tables=True)`.
"""

import asyncio
import logging
import time
from typing import Any

import asyncpg
from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from mountaineer_db.engines.connections import Connector
from mountaineer_db.exceptions import (
    ConfigurationError,
    DatabaseAdminError,  # defined there with every other error
    DatabaseUnavailableError,
    MigrationError,
    ResourceNotFoundError,
    describe_target,
)
from mountaineer_db.migrations import adoption, commands
from mountaineer_db.migrations.commands import stamp_new_database
from mountaineer_db.migrations.environment import migration_engine, migration_settings
from mountaineer_db.migrations.project import load_config, load_metadata, migrations_directory
from mountaineer_db.servers.embedded import ensure_embedded_database
from mountaineer_db.settings.config import DatabaseConfig

__all__ = [
    "DatabaseAdminError",
    "create_model_tables",
    "createdb",
    "database_exists",
    "dropdb",
    "prepare_development_database",
    "quote_identifier",
    "wait_for_database",
]

logger = logging.getLogger("mountaineer_db")

MAINTENANCE_DATABASE = "postgres"


def quote_identifier(name: str) -> str:
    """`name` as a PostgreSQL quoted identifier: `my"db` becomes `"my""db"`."""
    if "\x00" in name:
        raise ConfigurationError("A database name cannot contain a NUL character.")
    return '"' + name.replace('"', '""') + '"'


def _target_name(url: URL) -> str:
    """The database name of `url`, or `ConfigurationError` when PostgreSQL could never take it.

    Checked before any statement: sent to the server, a NUL or a text that is not UTF-8 comes
    back as a driver error, not as a name that does not exist.
    """
    name = url.database
    if not name:
        raise ConfigurationError("The database URL names no database; set POSTGRES_DB or add it to the URL.")
    if "\x00" in name:
        raise ConfigurationError(
            "The database name holds a NUL character, which PostgreSQL names cannot contain; check POSTGRES_DB "
            "or the database part of the URL (a %00 there)."
        )
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        raise ConfigurationError(
            "The database name holds bytes that are not UTF-8 text (an unpaired surrogate); check POSTGRES_DB."
        ) from None
    if size > 63:
        raise ConfigurationError(f"The database name {name[:20]!r}... is {size} bytes long; PostgreSQL allows 63.")
    return name


def _app_config(config: DatabaseConfig | None, *, create_database: bool = False) -> DatabaseConfig:
    """`config` (default: `load_config()`), on the embedded server when DATABASE_EMBEDDED asks for it.

    The embedded server is started without creating the app's database, so `createdb` is the
    one that creates it (and says so) and `dropdb` finds a missing one missing.
    """
    config = config if config is not None else load_config()
    return ensure_embedded_database(config, apply_migrations=False, create_database=create_database)


async def _connect(config: DatabaseConfig, url: URL) -> Any:
    """A raw asyncpg connection, opened the library's way (bounded, clear errors, no password leaks)."""
    return await Connector(migration_settings(config), url, statement_cache_size=0).connect()


async def wait_for_database(
    config: DatabaseConfig | None = None,
    *,
    timeout: float = 30.0,
    interval: float = 0.5,
    database: str | None = None,
) -> None:
    """Retry connecting until the database answers, for up to `timeout` seconds.

    Connects to `config.migrations_url` (or to `database` on the same server, e.g.
    "postgres" to wait for the server only). Each attempt is bounded by
    DATABASE_CONNECT_TIMEOUT. Raises `DatabaseUnavailableError` with the attempts made and
    the last reason when the time is up.
    """
    config = _app_config(config)
    url = config.migrations_url if database is None else config.migrations_url.set(database=database)
    started = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        try:
            connection = await _connect(config, url)
        except DatabaseUnavailableError as error:
            last = error
        else:
            await connection.close()
            if attempts > 1:
                logger.info("%s is available after %d attempts", describe_target(url), attempts)
            return
        elapsed = time.monotonic() - started
        if elapsed + interval > timeout:
            raise DatabaseUnavailableError(
                f"Gave up waiting after {attempts} attempt(s) in {elapsed:.1f}s. {last.message}",
                host=url.host,
                port=url.port or 5432,
                database=url.database,
            )
        logger.debug("Waiting for %s (attempt %d): %s", describe_target(url), attempts, last.message)
        await asyncio.sleep(interval)


async def database_exists(config: DatabaseConfig | None = None) -> bool:
    """Whether the configured database exists (asked of the maintenance database)."""
    config = _app_config(config)
    name = _target_name(config.migrations_url)
    connection = await _connect(config, config.migrations_url.set(database=MAINTENANCE_DATABASE))
    try:
        return bool(await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await connection.close()


async def createdb(config: DatabaseConfig | None = None, *, create_tables: bool = False) -> bool:
    """Create the configured database unless it exists; True when it was created.

    With `create_tables=True`, also create the models' tables (see `create_model_tables`).
    """
    config = _app_config(config)
    url = config.migrations_url
    name = _target_name(url)
    connection = await _connect(config, url.set(database=MAINTENANCE_DATABASE))
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        created = False
        if not exists:
            try:
                await connection.execute(f"CREATE DATABASE {quote_identifier(name)}")
                created = True
            except asyncpg.DuplicateDatabaseError:
                pass  # created by someone else meanwhile: fine, it exists
            except asyncpg.PostgresError as error:
                raise DatabaseAdminError(
                    f"Could not create database {name!r} as user {url.username!r}: {error}. Create it as a "
                    "superuser, or grant CREATEDB to that role."
                ) from None
    finally:
        await connection.close()
    logger.info("%s database %s", "Created" if created else "Found", describe_target(url))
    if create_tables:
        await create_model_tables(config)
    return created


async def create_model_tables(config: DatabaseConfig | None = None) -> list[str]:
    """Create the models' tables (`metadata.create_all`) and stamp the migrations' head.

    One transaction. When the app has migrations with revisions and the database records
    none yet, the head revision(s) are stamped, so `migrate apply` later runs only newer
    revisions (the tables must then match the head: keep models and revisions in step,
    `migrate check` tells). Returns the stamped revision ids ([] when nothing was stamped).
    """
    config = _app_config(config, create_database=True)
    metadata = load_metadata(config)
    engine = migration_engine(config)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
            stamped: list[str] = await connection.run_sync(stamp_new_database, config)
    finally:
        await engine.dispose()
    if stamped:
        logger.info("Stamped %s at %s", describe_target(config.migrations_url), ", ".join(stamped))
    return stamped


async def missing_model_tables(config: DatabaseConfig | None = None) -> list[str]:
    """The models' tables the configured database does not have yet (what `create_model_tables` would create)."""
    config = _app_config(config)
    metadata = load_metadata(config)
    engine = migration_engine(config)

    def missing(connection: Any) -> list[str]:
        inspector = inspect(connection)
        return [table.fullname for table in metadata.sorted_tables if not inspector.has_table(table.name, table.schema)]

    try:
        async with engine.connect() as connection:
            return await connection.run_sync(missing)
    finally:
        await engine.dispose()


async def create_all_tables(engine: AsyncEngine, metadata: MetaData) -> None:
    """`metadata.create_all` in one transaction on `engine`, which is disposed afterwards."""
    try:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
    finally:
        await engine.dispose()


async def dropdb(config: DatabaseConfig | None = None, *, force: bool = False) -> None:
    """Drop the configured database. Raises `ResourceNotFoundError` when it does not exist.

    Fails while other sessions use it, unless `force=True` (PostgreSQL 13+), which ends them.
    """
    config = _app_config(config)
    url = config.migrations_url
    name = _target_name(url)
    if name == MAINTENANCE_DATABASE:
        raise ConfigurationError(f"Refusing to drop the maintenance database {name!r}.")
    connection = await _connect(config, url.set(database=MAINTENANCE_DATABASE))
    try:
        if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            raise ResourceNotFoundError(f"{describe_target(url)} does not exist; nothing to drop.")
        in_use = DatabaseAdminError(
            f"Database {name!r} is being used by other sessions; stop the app first, or pass --force "
            "to end those sessions."
        )
        # Checked first: PostgreSQL itself waits 5 s for other sessions before refusing.
        if not force and await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name
        ):
            raise in_use
        statement = f"DROP DATABASE {quote_identifier(name)}" + (" WITH (FORCE)" if force else "")
        try:
            await connection.execute(statement)
        except asyncpg.ObjectInUseError:
            raise in_use from None
        except asyncpg.PostgresError as error:
            raise DatabaseAdminError(f"Could not drop database {name!r}: {error}") from None
    finally:
        await connection.close()
    logger.info("Dropped %s", describe_target(url))


async def prepare_development_database(
    config: DatabaseConfig, *, create_database: bool, apply_migrations: bool
) -> None:
    """The embedded database's preparation once its server runs: the app's database, its migrations."""
    # Both dispose of the engines they open; the app's own engines are left alone.
    if create_database:
        await createdb(config)
    package = getattr(config, "PACKAGE", None)
    # A migrations folder without env.py is not ours (say, the old mountaineer.migrations' rev_*.py files).
    if not (apply_migrations and isinstance(package, str)):
        return
    if not (migrations_directory(config) / "env.py").is_file():
        return
    advice = await adoption.adoption_advice(config)
    if advice is not None:  # tables made before the migrations: applying them would fail on the first table
        logger.warning("Development database: %s", advice)
        return
    try:
        applied = await commands.apply(config=config)
    except MigrationError as error:
        # A revision `migrate generate` just wrote makes the development server restart and land
        # here: a failing one is rolled back and said, and the server goes on serving (what
        # `migrate apply` would do on another database is unchanged: it fails).
        logger.error(
            "Development database: %s The development server goes on with the database as it was; fix the "
            "revision (or the model) and save it to try again, or run `mountaineer-db migrate apply`.",
            " ".join(str(error).split()),
        )
        return
    for revision in applied:
        logger.info("Applied migration %s", revision)
