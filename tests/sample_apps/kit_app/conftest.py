"""What an app author writes to use the kit: the app, and how its tables are made."""

import pytest
from mountaineer import AppController

from mountaineer_db import DatabaseConfig
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.testing import Schema, ThrowawayDatabase
from tests.sample_apps.kit_app.app import KitAppConfig, build_app, kit_metadata


@pytest.fixture(scope="session")
def mdb_schema() -> Schema:
    """A hook, as for running migrations (a plain MetaData would do here as well)."""

    async def make_tables(config: DatabaseConfig) -> None:
        engine = engine_for(config)
        async with engine.begin() as connection:
            await connection.run_sync(kit_metadata().create_all)
        await engine.dispose()

    return make_tables


@pytest.fixture
def mdb_app(mdb_database: ThrowawayDatabase) -> AppController:
    """The app under test, configured for the kit's database (its config registers itself)."""
    config = mdb_database.config(KitAppConfig)
    assert isinstance(config, KitAppConfig)
    return build_app(config)
