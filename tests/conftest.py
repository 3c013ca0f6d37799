"""Shared fixtures: a throwaway PostgreSQL (and PgBouncer) started by the suite itself.

Set MOUNTAINEER_DB_TEST_URL to a superuser URL to use an existing server instead. Tests that
stop or restart PostgreSQL never use the shared server: they start their own cluster.
"""

import asyncio
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mountaineer.config import unregister_config

from mountaineer_db import DatabaseConfig, dispose_engines
from mountaineer_db.servers.cluster import ExternalServer, PostgresCluster
from mountaineer_db.servers.pgbouncer import PgBouncer, find_pgbouncer
from mountaineer_db.servers.pgbouncer_versions import BUILD_HINT, find_pgbouncer_at_least, pgbouncer_version
from tests.sample_apps import server_execute, server_fetch

IN_CI = bool(os.environ.get("CI"))


def require_pgbouncer() -> None:
    """Skip loudly when PgBouncer is missing; in CI a missing PgBouncer is a failure."""
    if find_pgbouncer() is None:
        message = "PgBouncer is not installed (apt-get install -y pgbouncer); PgBouncer tests cannot run"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


# Run statements as the superuser, outside any transaction (the name the core tests use).
admin_execute = server_execute


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """The shared PostgreSQL server for this test session."""
    external = os.environ.get("MOUNTAINEER_DB_TEST_URL")
    if external:
        yield ExternalServer(external)
        return
    with PostgresCluster.temporary() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def test_database(pg_server: Any) -> Iterator[str]:
    """A fresh database for this test session, dropped at the end."""
    name = f"mdb_test_{secrets.token_hex(4)}"
    asyncio.run(admin_execute(pg_server, f'CREATE DATABASE "{name}"'))
    yield name
    leftovers = asyncio.run(
        server_fetch(
            pg_server,
            "SELECT application_name, state, left(query, 80) AS query FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
    )
    if leftovers:  # said before they are ended, so a leak is seen instead of a slow or failing drop
        print(f"\nconnections left on {name} at the end of the session: {[dict(row) for row in leftovers]}")
    asyncio.run(admin_execute(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pgbouncer(pg_server: Any) -> Iterator[PgBouncer]:
    """A PgBouncer in transaction mode in front of the shared server."""
    require_pgbouncer()
    work_dir = Path(tempfile.mkdtemp(prefix="mountaineer-db-bouncer-"))
    os.chmod(work_dir, 0o755)
    bouncer = PgBouncer(
        pg_server.host if isinstance(pg_server, ExternalServer) else "127.0.0.1",
        pg_server.port,
        {pg_server.user: pg_server.password},
        work_dir=work_dir,
        settings={"default_pool_size": "4"},
    )
    with bouncer:
        yield bouncer


def require_pgbouncer_with_prepared_statements() -> Path:
    """A PgBouncer >= 1.21 (built by scripts/build_pgbouncer.sh); skip loudly, or fail in CI.

    When scripts/test.sh could not build it, it says why in MOUNTAINEER_DB_PGBOUNCER_BUILD_FAILED:
    those tests then skip with that reason, in CI too.
    """
    binary = find_pgbouncer_at_least((1, 21))
    if binary is not None:
        return binary
    failed = os.environ.get("MOUNTAINEER_DB_PGBOUNCER_BUILD_FAILED")
    if failed:
        pytest.skip(f"PgBouncer 1.24 could not be built here ({failed}); its tests cannot run")
    message = f"No PgBouncer 1.21 or newer was found; {BUILD_HINT}"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def require_old_pgbouncer() -> Path:
    """The system's PgBouncer if it is older than 1.21 (Debian 12: 1.18); skip otherwise."""
    require_pgbouncer()
    binary = find_pgbouncer()
    assert binary is not None
    version = pgbouncer_version(binary)
    if version is None or version[:2] >= (1, 21):
        pytest.skip(f"the system's PgBouncer is {version}, not older than 1.21: no old PgBouncer to test")
    return binary


@pytest.fixture(scope="session")
def pgbouncer_124(pg_server: Any) -> Iterator[PgBouncer]:
    """Like `pgbouncer`, but a PgBouncer >= 1.21 (1.24 built from source): prepared statements on."""
    binary = require_pgbouncer_with_prepared_statements()
    work_dir = Path(tempfile.mkdtemp(prefix="mountaineer-db-bouncer-124-"))
    os.chmod(work_dir, 0o755)
    bouncer = PgBouncer(
        pg_server.host if isinstance(pg_server, ExternalServer) else "127.0.0.1",
        pg_server.port,
        {pg_server.user: pg_server.password},
        work_dir=work_dir,
        settings={"default_pool_size": "4", "max_prepared_statements": "200"},
        binary=binary,
    )
    with bouncer:
        yield bouncer


@pytest.fixture(params=["1.18", "1.24"], ids=["pgbouncer-1.18", "pgbouncer-1.24"])
def pgbouncer_version_under_test(request: pytest.FixtureRequest) -> str:
    """Run a test on both PgBouncers: Debian 12's 1.18 and a 1.24 built from Debian 13's source."""
    if request.param == "1.18":
        require_old_pgbouncer()
    else:
        require_pgbouncer_with_prepared_statements()
    return str(request.param)


@pytest.fixture
def any_pgbouncer(pgbouncer_version_under_test: str, request: pytest.FixtureRequest) -> PgBouncer:
    """The session's PgBouncer of the version under test (`pgbouncer` or `pgbouncer_124`)."""
    name = "pgbouncer" if pgbouncer_version_under_test == "1.18" else "pgbouncer_124"
    bouncer: PgBouncer = request.getfixturevalue(name)
    return bouncer


@pytest.fixture
def make_config(pg_server: Any, test_database: str) -> Callable[..., DatabaseConfig]:
    """Build a DatabaseConfig for the test database; keyword arguments override fields."""

    def build(**overrides: Any) -> DatabaseConfig:
        values: dict[str, Any] = {"SQLALCHEMY_DATABASE_URI": pg_server.url(test_database)}
        values.update(overrides)
        return DatabaseConfig(**values)

    return build


@pytest.fixture
def bouncer_config(pgbouncer: PgBouncer, pg_server: Any, test_database: str) -> Callable[..., DatabaseConfig]:
    """Like make_config, but through PgBouncer."""

    def build(**overrides: Any) -> DatabaseConfig:
        url = pgbouncer.url(test_database, user=pg_server.user, password=pg_server.password)
        return DatabaseConfig(SQLALCHEMY_DATABASE_URI=url, **overrides)

    return build


@pytest.fixture
def any_bouncer_config(any_pgbouncer: PgBouncer, pg_server: Any, test_database: str) -> Callable[..., DatabaseConfig]:
    """Like bouncer_config, through the PgBouncer of the version under test (`any_pgbouncer`)."""

    def build(**overrides: Any) -> DatabaseConfig:
        url = any_pgbouncer.url(test_database, user=pg_server.user, password=pg_server.password)
        return DatabaseConfig(SQLALCHEMY_DATABASE_URI=url, **overrides)

    return build


@pytest.fixture(autouse=True)
async def _isolate_globals() -> AsyncIterator[None]:
    """Every test starts with no registered Mountaineer config and no cached engines."""
    unregister_config()
    yield
    await dispose_engines()
    unregister_config()
