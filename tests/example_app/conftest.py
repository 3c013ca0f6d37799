"""The example app's tests use the testing kit the way docs/testing.md tells app authors to.

Needs the example app installed (`pip install -e ./example_app`, as scripts/run_example.sh
and scripts/prepare_example.sh do); the test modules skip loudly without it (fail in CI).
"""

from collections.abc import Iterator
from typing import Any

import pytest

from mountaineer_db import DatabaseConfig
from mountaineer_db.testing import Server, ThrowawayDatabase, apply_migrations, create_schema, throwaway_database


@pytest.fixture(scope="session")
def mdb_database(mdb_server: Server) -> Iterator[ThrowawayDatabase]:
    """This app's own test database, made by its Alembic migrations.

    Overridden here, with `mdb_config`, rather than through `mdb_schema` alone: pytest caches
    a session fixture once per run, so in a suite holding several apps the kit's own
    `mdb_database`/`mdb_config` would be shared between them. An app with its own test suite
    only needs the `mdb_schema` override docs/testing.md shows.
    """
    from todo_app.config import AppConfig

    with throwaway_database(mdb_server) as database:
        create_schema(database.config(), apply_migrations(AppConfig))
        yield database


@pytest.fixture(scope="session")
def mdb_config(mdb_database: ThrowawayDatabase) -> DatabaseConfig:
    """A plain DatabaseConfig for this app's test database (what `mdb_session` connects to)."""
    return mdb_database.config()


@pytest.fixture
def mdb_app(mdb_database: ThrowawayDatabase) -> Any:
    """The app under test (an AppController), configured for the kit's database."""
    from todo_app.app import build_app
    from todo_app.config import AppConfig

    config = mdb_database.config(AppConfig)
    assert isinstance(config, AppConfig)
    return build_app(config)
