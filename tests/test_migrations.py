"""Migrations against a real PostgreSQL: the full CLI cycle on a sample app, concurrent
`apply` from 4 processes, and the async functions (errors, naming convention, passwords
with `%`, the host app's logging left alone)."""

import asyncio
import logging
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Column, ForeignKey, Index, Integer, MetaData, String, Table, UniqueConstraint

from mountaineer_db import ResourceAlreadyExistsError, ResourceNotFoundError, migrations
from mountaineer_db.servers.cluster import free_port
from mountaineer_db.settings.config import DatabaseConfig
from tests.sample_apps import (
    PYTHON,
    cli_env,
    copy_sample_app,
    fresh_database,
    run_cli,
    sample_app_on_path,
    server_execute,
    server_fetch,
    superuser_connect,
    write_migrations_folder,
)


@pytest.fixture
def database(pg_server: Any) -> Iterator[str]:
    with fresh_database(pg_server) as name:
        yield name


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    """The sample package, importable in this process (the config used is TablesConfig)."""
    with sample_app_on_path(tmp_path) as package:
        yield package


def tables_config(pg_server: Any, database: str, **overrides: Any) -> DatabaseConfig:
    from migrapp.config import TablesConfig  # type: ignore[import-not-found]

    values: dict[str, Any] = {"SQLALCHEMY_DATABASE_URI": pg_server.url(database), **overrides}
    config: DatabaseConfig = TablesConfig(**values)
    return config


async def constraint_names(server: Any, database: str) -> set[str]:
    rows = await server_fetch(
        server,
        "SELECT conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace "
        "WHERE n.nspname = 'public' UNION SELECT indexname FROM pg_indexes WHERE schemaname = 'public'",
        database=database,
    )
    return {row[0] for row in rows}


async def columns(server: Any, database: str, table: str) -> set[str]:
    rows = await server_fetch(
        server, "SELECT column_name FROM information_schema.columns WHERE table_name = $1", table, database=database
    )
    return {row[0] for row in rows}


@pytest.mark.slow
def test_full_cycle_through_the_cli(pg_server: Any, database: str, tmp_path: Path) -> None:
    """init → generate → apply → change a model → generate → apply → rollback → apply → check
    clean; then an unapplied model change makes `check` fail with a readable diff."""
    package = copy_sample_app(tmp_path)
    env = cli_env(pg_server.url(database))
    config = ("--config", "migrapp.config:AppConfig")

    def cli(*args: str, version: int = 1) -> "subprocess.CompletedProcess[str]":
        return run_cli(*config, *args, cwd=tmp_path, env={**env, "MIGRAPP_MODEL_VERSION": str(version)})

    result = cli("migrate", "init")
    assert result.returncode == 0, result.stderr
    assert (package / "migrations" / "env.py").is_file()

    result = cli("migrate", "generate", "-m", "create todo")
    assert result.returncode == 0, result.stderr
    first = (package / "migrations" / "versions").glob("*_create_todo.py").__next__().read_text()
    assert "import sqlmodel" in first and "sqlmodel.sql.sqltypes.AutoString()" in first
    assert "op.f('pk_todo')" in first and "op.f('fk_todo_owner_id_owner')" in first

    result = cli("migrate", "apply")
    assert result.returncode == 0, result.stderr
    assert re.search(r"Applied \w+ \(head\)\s+create todo", result.stdout)
    names = asyncio.run(constraint_names(pg_server, database))
    assert {"pk_todo", "pk_owner", "fk_todo_owner_id_owner", "uq_owner_email", "ix_todo_title"} <= names

    result = cli("migrate", "generate", "-m", "add priority", version=2)
    assert result.returncode == 0, result.stderr
    second_id = re.search(r"\((\w+)\)", result.stdout).group(1)  # type: ignore[union-attr]
    assert cli("migrate", "apply", version=2).returncode == 0
    assert "priority" in asyncio.run(columns(pg_server, database, "todo"))

    result = cli("migrate", "rollback", version=2)
    assert result.returncode == 0, result.stderr
    assert f"Rolled back {second_id}" in result.stdout
    after_rollback = asyncio.run(columns(pg_server, database, "todo"))
    assert "priority" not in after_rollback
    assert "title" in after_rollback, "one step by default: the first revision's table stays"

    result = cli("migrate", "apply", version=2)
    assert result.returncode == 0, result.stderr
    assert f"Applied {second_id}" in result.stdout
    result = cli("migrate", "current", version=2)
    assert result.stdout.startswith(f"{second_id} (head)  add priority")

    result = cli("migrate", "check", version=2)
    assert result.returncode == 0, result.stderr
    assert "matches the models" in result.stdout

    result = cli("migrate", "check", version=3)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: The database does not match the models (2 difference(s))")
    assert "  add table label\n" in result.stderr
    assert "  add column todo.done (BOOLEAN)\n" in result.stderr


LOGGED_MIGRATIONS = {
    "0001_first.py": '''
        """first"""
        from alembic import op

        revision = "aaaa00000001"
        down_revision = None


        def upgrade():
            op.execute("CREATE TABLE apply_log (revision text NOT NULL, pid int NOT NULL DEFAULT pg_backend_pid())")
            op.execute("SELECT pg_sleep(0.3)")  # widen the window in which a second process could slip in
            op.execute("INSERT INTO apply_log (revision) VALUES ('aaaa00000001')")


        def downgrade():
            op.execute("DROP TABLE apply_log")
    ''',
    "0002_second.py": '''
        """second"""
        from alembic import op

        revision = "aaaa00000002"
        down_revision = "aaaa00000001"


        def upgrade():
            op.execute("INSERT INTO apply_log (revision) VALUES ('aaaa00000002')")
            op.execute("CREATE TABLE second_table (id int)")


        def downgrade():
            op.execute("DROP TABLE second_table")
    ''',
}


@pytest.mark.slow
async def test_four_processes_applying_at_once_apply_each_revision_exactly_once(
    pg_server: Any, database: str, tmp_path: Path
) -> None:
    """Four deploy processes start `apply` together; the migration lock makes them take turns.

    To make "together" certain, the test holds the version table locked until all four are
    waiting on it (each reads the revision there first, for the fast path at head), then lets
    them go: all four find revisions to apply, one applies them, three wait and find them done.
    """
    package = copy_sample_app(tmp_path)
    write_migrations_folder(package)
    for name, source in LOGGED_MIGRATIONS.items():
        (package / "migrations" / "versions" / name).write_text(textwrap.dedent(source))
    env = cli_env(pg_server.url(database), MIGRATIONS_LOCK_TIMEOUT="60")
    argv = [PYTHON, "-m", "mountaineer_db.cli", "--config", "migrapp.config:AppConfig", "migrate", "apply"]
    gate = await superuser_connect(pg_server, database)
    observer = await superuser_connect(pg_server, database)  # outside the gate's transaction and its stats snapshot
    try:
        await gate.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        await gate.execute("BEGIN; LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")
        processes = [
            await asyncio.create_subprocess_exec(
                *argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            for _ in range(4)
        ]
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'"
        async with asyncio.timeout(60):
            while await observer.fetchval(waiting, database) < 4:
                await asyncio.sleep(0.05)
        await gate.execute("COMMIT")
        outputs = [await process.communicate() for process in processes]
    finally:
        await gate.close()
        await observer.close()
    errors = [err.decode() for _, err in outputs]
    assert [process.returncode for process in processes] == [0, 0, 0, 0], errors
    query = "SELECT revision, count(*) FROM apply_log GROUP BY revision"
    rows = await server_fetch(pg_server, query, database=database)
    assert {row[0]: row[1] for row in rows} == {"aaaa00000001": 1, "aaaa00000002": 1}
    texts = [out.decode() for out, _ in outputs]
    appliers = [out for out in texts if "Applied aaaa00000001" in out]
    assert len(appliers) == 1 and "Applied aaaa00000002" in appliers[0]
    assert sum("Nothing to apply" in out for out in texts) == 3
    version = await server_fetch(pg_server, "SELECT version_num FROM alembic_version", database=database)
    assert [row[0] for row in version] == ["aaaa00000002"]


async def test_functions_generate_apply_current_history_rollback(
    pg_server: Any, database: str, app_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tables_config(pg_server, database)
    assert await migrations.init(config=config) == app_dir / "migrations"
    with pytest.raises(ResourceAlreadyExistsError, match=r"migrations already exists"):
        await migrations.init(config=config)

    first = await migrations.generate("create notes", config=config)
    assert first is not None and first.path.parent == app_dir / "migrations" / "versions"
    with pytest.raises(
        migrations.MigrationError, match=r"not at the latest revision; run `mountaineer-db migrate apply"
    ):
        await migrations.generate("too early", config=config)
    assert [r.id for r in await migrations.apply(config=config)] == [first.id]
    assert await migrations.apply(config=config) == []
    assert await migrations.generate("nothing changed", config=config) is None
    names = await constraint_names(pg_server, database)
    # The tables were defined before the convention was applied: names are still deterministic.
    assert {
        "pk_author",
        "pk_note",
        "uq_author_name",
        "uq_note_slug_author_id",
        "fk_note_author_id_author",
        "ix_note_author_id",
        "ck_note_stars_positive",
    } <= names

    monkeypatch.setenv("MIGRAPP_TABLES_VERSION", "2")
    del sys.modules["migrapp.tables"]
    second = await migrations.generate("add body", config=config)
    assert second is not None and second.down_revisions == (first.id,)
    assert [r.id for r in await migrations.history(config=config)] == [second.id, first.id]
    assert [r.id for r in await migrations.apply(config=config)] == [second.id]
    assert [r.id for r in await migrations.current(config=config)] == [second.id]
    await migrations.check(config=config)

    assert [r.id for r in await migrations.rollback(steps=2, config=config)] == [second.id, first.id]
    assert await migrations.current(config=config) == []
    with pytest.raises(migrations.MigrationError, match="Nothing to roll back"):
        await migrations.rollback(config=config)
    with pytest.raises(migrations.MigrationCheckError) as behind:
        await migrations.check(config=config)
    assert [r.id for r in behind.value.pending] == [first.id, second.id]
    assert [r.id for r in await migrations.apply(first.id, config=config)] == [first.id]


async def test_unknown_revision_is_resource_not_found(pg_server: Any, database: str, app_dir: Path) -> None:
    config = tables_config(pg_server, database)
    await migrations.init(config=config)
    with pytest.raises(ResourceNotFoundError, match=r"^Can't locate revision identified by 'nosuch'\. Run "):
        await migrations.apply("nosuch", config=config)
    with pytest.raises(ResourceNotFoundError, match="nosuch"):
        await migrations.rollback("nosuch", config=config)


async def test_missing_migrations_folder_says_to_run_init(pg_server: Any, database: str, app_dir: Path) -> None:
    config = tables_config(pg_server, database)
    with pytest.raises(ResourceNotFoundError) as error:
        await migrations.apply(config=config)
    assert str(error.value) == (
        f"No migrations folder at {app_dir / 'migrations'}; create it with `mountaineer-db migrate init`."
    )


async def test_password_with_percent_signs_reaches_alembic_intact(pg_server: Any, database: str, app_dir: Path) -> None:
    password = "p%(here)s%%40 x@:/#"
    await server_execute(
        pg_server,
        "DROP ROLE IF EXISTS mdb_percent_user",
        f"CREATE ROLE mdb_percent_user LOGIN PASSWORD '{password}'",
        f'ALTER DATABASE "{database}" OWNER TO mdb_percent_user',
    )
    await server_execute(pg_server, "ALTER SCHEMA public OWNER TO mdb_percent_user", database=database)
    try:
        url = pg_server.url(database, user="mdb_percent_user", password=password)
        config = tables_config(pg_server, database, SQLALCHEMY_DATABASE_URI=url)
        await migrations.init(config=config)
        await migrations.generate("create notes", config=config)
        applied = await migrations.apply(config=config)
        assert len(applied) == 1
        owners = await server_fetch(
            pg_server, "SELECT tableowner FROM pg_tables WHERE tablename = 'note'", database=database
        )
        assert [row[0] for row in owners] == ["mdb_percent_user"]
    finally:
        await server_execute(pg_server, f'ALTER DATABASE "{database}" OWNER TO {pg_server.user}')
        await server_execute(pg_server, f"REASSIGN OWNED BY mdb_percent_user TO {pg_server.user}", database=database)
        await server_execute(pg_server, "DROP ROLE mdb_percent_user")


async def test_running_migrations_leaves_the_host_apps_logging_alone(
    pg_server: Any, database: str, app_dir: Path
) -> None:
    root = logging.getLogger()
    before = (root.level, list(root.handlers), logging.getLogger("alembic").level, logging.root.manager.disable)
    config = tables_config(pg_server, database)
    await migrations.init(config=config)
    await migrations.generate("create notes", config=config)
    await migrations.apply(config=config)
    after = (root.level, list(root.handlers), logging.getLogger("alembic").level, logging.root.manager.disable)
    assert after == before
    assert "fileConfig" not in (app_dir / "migrations" / "env.py").read_text()


def test_naming_convention_names_constraints_of_tables_defined_before_it() -> None:
    metadata = MetaData()
    parent = Table("parent", metadata, Column("id", Integer, primary_key=True))
    child = Table(
        "child",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("parent_id", ForeignKey("parent.id")),
        Column("code", String, unique=True),
        Column("kept", String),
        UniqueConstraint("kept", name="my_own_name"),
        Index(None, "code"),
    )
    assert child.primary_key.name is None
    named = migrations.apply_naming_convention(metadata)
    assert named.naming_convention == migrations.naming_convention
    named_child = named.tables["child"]
    names = {constraint.name for constraint in (*named_child.constraints, *named_child.indexes)}
    assert names == {"pk_child", "fk_child_parent_id_parent", "uq_child_code", "my_own_name", "ix_child_code"}
    assert named.tables["parent"].primary_key.name == "pk_parent"
    assert child.primary_key.name is None and parent.primary_key.name is None, "the app's metadata is left alone"


def test_naming_convention_keeps_an_apps_own_convention() -> None:
    own = {"pk": "primary_%(table_name)s"}
    metadata = MetaData(naming_convention=own)
    table = Table("thing", metadata, Column("id", Integer, primary_key=True))
    assert migrations.apply_naming_convention(metadata) is metadata
    assert metadata.naming_convention == own
    assert table.primary_key.name == "primary_thing"


async def test_migrations_use_the_direct_migrations_url(pg_server: Any, database: str, app_dir: Path) -> None:
    """With MIGRATIONS_DATABASE_URI set, migrations never touch the app's URL (here: nothing listens)."""
    config = tables_config(
        pg_server,
        database,
        SQLALCHEMY_DATABASE_URI=f"postgresql://app:pw@127.0.0.1:{free_port()}/{database}",
        MIGRATIONS_DATABASE_URI=pg_server.url(database),
    )
    await migrations.init(config=config)
    await migrations.generate("create notes", config=config)
    assert len(await migrations.apply(config=config)) == 1
    await migrations.check(config=config)


async def test_the_development_database_logs_a_failing_revision_and_goes_on(
    pg_server: Any, database: str, app_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A revision that fails, met by the development server's start (it restarts when `migrate
    generate` writes one): rolled back, one error line with the fix, and no exception that would
    stop the server. The revisions before it stay applied."""
    from mountaineer_db.migrations.admin import prepare_development_database

    config = tables_config(pg_server, database)
    await migrations.init(config=config)
    first = await migrations.generate("create notes", config=config)
    assert first is not None
    (app_dir / "migrations" / "versions" / "0002_breaks.py").write_text(
        textwrap.dedent(
            f'''
            """A revision whose upgrade fails."""
            from alembic import op

            revision = "0002breaks"
            down_revision = "{first.id}"
            branch_labels = None
            depends_on = None


            def upgrade() -> None:
                op.execute("CREATE TABLE half_done (id int)")
                op.execute("SELECT 1 / 0")


            def downgrade() -> None:
                pass
            '''
        )
    )
    caplog.set_level(logging.INFO, logger="mountaineer_db")
    await prepare_development_database(config, create_database=False, apply_migrations=True)
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1, errors
    assert errors[0].startswith("Development database: Revision 0002breaks (A revision whose upgrade fails.) failed")
    assert "division by zero" in errors[0]
    assert "The development server goes on with the database as it was" in errors[0]
    assert [revision.id for revision in await migrations.current(config=config)] == [first.id]
    tables = await server_fetch(
        pg_server, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'", database=database
    )
    assert "half_done" not in {row[0] for row in tables}
    with pytest.raises(migrations.MigrationError, match="division by zero"):
        await migrations.apply(config=config)  # elsewhere the same revision still fails the command
