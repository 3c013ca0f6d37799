"""Servers, throwaway databases and their tables, for an app's test session.

Synchronous context managers, so that session-scoped pytest fixtures can use them without an
event loop of their own:

```python
with postgres_server() as server, throwaway_database(server) as database:
    create_schema(database.config(), SQLModel.metadata)
    ...
```
"""

import asyncio
import contextlib
import inspect
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg
from sqlalchemy import MetaData
from sqlalchemy.engine import URL, make_url

from mountaineer_db.engines.engine import describe_target, engine_for
from mountaineer_db.exceptions import ConfigurationError, ResourceAlreadyExistsError, ResourceNotFoundError
from mountaineer_db.servers._blocking import run_blocking, run_coroutine
from mountaineer_db.servers.cluster import ExternalServer, PostgresCluster
from mountaineer_db.servers.pgbouncer import PgBouncer
from mountaineer_db.servers.pgbouncer_versions import BUILD_HINT, find_pgbouncer_at_least
from mountaineer_db.settings.config import DatabaseConfig

__all__ = [
    "KIT_COMMENT",
    "TEST_URL_ENV",
    "Schema",
    "Server",
    "ThrowawayDatabase",
    "apply_migrations",
    "create_kit_database",
    "create_schema",
    "kit_connection_settings",
    "pgbouncer_for",
    "postgres_server",
    "throwaway_database",
]

logger = logging.getLogger("mountaineer_db")

TEST_URL_ENV = "MOUNTAINEER_DB_TEST_URL"
"""Environment variable naming an existing server (a superuser URL) to test against."""

KIT_COMMENT = "made by mountaineer_db.testing"
"""The comment the kit puts on the databases it creates; it drops no other database."""

_T = TypeVar("_T")
ConfigT = TypeVar("ConfigT", bound=DatabaseConfig)

Schema = MetaData | Callable[[DatabaseConfig], Awaitable[None] | None]
"""How the tables are made: a `MetaData` (create_all), or a hook `hook(config)`, sync or
async, that runs the app's migrations against the database `config` points at."""


class Server(Protocol):
    """What the kit needs of a server: `PostgresCluster` and `ExternalServer` both fit."""

    user: str
    password: str
    port: int

    def url(self, database: str = "postgres", *, user: str | None = None, password: str | None = None) -> URL:
        """A SQLAlchemy URL for `database` on this server."""
        ...


def _run(work: Callable[[], _T]) -> _T:
    """Run blocking `work` here, or in a helper thread when this thread runs an event loop."""
    return run_blocking(work, thread_name="mountaineer-db-testing")


def _run_async(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    return run_coroutine(make, thread_name="mountaineer-db-testing")


@contextlib.contextmanager
def postgres_server(url: str | URL | None = None) -> Iterator[Server]:
    """The server to test against: `url`, else `$MOUNTAINEER_DB_TEST_URL`, else a throwaway one.

    The URL must name a role allowed to create databases. A throwaway server is a fresh
    PostgreSQL cluster in a temporary directory (found as `PostgresCluster` finds one),
    stopped and deleted on exit.
    """
    target = url or os.environ.get(TEST_URL_ENV)
    if target:
        yield ExternalServer(make_url(target) if isinstance(target, str) else target)
        return
    with PostgresCluster.temporary() as cluster:
        yield cluster


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class ThrowawayDatabase:
    """A database the kit created on `server` for this test session."""

    def __init__(self, server: Server, name: str) -> None:
        self.server = server
        self.name = name

    def __repr__(self) -> str:
        return f"ThrowawayDatabase({self.name!r} on {self.server!r})"

    @property
    def url(self) -> URL:
        """Its URL (asyncpg driver, password included; `str()` masks it)."""
        return self.server.url(self.name)

    def url_via(self, bouncer: PgBouncer) -> URL:
        """Its URL through `bouncer` (see `pgbouncer_for`)."""
        return bouncer.url(self.name, user=self.server.user, password=self.server.password)

    def config(self, config_class: type[ConfigT] = DatabaseConfig, **overrides: Any) -> ConfigT:  # type: ignore[assignment]
        """A config pointing at this database; `config_class` may be the app's own config class.

        The connection settings are the kit's whatever the environment or the project's
        `.env` holds (a developer's POSTGRES_HOST, DATABASE_URL, MIGRATIONS_DATABASE_URI or
        DATABASE_EMBEDDED never send a test elsewhere); the app's other settings (pool
        type, timeouts, ...) are read as usual. `overrides` set further fields; a
        `SQLALCHEMY_DATABASE_URI` among them (say, `url_via(bouncer)`) replaces the address.

        A class that registers itself (Mountaineer's `ConfigBase`) takes the place of any
        config registered before, such as the one the app module made when tests imported
        it: code that uses the registered config (`database_session()`) then reaches this
        database too.
        """
        url = overrides.pop("SQLALCHEMY_DATABASE_URI", None) or overrides.pop("DATABASE_URL", None) or self.url
        values = {**kit_connection_settings(make_url(url) if isinstance(url, str) else url), **overrides}
        with registration_replaced():
            return config_class(**values)


@contextlib.contextmanager
def registration_replaced() -> Iterator[None]:
    """Let a new Mountaineer config register in place of the current one (kept if that fails)."""
    from mountaineer import config as mountaineer_config

    previous = mountaineer_config.APP_CONFIG
    mountaineer_config.unregister_config()  # type: ignore[no-untyped-call]
    try:
        yield
    except BaseException:
        mountaineer_config.unregister_config()  # type: ignore[no-untyped-call]
        if previous is not None:
            mountaineer_config.register_config(previous)
        raise
    if mountaineer_config.APP_CONFIG is None and previous is not None:  # the new class does not register
        mountaineer_config.register_config(previous)


def kit_connection_settings(url: URL) -> dict[str, Any]:
    """Every connection setting of a config, set explicitly to reach `url` and nothing else."""
    socket_dir = url.query.get("host")
    sslmode = url.query.get("sslmode")
    return {
        "SQLALCHEMY_DATABASE_URI": None,
        "POSTGRES_HOST": socket_dir if isinstance(socket_dir, str) else url.host,
        "POSTGRES_PORT": url.port or 5432,
        "POSTGRES_USER": url.username,
        "POSTGRES_PASSWORD": url.password,
        "POSTGRES_DB": url.database,
        "POSTGRES_SSLMODE": sslmode if isinstance(sslmode, str) else None,
        "MIGRATIONS_DATABASE_URI": None,
        "DATABASE_EMBEDDED": False,
        # A developer's replicas are not the kit's: `config(DATABASE_REPLICA_URLS=...)` names test replicas.
        "DATABASE_REPLICA_URLS": [],
    }


async def _connect(server: Server) -> Any:
    url = server.url("postgres")
    return await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, database="postgres"
    )


async def _create(server: Server, name: str, template: str | None = None) -> None:
    connection = await _connect(server)
    try:
        existing = await connection.fetch(
            "SELECT shobj_description(oid, 'pg_database') AS comment FROM pg_database WHERE datname = $1", name
        )
        if existing and existing[0]["comment"] == KIT_COMMENT:
            # Left behind by an interrupted run of the kit: ours to wipe.
            logger.info("Dropping database %s, left behind by an earlier test run.", _quote(name))
            await connection.execute(f"DROP DATABASE {_quote(name)} WITH (FORCE)")
        elif existing:
            raise ResourceAlreadyExistsError(
                f"The {describe_target(server.url(name))} already exists and was not made by the test kit; "
                "the kit never reuses or wipes a database it did not create. Pick another name, or drop "
                "that database yourself if it is disposable."
            )
        copy_of = f" TEMPLATE {_quote(template)}" if template else ""
        await connection.execute(f"CREATE DATABASE {_quote(name)}{copy_of}")
        await connection.execute(f"COMMENT ON DATABASE {_quote(name)} IS '{KIT_COMMENT}'")
    finally:
        await connection.close()


async def _drop(server: Server, name: str) -> None:
    connection = await _connect(server)
    try:
        await connection.execute(f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)")
    finally:
        await connection.close()


@contextlib.contextmanager
def throwaway_database(
    server: Server, *, name: str | None = None, template: str | None = None
) -> Iterator[ThrowawayDatabase]:
    """A fresh, empty database on `server` (a copy of the database `template` if given), dropped on exit.

    The default name is random (`mdb_test_<hex>`). An existing database of that name is
    refused (`ResourceAlreadyExistsError`) unless the kit made it in an earlier run.
    """
    name = name or f"mdb_test_{secrets.token_hex(4)}"
    _run_async(lambda: _create(server, name, template))
    try:
        yield ThrowawayDatabase(server, name)
    finally:
        _run_async(lambda: _drop(server, name))


def create_kit_database(server: Server, name: str, schema: Schema) -> None:
    """Create the database `name` on `server` (marked as the kit's) with `schema`'s tables; kept."""
    _run_async(lambda: _create(server, name))
    create_schema(ThrowawayDatabase(server, name).config(), schema)


def create_schema(config: DatabaseConfig, schema: Schema) -> None:
    """Make the tables in the database `config` points at: `create_all` or a migrations hook.

    A hook is called as `hook(config)`, outside any event loop, so a synchronous hook may run
    `asyncio.run` itself (Alembic's async `env.py` does); an async hook is awaited.
    """
    if isinstance(schema, MetaData):
        from mountaineer_db.migrations.admin import create_all_tables  # imports the migrations package: only when used

        metadata = schema

        async def create_all() -> None:  # the engine belongs to the loop that runs this
            await create_all_tables(engine_for(config), metadata)

        _run_async(create_all)
        return
    if not callable(schema):
        raise ConfigurationError(
            f"The schema must be a sqlalchemy MetaData or a callable hook(config), not {type(schema).__name__}."
        )

    def call() -> None:
        result = schema(config)
        if inspect.isawaitable(result):
            awaitable = result

            async def wait() -> None:
                await awaitable

            asyncio.run(wait())

    _run(call)


def apply_migrations(
    config_class: type[DatabaseConfig], *, revision: str = "head", **settings: Any
) -> Callable[[DatabaseConfig], Awaitable[None]]:
    """A `Schema` hook that runs the app's Alembic migrations (`mountaineer_db.migrations.apply`).

    `config_class` is the app's config class: its `PACKAGE` (where `<PACKAGE>/migrations/`
    is) and `MIGRATIONS_METADATA` are used, with the URL of the kit's database. It is built
    without running the class's constructor, so a Mountaineer `ConfigBase` does not register
    itself as the process's app config; `settings` set further fields.

    ```python
    @pytest.fixture(scope="session")
    def mdb_schema():
        return apply_migrations(AppConfig)
    ```
    """

    async def run_migrations(config: DatabaseConfig) -> None:
        from mountaineer_db import migrations  # import time: Alembic loads only when a kit applies migrations

        values: dict[str, Any] = {"SQLALCHEMY_DATABASE_URI": config.database_url, **settings}
        app_config = config_class.model_construct(**values)
        await migrations.apply(revision, config=app_config)

    # Under pytest-xdist the workers share one template database per key (testing/parallel.py).
    run_migrations.mdb_template_key = (  # type: ignore[attr-defined]
        f"migrations:{config_class.__module__}.{config_class.__qualname__}@{revision}:{sorted(settings.items())!r}"
    )
    return run_migrations


@contextlib.contextmanager
def pgbouncer_for(
    server: Server, *, settings: dict[str, str] | None = None, min_version: tuple[int, int] | None = None
) -> Iterator[PgBouncer]:
    """A PgBouncer in transaction mode in front of `server`, stopped on exit.

    Needs the `pgbouncer` executable (Debian/Ubuntu: `apt-get install pgbouncer`). With
    `min_version`, a PgBouncer of that version or newer (`(1, 21)` for protocol-level prepared
    statements; see `mountaineer_db.servers.pgbouncer_versions`), else `ResourceNotFoundError`.
    """
    binary = None
    if min_version is not None:
        binary = find_pgbouncer_at_least(min_version)
        if binary is None:
            wanted = ".".join(map(str, min_version))
            raise ResourceNotFoundError(f"No PgBouncer {wanted} or newer was found; {BUILD_HINT}.")
    work_dir = Path(tempfile.mkdtemp(prefix="mountaineer-db-kit-bouncer-"))
    os.chmod(work_dir, 0o755)  # the unprivileged user PgBouncer runs as must reach its files
    host = server.url().host or "127.0.0.1"
    bouncer = PgBouncer(
        host, server.port, {server.user: server.password}, work_dir=work_dir, settings=settings, binary=binary
    )
    try:
        with bouncer:
            yield bouncer
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
