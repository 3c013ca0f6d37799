"""The example app's tests use the testing kit the way the README tells app authors to.

Needs the example app installed (`pip install -e example_app`, as scripts/run_example.sh
does); without it these tests are skipped loudly (a failure in CI).
"""

import os
from collections.abc import Iterator

import pytest

from mountaineer_db.testing import Server, ThrowawayDatabase, apply_migrations, create_schema, throwaway_database

try:
    from mountaineer import AppController
    from todo_app.app import build_app
    from todo_app.config import AppConfig
except ImportError as error:  # pragma: no cover - depends on the environment
    message = f"the example app is not installed ({error}); run: pip install -e example_app"
    if os.environ.get("CI"):
        raise RuntimeError(message) from error
    pytest.skip(message, allow_module_level=True)


@pytest.fixture(scope="session")
def mdb_database(mdb_server: Server) -> Iterator[ThrowawayDatabase]:
    """This app's own test database, made by its Alembic migrations.

    Overridden here (not only `mdb_schema`) because a session fixture is cached once per
    run: another directory's schema must not leak into this app's database, or back.
    """
    with throwaway_database(mdb_server) as database:
        create_schema(database.config(), apply_migrations(AppConfig))
        yield database


@pytest.fixture
def mdb_app(mdb_database: ThrowawayDatabase) -> AppController:
    """The app under test, configured for the kit's database (its config registers itself)."""
    config = mdb_database.config(AppConfig)
    assert isinstance(config, AppConfig)
    return build_app(config)
