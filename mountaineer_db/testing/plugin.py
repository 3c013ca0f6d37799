"""pytest plugin of `mountaineer_db.testing`: thin fixtures over its context managers.

Registered through the `pytest11` entry point, so it is active wherever mountaineer_db is
installed. Nothing starts unless a test asks for one of these fixtures:

| fixture | scope | what |
|---|---|---|
| `mdb_server` | session | `$MOUNTAINEER_DB_TEST_URL`'s server, else a throwaway PostgreSQL |
| `mdb_schema` | session | override it: a `MetaData` (default `SQLModel.metadata`) or a migrations hook |
| `mdb_database` | session | a fresh database with the tables of `mdb_schema`, dropped at the end |
| `mdb_config` | session | a config for `mdb_database` (the app's config class, registered, when the app is imported) |
| `mdb_session` | test | a session whose changes are rolled back after the test, commits included |
| `mdb_app` | test | override it: your `AppController` |
| `mdb_app_session` | test | `mdb_session`, handed to `mdb_app` for the test |
| `mdb_client` | test | an `httpx.AsyncClient` on `mdb_app`, with `mdb_app_session` in place |
| `mdb_pgbouncer` | session | a PgBouncer (transaction mode) in front of `mdb_server` |
| `mdb_replicas` | session | two streaming replicas of `mdb_server` (a throwaway server only) |
| `mdb_replica_config` | session | like `mdb_config`, reading from `mdb_replicas` (DATABASE_READ_ROUTING=renders) |
| `mdb_captured_on_commit` | test | `captured_on_commit`: `with mdb_captured_on_commit(execute=True) as hooks:` |
| `mdb_assert_num_queries` | test | `assert_num_queries`: `with mdb_assert_num_queries(1): ...` |
| `mdb_assert_max_queries` | test | `assert_max_queries`: `with mdb_assert_max_queries(3): ...` |
| `mdb_assert_no_n_plus_one` | test | `assert_no_n_plus_one`: `with mdb_assert_no_n_plus_one(): ...` |
"""

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest

# Imports inside functions: for import time only. pytest loads this plugin (the pytest11 entry
# point) in every run of an app that installs mountaineer-db, tests using the kit or not; each
# fixture imports the kit's modules it needs when it first runs.
if TYPE_CHECKING:
    from mountaineer_db.servers.pgbouncer import PgBouncer
    from mountaineer_db.servers.replication import StreamingReplica
    from mountaineer_db.settings.config import DatabaseConfig
    from mountaineer_db.testing.databases import Schema, Server, ThrowawayDatabase
    from mountaineer_db.testing.parallel import SharedRun

_F = TypeVar("_F", bound=Callable[..., Any])


def _async_fixture(function: _F) -> _F:
    """A function-scoped async fixture: pytest-asyncio's, so it works in its strict mode too."""
    try:
        import pytest_asyncio
    except ImportError:  # the kit's async fixtures need pytest-asyncio (pip install pytest-asyncio)
        return cast(_F, pytest.fixture(function))
    return cast(_F, pytest_asyncio.fixture(function))


def _shared_run(config: pytest.Config) -> "SharedRun | None":
    """Under pytest-xdist, what this worker shares with the run's others (testing/parallel.py)."""
    workerinput = getattr(config, "workerinput", None)
    if not isinstance(workerinput, dict) or "mountaineer_db_shared_dir" not in workerinput:
        return None
    from pathlib import Path

    from mountaineer_db.testing.parallel import SharedRun

    return SharedRun(Path(workerinput["mountaineer_db_shared_dir"]), str(workerinput["testrunuid"]))


class _XdistController:
    """Hooks of the xdist controller process: a folder for the workers to share, cleaned up at the end."""

    def __init__(self) -> None:
        self.directory: Any = None

    def pytest_configure_node(self, node: Any) -> None:
        from mountaineer_db.servers._processes import private_directory
        from mountaineer_db.testing.parallel import SHARED_DIR_KEY, shared_run_dir

        self.directory = private_directory(shared_run_dir(str(node.workerinput["testrunuid"])))
        node.workerinput[SHARED_DIR_KEY] = str(self.directory)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self.directory is None:
            return
        import os

        from mountaineer_db.testing.databases import TEST_URL_ENV
        from mountaineer_db.testing.parallel import stop_shared_run

        stop_shared_run(self.directory, os.environ.get(TEST_URL_ENV))


def pytest_configure(config: pytest.Config) -> None:
    if config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_XdistController(), "mountaineer_db_xdist_controller")


@pytest.fixture(scope="session")
def mdb_server(request: pytest.FixtureRequest) -> "Iterator[Server]":
    """The PostgreSQL server for this test session (see `postgres_server`); under pytest-xdist,
    one for all workers, started by the first that asks."""
    import os

    from mountaineer_db.testing.databases import TEST_URL_ENV, postgres_server

    shared = _shared_run(request.config)
    if shared is not None:
        yield shared.server(os.environ.get(TEST_URL_ENV))
        return
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def mdb_schema() -> "Schema":
    """How `mdb_database` makes its tables. Override in your conftest, e.g.:

    ```python
    @pytest.fixture(scope="session")
    def mdb_schema():
        return myapp.models.SQLModel.metadata     # or: lambda config: run_my_migrations(config)
    ```
    """
    from sqlmodel import SQLModel

    return SQLModel.metadata


@pytest.fixture(scope="session")
def mdb_database(
    request: pytest.FixtureRequest, mdb_server: "Server", mdb_schema: "Schema"
) -> "Iterator[ThrowawayDatabase]":
    """A fresh database for this test session, with its tables made, dropped at the end.

    Under pytest-xdist each worker gets its own, a copy of a template database whose tables
    the first worker made (testing/parallel.py).
    """
    from mountaineer_db.testing.databases import create_kit_database, create_schema, throwaway_database
    from mountaineer_db.testing.parallel import template_key

    shared = _shared_run(request.config)
    key = template_key(mdb_schema) if shared is not None else None
    if shared is not None and key is not None:
        template = shared.template(mdb_server, key, lambda name: create_kit_database(mdb_server, name, mdb_schema))
        with throwaway_database(mdb_server, template=template) as database:
            yield database
        return
    with throwaway_database(mdb_server) as database:
        create_schema(database.config(), mdb_schema)
        yield database


@pytest.fixture(scope="session")
def mdb_config(mdb_database: "ThrowawayDatabase") -> "DatabaseConfig":
    """A config for `mdb_database`: of the app's config class when one is registered.

    When the tests imported the app (whose config registered itself), the kit builds that
    class for `mdb_database` and registers it in its place, so `database_session()` and
    other users of the registered config reach the test database. Else a `DatabaseConfig`.
    """
    from mountaineer import config as mountaineer_config

    from mountaineer_db.settings.config import DatabaseConfig

    registered = mountaineer_config.APP_CONFIG
    if isinstance(registered, DatabaseConfig):
        return mdb_database.config(type(registered))
    return mdb_database.config()


@_async_fixture
async def mdb_session(mdb_config: "DatabaseConfig") -> AsyncIterator[Any]:
    """A session whose changes, committed or not, are rolled back after the test."""
    from mountaineer_db.testing.sessions import rollback_session

    async with rollback_session(mdb_config) as session:
        yield session


@pytest.fixture
def mdb_app() -> Any:
    """Override in your conftest to return your `AppController` (used by `mdb_app_session`)."""
    raise pytest.UsageError(
        "mdb_app_session and mdb_client need your app: define a fixture named `mdb_app` that "
        "returns your mountaineer AppController."
    )


@_async_fixture
async def mdb_app_session(mdb_app: Any, mdb_session: Any) -> AsyncIterator[Any]:
    """`mdb_session`, used by every `get_db_session` of `mdb_app` during the test."""
    from mountaineer_db.testing.sessions import override_app_session

    with override_app_session(mdb_app, mdb_session):
        yield mdb_session


@_async_fixture
async def mdb_client(mdb_app: Any, mdb_app_session: Any) -> AsyncIterator[Any]:
    """An `httpx.AsyncClient` calling `mdb_app` in-process, with `mdb_app_session` in place."""
    import httpx

    transport = httpx.ASGITransport(app=mdb_app.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture(scope="session")
def mdb_pgbouncer(mdb_server: "Server") -> "Iterator[PgBouncer]":
    """A PgBouncer in transaction mode in front of `mdb_server`; skipped when not installed.

    `mdb_database.url_via(mdb_pgbouncer)` is the test database's URL through it.
    """
    from mountaineer_db.servers.pgbouncer import find_pgbouncer
    from mountaineer_db.testing.databases import pgbouncer_for

    if find_pgbouncer() is None:
        pytest.skip("PgBouncer is not installed (apt-get install pgbouncer); the mdb_pgbouncer tests cannot run")
    with pgbouncer_for(mdb_server) as bouncer:
        yield bouncer


@pytest.fixture(scope="session")
def mdb_replicas(mdb_server: "Server") -> "Iterator[list[StreamingReplica]]":
    """Two streaming replicas of `mdb_server`; skipped when it is an existing server (MOUNTAINEER_DB_TEST_URL).

    Replicas see committed data only: tests that read through them commit for real and clean up.
    """
    from mountaineer_db.servers.cluster import PostgresCluster
    from mountaineer_db.testing.replicas import streaming_replicas

    if not isinstance(mdb_server, PostgresCluster):
        pytest.skip("mdb_replicas needs a throwaway server; unset MOUNTAINEER_DB_TEST_URL for replica tests")
    with streaming_replicas(mdb_server, count=2) as replicas:
        yield replicas


@pytest.fixture(scope="session")
def mdb_replica_config(
    mdb_database: "ThrowawayDatabase", mdb_replicas: "list[StreamingReplica]"
) -> "DatabaseConfig":
    """A config for `mdb_database` reading from `mdb_replicas` (the app's config class when registered)."""
    from mountaineer import config as mountaineer_config

    from mountaineer_db.settings.config import DatabaseConfig
    from mountaineer_db.testing.replicas import replica_config

    registered = mountaineer_config.APP_CONFIG
    config_class = type(registered) if isinstance(registered, DatabaseConfig) else DatabaseConfig
    return replica_config(mdb_database, mdb_replicas, config_class)


@pytest.fixture
def mdb_captured_on_commit() -> Callable[..., Any]:
    """`mountaineer_db.testing.captured_on_commit`, for tests that prefer a fixture:

    ```python
    async def test_it(mdb_client, mdb_captured_on_commit):
        with mdb_captured_on_commit(execute=True) as callbacks:
            await mdb_client.post(...)
        assert len(callbacks) == 1
    ```
    """
    from mountaineer_db.testing.commit_hooks import captured_on_commit

    return captured_on_commit


@pytest.fixture
def mdb_assert_num_queries() -> Callable[..., Any]:
    """`mountaineer_db.testing.assert_num_queries`: fail unless the block runs exactly N statements.

    ```python
    async def test_list_page(mdb_client, mdb_assert_num_queries):
        with mdb_assert_num_queries(1):
            await mdb_client.get("/")
    ```
    """
    from mountaineer_db.testing.queries import assert_num_queries

    return assert_num_queries


@pytest.fixture
def mdb_assert_max_queries() -> Callable[..., Any]:
    """`mountaineer_db.testing.assert_max_queries`: fail if the block runs more than N statements."""
    from mountaineer_db.testing.queries import assert_max_queries

    return assert_max_queries


@pytest.fixture
def mdb_assert_no_n_plus_one() -> Callable[..., Any]:
    """`mountaineer_db.testing.assert_no_n_plus_one`: fail if one statement repeats for one controller action.

    ```python
    async def test_list_page(mdb_client, mdb_assert_no_n_plus_one):
        with mdb_assert_no_n_plus_one():
            await mdb_client.get("/todos")
    ```
    """
    from mountaineer_db.testing.n_plus_one import assert_no_n_plus_one

    return assert_no_n_plus_one
