"""Enum columns against a real PostgreSQL: adding, removing and renaming values of a Python
`Enum` autogenerate migrations (alembic-postgresql-enum, plus our RENAME VALUE support) that
apply, keep the rows, and leave `check` clean; the reverse works too."""

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mountaineer_db import migrations
from mountaineer_db.settings.config import DatabaseConfig
from tests.sample_apps import fresh_database, sample_app_on_path, server_execute, server_fetch


@pytest.fixture
def database(pg_server: Any) -> Iterator[str]:
    with fresh_database(pg_server, prefix="mdb_enum") as name:
        yield name


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    with sample_app_on_path(tmp_path) as package:
        yield package


def tickets_config(pg_server: Any, database: str) -> DatabaseConfig:
    from migrapp.config import TicketsConfig  # type: ignore[import-not-found]

    config: DatabaseConfig = TicketsConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(database))
    return config


def use_version(monkeypatch: pytest.MonkeyPatch, version: int) -> None:
    monkeypatch.setenv("MIGRAPP_ENUM_VERSION", str(version))
    sys.modules.pop("migrapp.tickets", None)


async def labels(server: Any, database: str) -> list[str]:
    rows = await server_fetch(
        server,
        "SELECT e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid "
        "WHERE t.typname = 'ticket_status' ORDER BY e.enumsortorder",
        database=database,
    )
    return [row[0] for row in rows]


async def rows(server: Any, database: str) -> dict[int, str]:
    found = await server_fetch(server, "SELECT id, status::text FROM ticket ORDER BY id", database=database)
    return {row[0]: row[1] for row in found}


async def generate_and_apply(config: DatabaseConfig, message: str, **kwargs: Any) -> str:
    revision = await migrations.generate(message, config=config, **kwargs)
    assert revision is not None, f"{message}: nothing generated"
    assert [r.id for r in await migrations.apply(config=config)] == [revision.id]
    await migrations.check(config=config)  # models and database agree afterwards
    return revision.path.read_text()


async def test_add_remove_and_rename_enum_values(
    pg_server: Any, database: str, app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tickets_config(pg_server, database)
    use_version(monkeypatch, 1)
    await migrations.init(config=config)
    await generate_and_apply(config, "create ticket")
    assert await labels(pg_server, database) == ["open", "tree", "closed"]
    await server_execute(
        pg_server, "INSERT INTO ticket (id, status) VALUES (1, 'open'), (2, 'tree'), (3, 'closed')", database=database
    )

    # Add a value: Alembic alone sees nothing; now ALTER TYPE ... ADD VALUE, no rewrite.
    use_version(monkeypatch, 2)
    with pytest.raises(migrations.MigrationCheckError) as drift:
        await migrations.check(config=config)
    assert drift.value.differences == [
        "change values of the enum used by ticket.status: open, tree, closed -> open, tree, closed, archived"
    ]
    script = await generate_and_apply(config, "add archived")
    assert "op.add_enum_value(" in script and "new_value='archived'" in script
    assert await labels(pg_server, database) == ["open", "tree", "closed", "archived"]
    await server_execute(pg_server, "INSERT INTO ticket (id, status) VALUES (4, 'archived')", database=database)
    assert await rows(pg_server, database) == {1: "open", 2: "tree", 3: "closed", 4: "archived"}

    # Remove a value still in use: the migration fails, is rolled back, and says what to do.
    use_version(monkeypatch, 3)
    removal = await migrations.generate("remove closed", config=config)
    assert removal is not None and "op.sync_enum_values(" in removal.path.read_text()
    with pytest.raises(migrations.MigrationError) as in_use:
        await migrations.apply(config=config)
    before = [revision.id for revision in await migrations.current(config=config)]
    assert str(in_use.value) == (
        f"Revision {removal.id} (remove closed) failed and its transaction was rolled back: invalid input value "
        'for enum ticket_status: "closed". Rows still hold an enum value this migration removes: update them '
        "first, or for a rename generate the migration with --rename-enum-value ENUM:OLD:NEW. The database "
        f"stays at revision {before[0]}."
    )
    assert await labels(pg_server, database) == ["open", "tree", "closed", "archived"]
    await server_execute(pg_server, "UPDATE ticket SET status = 'archived' WHERE id = 3", database=database)
    assert [r.id for r in await migrations.apply(config=config)] == [removal.id]
    await migrations.check(config=config)
    assert await labels(pg_server, database) == ["open", "tree", "archived"]
    assert await rows(pg_server, database) == {1: "open", 2: "tree", 3: "archived", 4: "archived"}

    # Rename a value: declared at generate time, written as RENAME VALUE; rows follow.
    use_version(monkeypatch, 4)
    script = await generate_and_apply(config, "rename tree", enum_renames={"ticket_status": {"tree": "three"}})
    assert "op.execute(\"ALTER TYPE public.ticket_status RENAME VALUE 'tree' TO 'three'\")" in script
    assert "op.execute(\"ALTER TYPE public.ticket_status RENAME VALUE 'three' TO 'tree'\")" in script  # downgrade
    assert "sync_enum_values" not in script
    assert await labels(pg_server, database) == ["open", "three", "archived"]
    assert await rows(pg_server, database) == {1: "open", 2: "three", 3: "archived", 4: "archived"}
    default = await server_fetch(
        pg_server,
        "SELECT column_default FROM information_schema.columns WHERE table_name = 'ticket' AND column_name = 'status'",
        database=database,
    )
    assert default == [("'open'::ticket_status",)]

    # And back: the downgrades restore the old names and values, rows kept.
    await migrations.rollback(steps=1, config=config)
    assert await labels(pg_server, database) == ["open", "tree", "archived"]
    assert await rows(pg_server, database) == {1: "open", 2: "tree", 3: "archived", 4: "archived"}


async def test_a_rename_that_does_not_match_the_change_writes_nothing(
    pg_server: Any, database: str, app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tickets_config(pg_server, database)
    use_version(monkeypatch, 3)
    await migrations.init(config=config)
    await generate_and_apply(config, "create ticket")
    use_version(monkeypatch, 4)
    before = sorted((app_dir / "migrations" / "versions").glob("*.py"))
    with pytest.raises(migrations.MigrationError) as wrong_value:
        await migrations.generate("rename", config=config, enum_renames={"ticket_status": {"nosuch": "three"}})
    assert str(wrong_value.value) == (
        "Cannot rename 'nosuch' in enum 'ticket_status': the database has ['open', 'tree', 'archived'] and the "
        "models have ['open', 'three', 'archived'], so 'nosuch' is not a value being removed."
    )
    with pytest.raises(migrations.MigrationError, match=r"^Cannot rename values of enum 'colour': autogenerate found"):
        await migrations.generate("rename", config=config, enum_renames={"colour": {"red": "blue"}})
    assert sorted((app_dir / "migrations" / "versions").glob("*.py")) == before


def test_rename_specs_are_parsed_and_checked() -> None:
    assert migrations.parse_enum_renames(["status:tree:three", "status:a:b", "kind:x:y"]) == {
        "status": {"tree": "three", "a": "b"},
        "kind": {"x": "y"},
    }
    with pytest.raises(migrations.MigrationError) as bad:
        migrations.parse_enum_renames(["status:tree"])
    assert str(bad.value) == (
        "--rename-enum-value 'status:tree' is not ENUM:OLD:NEW; for example status:tree:three (ENUM is the "
        "PostgreSQL type name, by default the Python class name in lower case)."
    )


# -- Issue 23: any value, any schema name -----------------------------------------------------------


async def moods(server: Any, database: str) -> list[str]:
    rows = await server_fetch(
        server,
        "SELECT e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid "
        "JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.typname = 'mood' AND n.nspname = 'user' "
        "ORDER BY e.enumsortorder",
        database=database,
    )
    return [row[0] for row in rows]


async def test_values_with_line_breaks_and_quotes_in_a_schema_named_user_make_valid_migrations(
    pg_server: Any, database: str, app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line break in a value made the script invalid Python, and `ALTER TYPE user.mood ...` invalid SQL
    (`user` is a reserved word); a single quote broke alembic-postgresql-enum's SQL. Each revision is
    generated, applied and checked against the database, then all are rolled back."""
    from migrapp.config import HostileEnumConfig  # type: ignore[import-not-found]

    # The migrations' default schema is "user" (the first on the search path): the enum lives there.
    await server_execute(
        pg_server, 'CREATE SCHEMA "user"', f'ALTER DATABASE "{database}" SET search_path = "user"', database=database
    )
    config: DatabaseConfig = HostileEnumConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(database))

    def use(version: int) -> None:
        monkeypatch.setenv("MIGRAPP_HOSTILE_VERSION", str(version))
        sys.modules.pop("migrapp.hostile_enum", None)

    use(1)
    await migrations.init(config=config)
    await generate_and_apply(config, "create remark")
    assert await moods(pg_server, database) == ["open", "line\nbreak", "it's"]
    await server_execute(pg_server, "INSERT INTO remark VALUES (1, 'line\nbreak'), (2, 'open')", database=database)

    use(2)
    script = await generate_and_apply(config, "add values")
    assert "# alembic-postgresql-enum writes these values into SQL between single quotes as they are" in script
    assert await moods(pg_server, database) == ["open", "line\nbreak", "it's", 'say "hi"', "back\\slash", "o'clock"]

    use(3)
    await generate_and_apply(config, "remove it's")
    assert await moods(pg_server, database) == ["open", "line\nbreak", 'say "hi"', "back\\slash", "o'clock"]

    use(4)
    script = await generate_and_apply(config, "rename line break", enum_renames={"mood": {"line\nbreak": "line\nfeed"}})
    assert "op.execute('ALTER TYPE \"user\".mood RENAME VALUE \\'line\\nbreak\\' TO \\'line\\nfeed\\'')" in script
    assert await moods(pg_server, database) == ["open", "line\nfeed", 'say "hi"', "back\\slash", "o'clock"]
    rows = await server_fetch(pg_server, "SELECT id, mood::text FROM remark ORDER BY id", database=database)
    assert [tuple(row) for row in rows] == [(1, "line\nfeed"), (2, "open")], "rows follow the rename"

    await migrations.rollback(steps=2, config=config)
    assert await moods(pg_server, database) == ["open", "line\nbreak", "it's", 'say "hi"', "back\\slash", "o'clock"]
    await migrations.rollback("base", config=config)
    assert await moods(pg_server, database) == []


@pytest.mark.parametrize(
    ("schema", "old", "new"),
    [("public", "line\nbreak", "plain"), ("public", "tab\there", "back\\slash"), ("user", "it's", 'say "hi"')],
    ids=["line_break", "tab_and_backslash", "quotes_in_schema_user"],
)
def test_a_rename_is_written_as_python_that_runs_the_right_sql(schema: str, old: str, new: str) -> None:
    """Whatever the value, the script's line is valid Python and hands PostgreSQL the statement as meant."""
    from alembic.autogenerate import render_python_code
    from alembic.operations.ops import UpgradeOps

    from mountaineer_db.migrations.enums import RenameEnumValueOp

    op = RenameEnumValueOp(schema, "mood", old, new)
    code = "\n".join(line.strip() for line in render_python_code(UpgradeOps(ops=[op])).splitlines())
    executed: list[str] = []

    class Op:
        def execute(self, sql: str) -> None:
            executed.append(sql)

    exec(compile(code, "<migration>", "exec"), {"op": Op()})  # the script line as the migration runs it
    assert executed == [op.sql]
    quoted = '"user"' if schema == "user" else schema
    assert op.sql == f"ALTER TYPE {quoted}.mood RENAME VALUE '{old.replace(chr(39), chr(39) * 2)}' TO " + (
        f"'{new.replace(chr(39), chr(39) * 2)}'"
    )
