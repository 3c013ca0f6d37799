"""Migrating while serving: `apply` adds a column and builds an index concurrently while a
Mountaineer app (uvicorn, a separate process, real HTTP) is under load, with both pool types.
The app runs the code deployed before the migration (it knows only `id` and `title`).

The app talks to PostgreSQL directly, through PgBouncer 1.18 (unnamed statements), and through
PgBouncer 1.24 with DATABASE_POOLER_PREPARED_STATEMENTS (named statements, which the added
column makes stale on PgBouncer's server connections: `SELECT *` changes its result type)."""

import asyncio
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mountaineer_db import migrations
from mountaineer_db.servers.cluster import free_port
from mountaineer_db.settings.config import DatabaseConfig
from tests.conftest import require_old_pgbouncer, require_pgbouncer_with_prepared_statements
from tests.sample_apps import cli_env, fresh_database, sample_app_on_path, server_fetch, write_migrations_folder
from tests.serving import Load, steady_load, uvicorn, wait_until_serving

REVISIONS = {
    "0001_create.py": '''
        """create serve_item"""
        from alembic import op

        revision = "dddd00000001"
        down_revision = None


        def upgrade():
            op.execute("CREATE TABLE serve_item (id serial PRIMARY KEY, title varchar NOT NULL)")
            op.execute("INSERT INTO serve_item (title) SELECT 'seed ' || g FROM generate_series(1, 2000) g")


        def downgrade():
            op.execute("DROP TABLE serve_item")
    ''',
    "0002_note.py": '''
        """add note, index title"""
        import sqlalchemy as sa
        from alembic import op

        revision = "dddd00000002"
        down_revision = "dddd00000001"


        def upgrade():
            op.add_column("serve_item", sa.Column("note", sa.Text(), nullable=True))
            with op.get_context().autocommit_block():
                op.create_index("ix_serve_item_title", "serve_item", ["title"], postgresql_concurrently=True)


        def downgrade():
            with op.get_context().autocommit_block():
                op.drop_index("ix_serve_item_title", table_name="serve_item", postgresql_concurrently=True)
            op.drop_column("serve_item", "note")
    ''',
}


LOAD_BEFORE_AND_AFTER = 20  # requests served before the migration starts, and after it ends


async def _served(load: Load, count: int, stalled_after: float = 60.0) -> None:
    """Wait until `load` has `count` outcomes; fail if none arrives for `stalled_after` seconds."""
    seen, since = len(load.outcomes), time.monotonic()
    while len(load.outcomes) < count:
        if len(load.outcomes) != seen:
            seen, since = len(load.outcomes), time.monotonic()
        assert time.monotonic() - since < stalled_after, f"the load stalled at {seen} requests"
        await asyncio.sleep(0.02)


@pytest.fixture
def database(pg_server: Any) -> Iterator[str]:
    with fresh_database(pg_server, prefix="mdb_serve") as name:
        yield name


def _app_route(route: str, pool: str, pg_server: Any, database: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The app's environment for `route`: directly, or through the PgBouncer of that version."""
    if route == "direct":
        return cli_env(pg_server.url(database), DATABASE_POOL_TYPE=pool)
    if route == "pgbouncer-1.18":
        require_old_pgbouncer()
        bouncer = request.getfixturevalue("pgbouncer")
        extra = {"DATABASE_STATEMENT_CACHE_SIZE": "0"} if pool == "FIXED_PROCESS" else {}
    else:
        require_pgbouncer_with_prepared_statements()
        bouncer = request.getfixturevalue("pgbouncer_124")
        extra = {"DATABASE_POOLER_PREPARED_STATEMENTS": "true"}
    url = bouncer.url(database, user=pg_server.user, password=pg_server.password)
    return cli_env(url, DATABASE_POOL_TYPE=pool, **extra)


@pytest.mark.slow
@pytest.mark.parametrize("route", ["direct", "pgbouncer-1.18", "pgbouncer-1.24"])
@pytest.mark.parametrize("pool", ["NULL", "FIXED_PROCESS"])
async def test_apply_while_the_app_serves(
    pool: str, route: str, pg_server: Any, database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with sample_app_on_path(tmp_path) as package:
        versions = write_migrations_folder(package) / "versions"
        for name, source in REVISIONS.items():
            (versions / name).write_text(textwrap.dedent(source))
        from migrapp.config import TablesConfig  # type: ignore[import-not-found]

        config: DatabaseConfig = TablesConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(database))
        await migrations.apply("dddd00000001", config=config)

        port = free_port()
        env = _app_route(route, pool, pg_server, database, request)
        load = Load()
        with uvicorn(tmp_path, env, port) as log:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                await wait_until_serving(client, log)
                async with steady_load(client, load):
                    # Served requests, counted rather than waited for: on a loaded machine 1.5 s
                    # of load was sometimes fewer than 20 requests.
                    await _served(load, LOAD_BEFORE_AND_AFTER + 1)
                    before = len(load.outcomes)
                    applied = await migrations.apply(config=config)
                    during = len(load.outcomes) - before
                    await _served(load, before + during + LOAD_BEFORE_AND_AFTER + 1)
                    after = len(load.outcomes) - before - during
            server_log = log.read_text()

    assert [revision.id for revision in applied] == ["dddd00000002"]
    assert before > LOAD_BEFORE_AND_AFTER and after > LOAD_BEFORE_AND_AFTER, (before, during, after)
    failures = load.failures()
    print(
        f"{pool} {route}: {len(load.outcomes)} requests ({before} before, {during} during, {after} after apply), "
        f"{len(failures)} failed: {[(path, status) for path, status, _ in failures]}"
    )
    if len(failures) > 1 or any(status != 503 for _, status, _ in failures):
        # In full, for the report (an assertion message is cut short): what each failure was, the server's log.
        print("failures:", *failures, "server log:", server_log[-8000:], sep="\n")
    assert len(failures) <= 1 and all(status == 503 for _, status, _ in failures), (failures, server_log[-3000:])
    # `SELECT *` gained a column: with named statements (cached in the app, or prepared by PgBouncer
    # 1.24 on its server connections) that statement went stale and was recovered; unnamed never.
    stale = server_log.count("met a database schema change")
    named = route == "pgbouncer-1.24" or (route == "direct" and pool == "FIXED_PROCESS")
    assert (stale >= 1) if named else (stale == 0), (stale, server_log[-3000:])
    columns = await server_fetch(
        pg_server,
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'serve_item'",
        database=database,
    )
    assert {row[0] for row in columns} == {"id", "title", "note"}
    valid = await server_fetch(
        pg_server,
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = 'ix_serve_item_title'",
        database=database,
    )
    assert valid == [(True,)]
