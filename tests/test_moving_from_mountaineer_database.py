"""docs/moving-from-mountaineer-database.md, checked: what it says differs does, and its
migration steps adopt a database made the way mountaineer.database made them.

The old database is made as Mountaineer 0.8 made it: `SQLModel.metadata.create_all()` of the
models with no naming convention (`handle_createdb`), plus the `migration_info` table of its
migration tool. Then the page's own models and commands, taken from the page, adopt it.
"""

import asyncio
import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mountaineer import ConfigBase

from mountaineer_db import DatabaseConfig, DatabaseConfigError
from tests.docs_code import FENCE, files_in
from tests.sample_apps import fresh_database, server_execute, server_fetch

ROOT = Path(__file__).resolve().parent.parent
PAGE = (ROOT / "docs" / "moving-from-mountaineer-database.md").read_text()


def _bash_blocks(markdown: str) -> list[list[str]]:
    """The commands of each bash block, comments stripped."""
    blocks = []
    for block in FENCE.finditer(markdown):
        if block.group("lang") == "bash":
            lines = [line.split("#", 1)[0].strip() for line in block.group("body").splitlines()]
            blocks.append([line for line in lines if line])
    return blocks


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


# -- migrations: adopting a database mountaineer.database made ---------------------------------


@pytest.fixture
def old_database(pg_server: Any) -> Iterator[str]:
    with fresh_database(pg_server, prefix="mdb_old") as name:
        yield name


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The app of the page: its config and models, as the page shows them."""
    files = files_in(PAGE)
    assert set(files) == {"myapp/config.py", "myapp/models.py"}
    for name, content in files.items():
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    (tmp_path / "myapp" / "__init__.py").write_text("")
    return tmp_path


def _make_old_database(project: Path, env: dict[str, str]) -> None:
    """The tables as mountaineer.database made them: create_all without a naming convention."""
    models = (project / "myapp" / "models.py").read_text()
    old_models = re.sub(r"SQLModel\.metadata\.naming_convention = \{.*?\}\n", "", models, flags=re.DOTALL)
    assert old_models != models and "naming_convention" not in old_models
    code = old_models + textwrap.dedent(
        """
        import asyncio, os
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        async def main():  # as handle_createdb did it, then the old Migrator.init_db
            engine = create_async_engine(os.environ["OLD_DATABASE_URL"])
            async with engine.begin() as connection:
                await connection.run_sync(SQLModel.metadata.create_all)
                await connection.execute(text("CREATE TABLE migration_info (active_revision VARCHAR(255))"))
                await connection.execute(text("INSERT INTO migration_info (active_revision) VALUES ('1715044020')"))
            await engine.dispose()

        asyncio.run(main())
        """
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]


async def _constraint_names(server: Any, database: str) -> list[str]:
    rows = await server_fetch(
        server,
        "SELECT conname FROM pg_constraint WHERE connamespace = 'public'::regnamespace "
        "AND conrelid::regclass::text <> 'alembic_version' ORDER BY conname",
        database=database,
    )
    index_rows = await server_fetch(
        server, "SELECT indexname FROM pg_indexes WHERE schemaname = 'public' ORDER BY indexname", database=database
    )
    return [row[0] for row in rows] + [row[0] for row in index_rows if row[0] != "alembic_version_pkc"]


def test_the_page_steps_adopt_an_old_database_without_running_anything(
    pg_server: Any, old_database: str, project: Path
) -> None:
    url = pg_server.url(old_database)
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("POSTGRES_", "DATABASE_", "SQLALCHEMY_"))
    }
    env.update(
        POSTGRES_HOST=str(url.host),
        POSTGRES_PORT=str(url.port),
        POSTGRES_USER=str(url.username),
        POSTGRES_PASSWORD=str(url.password),
        POSTGRES_DB=old_database,
        PYTHONDONTWRITEBYTECODE="1",
        OLD_DATABASE_URL=url.render_as_string(hide_password=False),
    )
    baseline_name = "myapp_baseline"
    asyncio.run(server_execute(pg_server, f'DROP DATABASE IF EXISTS "{baseline_name}" WITH (FORCE)'))
    _make_old_database(project, env)
    old_names = asyncio.run(_constraint_names(pg_server, old_database))
    assert "owner_email_key" in old_names and "todo_owner_id_fkey" in old_names  # PostgreSQL's own names

    def run(line: str) -> "subprocess.CompletedProcess[str]":
        words = shlex.split(line)
        extra = {}
        while "=" in words[0]:
            key, _, value = words.pop(0).partition("=")
            extra[key] = value
        if words[0] == "export":
            key, _, value = words[1].partition("=")
            env[key] = value
            return subprocess.CompletedProcess(words, 0, "", "")
        assert words[0] == "mountaineer-db", line
        result = subprocess.run(
            [sys.executable, "-m", "mountaineer_db.cli", *words[1:]],
            cwd=project,
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, f"{line}\n{result.stdout}\n{result.stderr}"
        return result

    baseline_block, stamp_block = [block for block in _bash_blocks(PAGE) if any("mountaineer-db" in c for c in block)]
    revision = None
    for line in baseline_block:
        result = run(line)
        found = re.search(r"\((\w{12})\)", result.stdout)
        if "generate" in line:
            assert found, result.stdout
            revision = found.group(1)
    assert revision is not None
    databases = [row[0] for row in asyncio.run(server_fetch(pg_server, "SELECT datname FROM pg_database"))]
    assert baseline_name not in databases, "the page's steps left the baseline database behind"

    (stamp,) = stamp_block
    run(stamp.replace("BASELINE_REVISION", revision))
    mountaineer_db = [sys.executable, "-m", "mountaineer_db.cli", "migrate", "check"]
    before = subprocess.run(mountaineer_db, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert before.returncode == 1 and "remove table migration_info" in before.stderr, before.stderr
    assert "DROP TABLE migration_info;" in PAGE
    asyncio.run(server_execute(pg_server, "DROP TABLE migration_info", database=old_database))
    after = subprocess.run(mountaineer_db, cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert after.returncode == 0, after.stderr

    # Nothing was run against the old database, and a new one made by the baseline has its names.
    assert asyncio.run(_constraint_names(pg_server, old_database)) == old_names
    with fresh_database(pg_server, prefix="mdb_new") as new_database:
        applied = subprocess.run(
            [sys.executable, "-m", "mountaineer_db.cli", "migrate", "apply"],
            cwd=project,
            env={**env, "POSTGRES_DB": new_database},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert applied.returncode == 0, applied.stderr
        assert asyncio.run(_constraint_names(pg_server, new_database)) == old_names
