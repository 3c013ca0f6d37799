"""Reviewing a deploy before applying it: `migrate sql` prints what `apply` would run (from
the database's revision, or a FROM:TO range with no database), and `migrate lint` runs
squawk on it, failing on unsafe operations with each finding's revision and line."""

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mountaineer_db import migrations
from mountaineer_db.servers.cluster import free_port
from mountaineer_db.settings.config import DatabaseConfig
from tests.sample_apps import cli_env, fresh_database, run_cli, sample_app_on_path, write_migrations_folder

REVISIONS = {
    "0001_create.py": '''
        """create items"""
        from alembic import op

        revision = "cccc00000001"
        down_revision = None


        def upgrade():
            op.execute("CREATE TABLE items (id bigint PRIMARY KEY, title text)")


        def downgrade():
            op.execute("DROP TABLE items")
    ''',
    "0002_required.py": '''
        """add required column and index"""
        from alembic import op

        revision = "cccc00000002"
        down_revision = "cccc00000001"


        def upgrade():
            op.execute("ALTER TABLE items ADD COLUMN owner text NOT NULL")
            with op.get_context().autocommit_block():
                op.create_index("ix_items_title", "items", ["title"], postgresql_concurrently=True)


        def downgrade():
            op.execute("ALTER TABLE items DROP COLUMN owner")
    ''',
}

REQUIRED_FIELD = (
    "adding-required-field: Adding a new column that is `NOT NULL` and has no default value to an existing table "
    "effectively makes it required. Make the field nullable or add a non-VOLATILE DEFAULT."
)


@pytest.fixture
def database(pg_server: Any) -> Iterator[str]:
    with fresh_database(pg_server, prefix="mdb_review") as name:
        yield name


@pytest.fixture
def app_dir(tmp_path: Path) -> Iterator[Path]:
    with sample_app_on_path(tmp_path) as package:
        versions = write_migrations_folder(package) / "versions"
        for name, source in REVISIONS.items():
            (versions / name).write_text(textwrap.dedent(source))
        yield package


def app_config(url: Any) -> DatabaseConfig:
    from migrapp.config import TablesConfig  # type: ignore[import-not-found]

    config: DatabaseConfig = TablesConfig(SQLALCHEMY_DATABASE_URI=url)
    return config


async def test_sql_starts_at_the_databases_revision(pg_server: Any, database: str, app_dir: Path) -> None:
    config = app_config(pg_server.url(database))
    await migrations.apply("cccc00000001", config=config)
    text = await migrations.sql(config=config)
    assert text.splitlines() == [
        "BEGIN;",
        "SET LOCAL lock_timeout = '5000ms';",
        "",
        "-- Running upgrade cccc00000001 -> cccc00000002",
        "",
        "ALTER TABLE items ADD COLUMN owner text NOT NULL;",
        "",
        "COMMIT;",
        "",
        "CREATE INDEX CONCURRENTLY ix_items_title ON items (title);",
        "",
        "BEGIN;",
        "SET LOCAL lock_timeout = '5000ms';",
        "",
        "UPDATE alembic_version SET version_num='cccc00000002' WHERE alembic_version.version_num = 'cccc00000001';",
        "",
        "COMMIT;",
    ]
    await migrations.apply(config=config)
    assert await migrations.sql(config=config) == ""


async def test_sql_of_a_range_needs_no_database(app_dir: Path) -> None:
    config = app_config(f"postgresql://app:secret-pw@127.0.0.1:{free_port()}/app")
    text = await migrations.sql("base:head", config=config)
    assert "CREATE TABLE alembic_version" in text
    assert "-- Running upgrade  -> cccc00000001" in text and "-- Running upgrade cccc00000001 -> cccc00000002" in text
    with pytest.raises(migrations.MigrationError) as error:
        await migrations.sql(config=config)
    message = str(error.value)
    assert message.endswith("To render the SQL without a database, give a range: FROM:TO (e.g. base:head).")
    assert "secret-pw" not in message


async def test_lint_reports_unsafe_operations_with_their_revision(app_dir: Path) -> None:
    config = app_config(f"postgresql://app@127.0.0.1:{free_port()}/app")
    findings = await migrations.lint("cccc00000001:head", config=config)
    assert [str(finding) for finding in findings] == [f"revision cccc00000002, line 6: {REQUIRED_FIELD}"]
    assert await migrations.lint("base:cccc00000001", config=config) == []
    # Rules left out by default can be asked for: Alembic's own VARCHAR(32) version table, before any revision.
    text_field = await migrations.lint("base:cccc00000001", config=config, include=["prefer-text-field"])
    assert [(finding.rule, finding.revision) for finding in text_field] == [("prefer-text-field", None)]


def test_lint_through_the_cli_exits_1_listing_the_findings(app_dir: Path, pg_server: Any, database: str) -> None:
    env = cli_env(pg_server.url(database))
    config = ("--config", "migrapp.config:TablesConfig")
    assert run_cli(*config, "migrate", "apply", "cccc00000001", cwd=app_dir.parent, env=env).returncode == 0
    result = run_cli(*config, "migrate", "lint", cwd=app_dir.parent, env=env)
    assert result.returncode == 1, result.stderr
    assert result.stdout == f"revision cccc00000002, line 6: {REQUIRED_FIELD}\n"
    assert result.stderr == (
        "Error: squawk found 1 unsafe operation(s); see `mountaineer-db migrate sql` for the lines, and "
        "https://squawkhq.com/docs/rules for safer ways.\n"
    )
    result = run_cli(*config, "migrate", "sql", cwd=app_dir.parent, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[5] == "ALTER TABLE items ADD COLUMN owner text NOT NULL;"
    result = run_cli(*config, "migrate", "lint", "base:cccc00000001", cwd=app_dir.parent, env=env)
    assert (result.returncode, result.stdout) == (0, "squawk found no unsafe operation.\n")
