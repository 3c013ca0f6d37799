"""The example app's tests use the testing kit the way the README tells app authors to.

Needs the example app installed (`pip install -e ./example_app`, as scripts/run_example.sh
and scripts/prepare_example.sh do); the test modules skip loudly without it (fail in CI).
"""

from collections.abc import Iterator
from typing import Any

import pytest

from mountaineer_db.testing import Server, ThrowawayDatabase, apply_migrations, create_schema, throwaway_database


@pytest.fixture(scope="session")
def mdb_database(mdb_server: Server) -> Iterator[ThrowawayDatabase]:
    """This app's own test database, made by its Alembic migrations.

    Overridden here (not only `mdb_schema`) because a session fixture is cached once per
    run: another directory's schema must not leak into this app's database, or back.
    """
    from todo_app.config import AppConfig

    with throwaway_database(mdb_server) as database:
        create_schema(database.config(), apply_migrations(AppConfig))
        yield database


@pytest.fixture
def mdb_app(mdb_database: ThrowawayDatabase) -> Any:
    """The app under test (an AppController), configured for the kit's database."""
    from todo_app.app import build_app
    from todo_app.config import AppConfig

    config = mdb_database.config(AppConfig)
    assert isinstance(config, AppConfig)
    return build_app(config)
