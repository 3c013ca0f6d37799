"""`migrate check` compares constraint names, which Alembic's autogenerate leaves out for
primary keys, foreign keys and check constraints.

The old database is made with the DDL mountaineer 0.8 ran (tests/sample_apps/old_template_app/
schema_0_8.sql: PostgreSQL's names, `detailitem_pkey`); the models are compared once with
mountaineer-db's naming convention (`pk_detailitem`) and once with PostgreSQL's, in both
directions, and with names over PostgreSQL's 63 characters.
"""

import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import MetaData
from sqlalchemy.ext.asyncio import create_async_engine

from mountaineer_db import DatabaseConfig, migrations
from mountaineer_db.migrations.names import RENAME_ADVICE
from tests.sample_apps import (
    fresh_database,
    old_template_schema,
    server_execute,
    server_fetch,
    write_migrations_folder,
)

ROOT = Path(__file__).resolve().parent.parent

TABLES = """
from sqlalchemy import CheckConstraint, Column, ForeignKey, Integer, MetaData, String, Table

POSTGRES_NAMES = {
    "ix": "ix_%(column_0_label)s",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "fk": "%(table_name)s_%(column_0_N_name)s_fkey",
    "pk": "%(table_name)s_pkey",
}


def tables(metadata):
    Table(
        "detailitem", metadata,
        Column("id", Integer, primary_key=True), Column("description", String, nullable=False),
    )
    Table(
        "owner", metadata,
        Column("id", Integer, primary_key=True), Column("email", String, nullable=False, unique=True),
    )
    Table(
        "todo", metadata,
        Column("id", Integer, primary_key=True),
        Column("description", String, nullable=False, index=True),
        Column("owner_id", Integer, ForeignKey("owner.id")),
    )
    return metadata


plain = tables(MetaData())  # check applies mountaineer-db's convention to it: pk_detailitem, ...
postgres = tables(MetaData(naming_convention=POSTGRES_NAMES))  # the names the old database has

# Foreign key and check names over 63 characters, which SQLAlchemy shortens in DDL.
LONG = "table_whose_constraint_names_go_over_the_limit"
long_names = MetaData(naming_convention={
    "pk": "pk_%(table_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
})
Table("owner", long_names, Column("id", Integer, primary_key=True))
Table(
    LONG, long_names,
    Column("id", Integer, primary_key=True),
    Column("owner_with_a_long_reference_id", Integer, ForeignKey("owner.id")),
    Column("stars", Integer, CheckConstraint("stars >= 0", name="stars_not_negative_and_more_words_for_length")),
)
"""


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package `oldnames` with the tables above and a migrations folder without revisions."""
    package = tmp_path / "oldnames"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tables.py").write_text(textwrap.dedent(TABLES))
    write_migrations_folder(package)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "oldnames"
    for module in [name for name in sys.modules if name == "oldnames" or name.startswith("oldnames.")]:
        del sys.modules[module]


@pytest.fixture
def database(pg_server: Any) -> Iterator[str]:
    with fresh_database(pg_server, prefix="mdb_names") as name:
        yield name


class NamesConfig(DatabaseConfig):
    PACKAGE: str | None = "oldnames"


def _config(pg_server: Any, database: str, metadata: str) -> DatabaseConfig:
    return NamesConfig(
        SQLALCHEMY_DATABASE_URI=pg_server.url(database), MIGRATIONS_METADATA=f"oldnames.tables:{metadata}"
    )


async def _differences(config: DatabaseConfig) -> list[str]:
    try:
        await migrations.check(config=config)
    except migrations.MigrationCheckError as error:
        return error.differences
    return []


async def _create_all(pg_server: Any, database: str, metadata: MetaData) -> None:
    engine = create_async_engine(pg_server.url(database))
    try:
        async with engine.begin() as connection:
            await connection.run_sync(metadata.create_all)
    finally:
        await engine.dispose()


async def test_a_database_of_mountaineer_0_8_against_models_named_by_mountaineer_db(
    pg_server: Any, database: str, app: str
) -> None:
    await server_execute(pg_server, *old_template_schema(), "DROP TABLE migration_info", database=database)
    config = _config(pg_server, database, "plain")
    with pytest.raises(migrations.MigrationCheckError) as caught:
        await migrations.check(config=config)
    differences = caught.value.differences
    for line in (
        "rename primary key detailitem_pkey on detailitem to pk_detailitem",
        "rename primary key owner_pkey on owner to pk_owner",
        "rename primary key todo_pkey on todo to pk_todo",
        "rename foreign key todo_owner_id_fkey on todo (owner_id) to fk_todo_owner_id_owner",
        "remove unique constraint owner_email_key on owner (email)",  # Alembic's own, by name
        "add unique constraint uq_owner_email on owner (email)",
    ):
        assert line in differences, differences
    assert len(differences) == 6, differences
    assert str(caught.value).endswith(RENAME_ADVICE)
    guide = " ".join((ROOT / "docs" / "moving-from-mountaineer-database.md").read_text().split())
    assert "`rename primary key detailitem_pkey on detailitem to pk_detailitem`" in guide  # its step 6 quotes it


async def test_a_database_named_by_mountaineer_db_against_models_with_postgres_names(
    pg_server: Any, database: str, app: str
) -> None:
    """The other way round: `createdb --create-tables` made it, the models (step 2 of the guide) say `_pkey`."""
    with_ours = migrations.load_metadata(_config(pg_server, database, "plain"))
    await _create_all(pg_server, database, with_ours)
    differences = await _differences(_config(pg_server, database, "postgres"))
    assert "rename primary key pk_detailitem on detailitem to detailitem_pkey" in differences
    assert "rename foreign key fk_todo_owner_id_owner on todo (owner_id) to todo_owner_id_fkey" in differences
    assert len(differences) == 6, differences  # 3 keys, 1 foreign key, a unique constraint removed and added


async def test_the_same_names_are_no_difference(pg_server: Any, database: str, app: str) -> None:
    await server_execute(pg_server, *old_template_schema(), "DROP TABLE migration_info", database=database)
    assert await _differences(_config(pg_server, database, "postgres")) == []


async def test_names_over_63_characters_compare_as_sqlalchemy_shortens_them(
    pg_server: Any, database: str, app: str
) -> None:
    config = _config(pg_server, database, "long_names")
    await _create_all(pg_server, database, migrations.load_metadata(config))
    rows = await server_fetch(
        pg_server,
        "SELECT conname, contype::text FROM pg_constraint WHERE conrelid = $1::regclass",
        "table_whose_constraint_names_go_over_the_limit",
        database=database,
    )
    # 55 characters, "_", 4 hex digits of the md5 of the full name
    shortened = sorted(row[1] for row in rows if re.fullmatch(r"\w{55}_[0-9a-f]{4}", row[0]))
    assert shortened == ["c", "f"], rows
    assert await _differences(config) == []


async def test_check_constraints_named_otherwise_are_listed(pg_server: Any, database: str, app: str) -> None:
    config = _config(pg_server, database, "long_names")
    await _create_all(pg_server, database, migrations.load_metadata(config))
    long = "table_whose_constraint_names_go_over_the_limit"
    (found,) = [
        row
        for row in await _check_names(pg_server, database)
        if row.startswith("ck_")  # the shortened name SQLAlchemy gave it
    ]
    await server_execute(pg_server, f'ALTER TABLE {long} RENAME CONSTRAINT "{found}" TO stars_check', database=database)
    assert await _differences(config) == [
        f"add check constraint {found} on {long}",
        f"remove check constraint stars_check on {long}",
    ]


async def _check_names(pg_server: Any, database: str) -> list[str]:
    rows = await server_fetch(pg_server, "SELECT conname FROM pg_constraint WHERE contype = 'c'", database=database)
    return [row[0] for row in rows]
