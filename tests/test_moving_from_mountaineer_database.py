"""docs/moving-from-mountaineer-database.md, checked: what it says differs in the config and
the models does. Its steps, followed in order on the 0.8-era template app, are in
tests/test_moving_from_mountaineer_database_app.py.
"""

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mountaineer import ConfigBase

from mountaineer_db import DatabaseConfig, DatabaseConfigError, migrations
from tests.sample_apps import fresh_database, server_execute

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "moving-from-mountaineer-database.md").read_text()
PROSE = " ".join(PAGE.split())


# -- the config ---------------------------------------------------------------------------


def test_a_password_declared_as_str_stays_secret_and_the_url_masks_it() -> None:
    class OldStyleConfig(DatabaseConfig, ConfigBase):
        POSTGRES_HOST: str = "db.internal"
        POSTGRES_USER: str = "app"
        POSTGRES_PASSWORD: str = "s3cret-pw"
        POSTGRES_DB: str = "app"

    config = OldStyleConfig()
    assert repr(config.POSTGRES_PASSWORD) == "SecretStr('**********')"
    assert config.POSTGRES_PASSWORD.get_secret_value() == "s3cret-pw"  # type: ignore[attr-defined]
    assert "s3cret-pw" not in repr(config)
    assert str(config.SQLALCHEMY_DATABASE_URI) == "postgresql+asyncpg://app:***@db.internal:5432/app"
    rendered = config.SQLALCHEMY_DATABASE_URI.render_as_string(hide_password=False)  # type: ignore[union-attr]
    assert rendered == "postgresql+asyncpg://app:s3cret-pw@db.internal:5432/app"
    assert "`.render_as_string(hide_password=False)`" in PAGE and "`.get_secret_value()`" in PAGE


def test_a_url_and_the_parts_together_are_refused_with_the_text_the_page_quotes() -> None:
    with pytest.raises(DatabaseConfigError) as caught:
        DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://app:pw@db/app", POSTGRES_HOST="db", POSTGRES_DB="app")
    quoted = "Set either SQLALCHEMY_DATABASE_URI or POSTGRES_HOST/POSTGRES_DB, not both."
    assert quoted in str(caught.value)
    assert quoted in " ".join(PAGE.split())


# -- models -------------------------------------------------------------------------------

_MODELS = textwrap.dedent(
    """
    from typing import Generic, TypeVar

    from sqlmodel import Field, SQLModel

    T = TypeVar("T")

    class Box(SQLModel, Generic[T]):
        value: T

    {table}
    """
)


def _define(table: str) -> "subprocess.CompletedProcess[str]":
    """Define models in a fresh interpreter (a failed table class leaves SQLModel's registry dirty)."""
    code = _MODELS.format(table=textwrap.dedent(table)) + "\nprint(sorted(IntBox.__table__.columns.keys()))\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)


def test_a_table_on_a_generic_base_fails_as_the_page_says_and_the_fix_works() -> None:
    failed = _define(
        """
        class IntBox(Box[int], table=True):
            id: int | None = Field(default=None, primary_key=True)
        """
    )
    message = "TypeError: issubclass() arg 1 must be a class"
    assert failed.returncode != 0 and message in failed.stderr, failed.stderr[-2000:]
    assert f"`{message}`" in " ".join(PAGE.split())

    fixed = _define(
        """
        class IntBox(Box[int], table=True):
            id: int | None = Field(default=None, primary_key=True)
            value: int
        """
    )
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert fixed.stdout.strip() == "['id', 'value']"


def test_table_models_do_not_validate_on_construction_but_model_validate_does() -> None:
    code = textwrap.dedent(
        """
        import pydantic
        from sqlmodel import Field, SQLModel

        class Todo(SQLModel, table=True):
            id: int | None = Field(default=None, primary_key=True)
            priority: int = 0

        assert Todo(priority="high").priority == "high"
        try:
            Todo.model_validate({"priority": "high"})
        except pydantic.ValidationError:
            print("refused")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stdout.strip() == "refused", result.stderr[-2000:]
    assert "`Todo.model_validate(data)`" in PAGE


# -- a new required column on a table with rows -------------------------------------------

REQUIRED_COLUMN = """
from sqlalchemy import Column, Integer, MetaData, String, Table

def detailitem(*extra):
    metadata = MetaData()
    Table("detailitem", metadata, Column("id", Integer, primary_key=True), Column("description", String), *extra)
    return metadata

before = detailitem()
after = detailitem(Column("priority", Integer, nullable=False))  # `priority: int` added to the model
"""


class RequiredColumnConfig(DatabaseConfig):
    PACKAGE: str | None = "reqcol"


@pytest.fixture
def reqcol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    package = tmp_path / "reqcol"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tables.py").write_text(REQUIRED_COLUMN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    for module in [name for name in sys.modules if name == "reqcol" or name.startswith("reqcol.")]:
        del sys.modules[module]


@pytest.fixture
def database(pg_server: Any) -> Iterator[str]:
    with fresh_database(pg_server, prefix="mdb_reqcol") as name:
        yield name


async def test_a_new_required_column_fails_on_existing_rows_and_lint_flags_it(
    pg_server: Any, reqcol: Path, database: str
) -> None:
    """What the page's last paragraph says, with the quoted error (#32 item 9)."""

    def config(metadata: str) -> DatabaseConfig:
        return RequiredColumnConfig(
            SQLALCHEMY_DATABASE_URI=pg_server.url(database), MIGRATIONS_METADATA=f"reqcol.tables:{metadata}"
        )

    await migrations.init(config=config("before"))
    await migrations.generate("baseline", config=config("before"))
    await migrations.apply(config=config("before"))
    await server_execute(pg_server, "INSERT INTO detailitem (description) VALUES ('a row')", database=database)
    await migrations.generate("add priority", config=config("after"))
    with pytest.raises(migrations.MigrationError) as caught:
        await migrations.apply(config=config("after"))
    quoted = 'column "priority" of relation "detailitem" contains null values'
    assert quoted in str(caught.value)
    assert f"`{quoted}`" in PROSE and "migrations.md#a-new-required-column" in PAGE
    findings = await migrations.lint(config=config("after"))
    assert [finding.rule for finding in findings] == ["adding-required-field"]
    assert "`mountaineer-db migrate lint`" in PROSE
