"""Adopting a database whose tables exist: `migrate stamp REV` for a database made without
migrations (the old `mountaineer.database`, `createdb --create-tables` before migrations),
and `createdb --create-tables`, which stamps the head itself when the app has migrations."""

import asyncio
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mountaineer_db import ResourceNotFoundError, migrations
from mountaineer_db.migrations import admin
from mountaineer_db.settings.config import DatabaseConfig
from tests.sample_apps import cli_env, copy_sample_app, fresh_database, run_cli, sample_app_on_path, server_execute

CONFIG = ("--config", "migrapp.config:AppConfig")


@pytest.fixture
def database(pg_server: Any) -> Iterator[str]:
    with fresh_database(pg_server, prefix="mdb_stamp") as name:
        yield name


@pytest.fixture
def second_database(pg_server: Any) -> Iterator[str]:
    with fresh_database(pg_server, prefix="mdb_stamp") as name:
        yield name


def test_createdb_create_tables_stamps_the_head(pg_server: Any, database: str, tmp_path: Path) -> None:
    """A database made by createdb --create-tables continues with migrations: only newer
    revisions are applied to it."""
    copy_sample_app(tmp_path)

    def cli(*args: str, url: Any = None, version: int = 1) -> Any:
        env = cli_env(url if url is not None else pg_server.url(database), MIGRAPP_MODEL_VERSION=str(version))
        return run_cli(*CONFIG, *args, cwd=tmp_path, env=env)

    assert cli("migrate", "init").returncode == 0
    result = cli("migrate", "generate", "-m", "create todo")
    assert result.returncode == 0, result.stderr
    head = re.search(r"\((\w+)\)", result.stdout).group(1)  # type: ignore[union-attr]

    fresh = pg_server.url(f"mdb_stamp_{secrets.token_hex(4)}")
    try:
        result = cli("createdb", "--create-tables", url=fresh)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[1:] == [
            "Created the tables of the models.",
            f"Stamped revision {head} (head): `migrate apply` runs only newer revisions.",
        ]
        assert cli("migrate", "current", url=fresh).stdout.startswith(f"{head} (head)  create todo")
        assert cli("migrate", "check", url=fresh).returncode == 0
        result = cli("migrate", "generate", "-m", "add priority", url=fresh, version=2)
        assert result.returncode == 0, result.stderr
        result = cli("migrate", "apply", url=fresh, version=2)
        assert result.returncode == 0, result.stderr
        assert re.search(r"^Applied \w+ \(head\)\s+add priority$", result.stdout, re.M), result.stdout
        assert "create todo" not in result.stdout
    finally:
        asyncio.run(server_execute(pg_server, f'DROP DATABASE IF EXISTS "{fresh.database}" WITH (FORCE)'))


async def test_stamp_adopts_a_database_made_without_migrations(
    pg_server: Any, database: str, second_database: str, tmp_path: Path
) -> None:
    with sample_app_on_path(tmp_path):
        from migrapp.config import TablesConfig  # type: ignore[import-not-found]

        old: DatabaseConfig = TablesConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(second_database))
        # Before the app had migrations (the old mountaineer.database did create_all): nothing to stamp.
        assert await admin.create_model_tables(old) == []
        await server_execute(pg_server, "INSERT INTO author (name) VALUES ('kept')", database=second_database)

        dev: DatabaseConfig = TablesConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(database))
        await migrations.init(config=dev)
        first = await migrations.generate("create notes", config=dev)
        assert first is not None

        with pytest.raises(migrations.MigrationError, match=r"relation \"author\" already exists") as caught:
            await migrations.apply(config=old)  # what adopting is for
        assert str(caught.value) == (
            'A migration failed and was rolled back: relation "author" already exists. The database already has '
            "tables but records no migration (made by `createdb --create-tables`, by mountaineer.database or by "
            f"hand): adopt it with `mountaineer-db migrate stamp {first.id}` (the first revision, or the later one "
            "its tables match) instead of applying, then run `mountaineer-db migrate check`."
        )
        with pytest.raises(migrations.MigrationCheckError) as checked:
            await migrations.check(config=old)  # a CI gate or an app start says the same
        assert "records no migration and already has the models' tables (" in str(checked.value)
        assert f"adopt it with `mountaineer-db migrate stamp {first.id}`" in str(checked.value)
        assert "Run `mountaineer-db migrate apply`" not in str(checked.value)
        with pytest.raises(migrations.MigrationCheckError, match=r"Run `mountaineer-db migrate apply`\.$"):
            await migrations.check(config=dev)  # no tables: applying is right
        assert await migrations.adoption_advice(old) is not None  # what the development database checks
        assert await migrations.adoption_advice(dev) is None  # no tables: nothing to adopt
        stamped = await migrations.stamp("head", config=old)
        assert [r.id for r in stamped] == [first.id]
        assert await migrations.apply(config=old) == []
        await migrations.check(config=old)

        with pytest.raises(ResourceNotFoundError, match=r"^Can't locate revision identified by 'nosuch'"):
            await migrations.stamp("nosuch", config=old)
        assert await migrations.stamp("base", config=old) == []
        assert await migrations.current(config=old) == []
