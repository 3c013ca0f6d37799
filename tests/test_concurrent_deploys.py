"""Deploys in the shape docs/deployment.md recommends: N replicas start at once and each runs
`mountaineer-db migrate apply` (the console script, real processes), while the app already
deployed serves requests through PgBouncer in transaction mode with both pool types.

Each deploy is a revision chain with a table (and an enum type), a data step that takes
seconds, two indexes built CONCURRENTLY and an enum value added. One setup serves two
deploys in a row: 3 processes, then 6 with the next chain. Every process exits 0, each
revision runs exactly once, every index is valid, nothing is idle in transaction, and no
request fails beyond the documented stale-statement rule (a 503, see docs: Transactions); a
replica started afterwards finds the database at head and exits at once. The deploy times
(p50/max over processes, from process start to exit) are printed:
`pytest tests/test_concurrent_deploys.py -s`."""

import asyncio
import statistics
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mountaineer_db import migrations
from mountaineer_db.servers.cluster import free_port
from mountaineer_db.servers.pgbouncer import PgBouncer
from mountaineer_db.settings.config import DatabaseConfig
from tests.sample_apps import (
    PYTHON,
    cli_env,
    fresh_database,
    sample_app_on_path,
    server_fetch,
    url_string,
    write_migrations_folder,
)
from tests.serving import Load, steady_load, uvicorn, wait_until_serving

pytestmark = pytest.mark.pgbouncer

BASE = '''
    """serve_item and the deploy log"""
    from alembic import op

    revision = "d000000000"
    down_revision = None


    def upgrade():
        op.execute("CREATE TABLE serve_item (id serial PRIMARY KEY, title varchar NOT NULL)")
        op.execute("INSERT INTO serve_item (title) SELECT 'seed ' || g FROM generate_series(1, 2000) g")
        op.execute("CREATE TABLE deploy_log (revision text NOT NULL, pid int NOT NULL DEFAULT pg_backend_pid())")


    def downgrade():
        op.execute("DROP TABLE serve_item, deploy_log")
'''
# {d}: the deploy's letter; {down}: the revision it starts from; {expression}: what the item index covers.
CHAIN = {
    "1_table": '''
        """{d}: a table with an enum column"""
        from alembic import op

        revision = "d{d}00000001"
        down_revision = "{down}"


        def upgrade():
            op.execute("CREATE TYPE kind_{d} AS ENUM ('new', 'done')")
            op.execute(
                "CREATE TABLE tag_{d} (id serial PRIMARY KEY, item_id int NOT NULL, "
                "kind kind_{d} NOT NULL DEFAULT 'new')"
            )
            op.execute("INSERT INTO deploy_log (revision) VALUES ('d{d}00000001')")


        def downgrade():
            op.execute("DROP TABLE tag_{d}")
            op.execute("DROP TYPE kind_{d}")
    ''',
    "2_data": '''
        """{d}: a data step that takes seconds"""
        from alembic import op

        revision = "d{d}00000002"
        down_revision = "d{d}00000001"


        def upgrade():
            op.execute("SELECT pg_sleep(2)")
            op.execute("INSERT INTO tag_{d} (item_id) SELECT id FROM serve_item")
            op.execute("INSERT INTO deploy_log (revision) VALUES ('d{d}00000002')")


        def downgrade():
            op.execute("DELETE FROM tag_{d}")
    ''',
    "3_index": '''
        """{d}: index tags concurrently"""
        from alembic import op

        revision = "d{d}00000003"
        down_revision = "d{d}00000002"


        def upgrade():
            with op.get_context().autocommit_block():
                op.create_index("ix_tag_{d}_item_id", "tag_{d}", ["item_id"], postgresql_concurrently=True)
            op.execute("INSERT INTO deploy_log (revision) VALUES ('d{d}00000003')")


        def downgrade():
            with op.get_context().autocommit_block():
                op.drop_index("ix_tag_{d}_item_id", table_name="tag_{d}", postgresql_concurrently=True)
    ''',
    "4_index_and_value": '''
        """{d}: index the served table concurrently, add an enum value"""
        from alembic import op

        revision = "d{d}00000004"
        down_revision = "d{d}00000003"


        def upgrade():
            with op.get_context().autocommit_block():
                op.execute("CREATE INDEX CONCURRENTLY ix_serve_item_{d} ON serve_item ({expression})")
                op.execute("ALTER TYPE kind_{d} ADD VALUE 'archived'")
            op.execute("INSERT INTO deploy_log (revision) VALUES ('d{d}00000004')")


        def downgrade():
            with op.get_context().autocommit_block():
                op.execute("DROP INDEX CONCURRENTLY ix_serve_item_{d}")
    ''',
}
MIGRATE = [str(Path(PYTHON).parent / "mountaineer-db"), "--config", "migrapp.config:TablesConfig", "migrate", "apply"]
SCHEMA_CHANGED = "The database schema changed while this request ran. Try again."


@pytest.fixture
def database(pg_server: Any) -> Iterator[str]:
    with fresh_database(pg_server, prefix="mdb_deploy") as name:
        yield name


def write_chain(versions: Path, letter: str, down: str, expression: str) -> list[str]:
    for name, source in CHAIN.items():
        text = textwrap.dedent(source).format(d=letter, down=down, expression=expression)
        (versions / f"{letter}{name}.py").write_text(text)
    return [f"d{letter}0000000{number}" for number in range(1, 5)]


async def deploy(root: Path, env: dict[str, str], processes: int) -> list[tuple[int, str, str, float]]:
    """`processes` replicas run `migrate apply` at once; (exit code, stdout, stderr, seconds) each."""

    async def one() -> tuple[int, str, str, float]:
        started = time.monotonic()
        process = await asyncio.create_subprocess_exec(
            *MIGRATE, cwd=root, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=180)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode(), time.monotonic() - started

    return list(await asyncio.gather(*(one() for _ in range(processes))))


async def check_deploy(
    pg_server: Any, database: str, results: list[tuple[int, str, str, float]], ids: list[str]
) -> None:
    """Every process exited 0; one applied the chain, each revision once; the others found it done."""
    assert [code for code, *_ in results] == [0] * len(results), [err[-2000:] for _, _, err, _ in results]
    applied = [out for _, out, _, _ in results if out.startswith("Applied")]
    assert len(applied) == 1, [out for _, out, _, _ in results]
    assert [line.split()[1] for line in applied[0].splitlines()] == ids
    idle = [out for _, out, _, _ in results if out == "Nothing to apply; the database is up to date.\n"]
    assert len(idle) == len(results) - 1
    log = await server_fetch(pg_server, "SELECT revision, count(*) FROM deploy_log GROUP BY 1", database=database)
    assert {row[0]: row[1] for row in log if row[0] in ids} == dict.fromkeys(ids, 1)
    invalid = await server_fetch(pg_server, "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid")
    invalid += await server_fetch(
        pg_server, "SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid", database=database
    )
    assert invalid == []


def timings(results: list[tuple[int, str, str, float]]) -> str:
    seconds = [elapsed for *_, elapsed in results]
    return f"p50 {statistics.median(seconds):.1f}s, max {max(seconds):.1f}s"


@pytest.mark.slow
async def test_three_then_six_replicas_apply_at_once_while_the_app_serves_through_pgbouncer(
    pg_server: Any, database: str, pgbouncer: PgBouncer, tmp_path: Path
) -> None:
    with sample_app_on_path(tmp_path) as package:
        versions = write_migrations_folder(package) / "versions"
        (versions / "0_base.py").write_text(textwrap.dedent(BASE))
        first = write_chain(versions, "a", "d000000000", "title")
        from migrapp.config import TablesConfig  # type: ignore[import-not-found]

        config: DatabaseConfig = TablesConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(database))
        await migrations.apply("d000000000", config=config)

        through_bouncer = url_string(pgbouncer.url(database, user=pg_server.user, password=pg_server.password))
        direct = url_string(pg_server.url(database))
        replica_env = cli_env(through_bouncer, MIGRATIONS_DATABASE_URI=direct, DATABASE_APPLICATION_NAME="mdb-deploy")
        pools = {
            "NULL": cli_env(through_bouncer, DATABASE_POOL_TYPE="NULL"),
            "FIXED_PROCESS": cli_env(
                through_bouncer, DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_STATEMENT_CACHE_SIZE="0"
            ),
        }
        ports = {pool: free_port() for pool in pools}
        loads = {pool: Load() for pool in pools}
        counts: list[dict[str, int]] = []
        with (
            uvicorn(tmp_path, pools["NULL"], ports["NULL"], name="null") as null_log,
            uvicorn(tmp_path, pools["FIXED_PROCESS"], ports["FIXED_PROCESS"], name="fixed") as fixed_log,
        ):
            logs = {"NULL": null_log, "FIXED_PROCESS": fixed_log}
            clients = {
                pool: httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) for pool, port in ports.items()
            }
            try:
                for pool, client in clients.items():
                    await wait_until_serving(client, logs[pool])
                async with (
                    steady_load(clients["NULL"], loads["NULL"], concurrency=3, pause=0.05),
                    steady_load(clients["FIXED_PROCESS"], loads["FIXED_PROCESS"], concurrency=3, pause=0.05),
                ):
                    counts.append({pool: len(load.outcomes) for pool, load in loads.items()})
                    three = await deploy(tmp_path, replica_env, 3)
                    counts.append({pool: len(load.outcomes) for pool, load in loads.items()})
                    await check_deploy(pg_server, database, three, first)
                    second = write_chain(versions, "b", first[-1], "lower(title)")
                    counts.append({pool: len(load.outcomes) for pool, load in loads.items()})
                    six = await deploy(tmp_path, replica_env, 6)
                    counts.append({pool: len(load.outcomes) for pool, load in loads.items()})
                    await check_deploy(pg_server, database, six, second)
                    # A replica restarted later: the fast path, one short query, no lock.
                    (late,) = await deploy(tmp_path, replica_env, 1)
                    assert late[:3] == (0, "Nothing to apply; the database is up to date.\n", ""), late
            finally:
                for client in clients.values():
                    await client.aclose()
            server_logs = {pool: log.read_text()[-3000:] for pool, log in logs.items()}

    # Requests have stopped and the replicas exited: no session may be left in a transaction.
    idle_in_transaction = await server_fetch(
        pg_server,
        "SELECT application_name, state FROM pg_stat_activity WHERE datname = $1 AND state LIKE 'idle in transaction%'",
        database,
    )
    assert idle_in_transaction == []
    print(f"\n3 replicas: {timings(three)}; 6 replicas: {timings(six)}; one more at head: {late[3]:.1f}s")
    print("seconds per process:", [round(r[3], 1) for r in three], [round(r[3], 1) for r in six])
    for pool, load in loads.items():
        during = [after[pool] - before[pool] for before, after in (counts[0:2], counts[2:4])]
        failures = load.failures()
        print(f"{pool}: {len(load.outcomes)} requests, {during} during the two deploys, {len(failures)} failed")
        assert min(during) >= 10, (pool, during, server_logs[pool])
        # The stale-statement rule: a request running a statement the change made stale gets a 503
        # (at most one per connection in use); none is expected here (no cached statements).
        assert all(status == 503 and SCHEMA_CHANGED in body for _, status, body in failures), (
            failures[:5],
            server_logs[pool],
        )
        assert len(failures) <= 3 * 2, failures
    valid = await server_fetch(
        pg_server,
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indisvalid AND c.relname LIKE 'ix_%' ORDER BY 1",
        database=database,
    )
    assert [row[0] for row in valid] == ["ix_serve_item_a", "ix_serve_item_b", "ix_tag_a_item_id", "ix_tag_b_item_id"]
    labels = await server_fetch(
        pg_server,
        "SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder) FROM pg_enum e "
        "JOIN pg_type t ON t.oid = e.enumtypid GROUP BY 1 ORDER BY 1",
        database=database,
    )
    assert [tuple(row) for row in labels] == [
        ("kind_a", ["new", "done", "archived"]),
        ("kind_b", ["new", "done", "archived"]),
    ]
