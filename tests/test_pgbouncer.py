"""Through a real PgBouncer in transaction mode, with the default config: zero errors.

The same workload with plain SQLAlchemy defaults fails through PgBouncer 1.18, which is why the
connector exists: asyncpg names prepared statements from a per-process counter, so several client
processes sharing PgBouncer's server connections collide ("already exists") or miss each other's
statements ("does not exist"). PgBouncer 1.21+ handles named statements itself.

Every test here runs on both PgBouncers (`any_pgbouncer`): Debian 12's 1.18 and a 1.24 built from
Debian 13's source (scripts/build_pgbouncer.sh).
"""

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from mountaineer_db import DatabaseConfig, database_session
from mountaineer_db.servers.pgbouncer import PgBouncer
from tests.conftest import require_old_pgbouncer

pytestmark = pytest.mark.pgbouncer

ROOT = Path(__file__).resolve().parent.parent
WORKERS = 4


def _run_workers(mode: str, url: str, requests: int, concurrency: int) -> list[dict[str, Any]]:
    env = {**os.environ, "WORKER_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.pgbouncer_worker", mode, str(requests), str(concurrency)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=ROOT,
        )
        for _ in range(WORKERS)
    ]
    results = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=150)  # the worker bounds itself at 90 s
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            raise AssertionError(f"a worker hung past its own bound:\n{err[-2000:]}") from None
        assert process.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def _bouncer_url(pgbouncer: PgBouncer, pg_server: Any, test_database: str) -> str:
    url = pgbouncer.url(test_database, user=pg_server.user, password=pg_server.password)
    return url.render_as_string(hide_password=False)


def _fresh_server_connections(pgbouncer: PgBouncer, pg_server: Any) -> None:
    """PgBouncer's RECONNECT: the server connections other tests left (with the named statements
    their settings prepared: the fixture's PgBouncer is shared by the session) are not reused, so
    what a run finds on its server connections is its own."""
    asyncio.run(pgbouncer.admin("RECONNECT", user=pg_server.user, password=pg_server.password))


def test_default_config_through_pgbouncer_has_zero_errors(
    any_pgbouncer: PgBouncer, pg_server: Any, test_database: str
) -> None:
    """4 processes x 8 concurrent tasks x 550 requests through a PgBouncer pool of 4 server connections."""
    _fresh_server_connections(any_pgbouncer, pg_server)
    results = _run_workers("ours", _bouncer_url(any_pgbouncer, pg_server, test_database), requests=550, concurrency=8)
    assert sum(r["ok"] for r in results) == WORKERS * 550 >= 2000
    assert [r["errors"] for r in results] == [{}] * WORKERS
    assert max(r["max_prepared_statements_seen"] for r in results) == 0, (
        "no named statements left on server connections"
    )


@pytest.mark.parametrize("mode", ["ours-prepared", "ours-prepared-fixed"], ids=["NULL", "FIXED_PROCESS"])
def test_named_statements_through_pgbouncer_124_have_zero_errors(
    mode: str, pgbouncer_124: PgBouncer, pg_server: Any, test_database: str
) -> None:
    """DATABASE_POOLER_PREPARED_STATEMENTS, 4 processes whose asyncpg statement names collide: PgBouncer
    1.24 keeps each client's names apart and prepares each text once per server connection."""
    url = _bouncer_url(pgbouncer_124, pg_server, test_database)
    _fresh_server_connections(pgbouncer_124, pg_server)
    results = _run_workers(mode, url, requests=200, concurrency=8)
    assert [r["errors"] for r in results] == [{}] * WORKERS
    assert sum(r["ok"] for r in results) == WORKERS * 200
    # Prepared under PgBouncer's own names, once per text and server connection: bounded by the
    # distinct texts (the worker's, ours and SQLAlchemy's and asyncpg's first-connection queries),
    # not by the 800 requests (the uuid-name recipe leaves one per request).
    assert 2 <= max(r["max_prepared_statements_seen"] for r in results) <= 40


def test_named_statements_against_pgbouncer_118_fail_clearly_in_every_process(
    pgbouncer: PgBouncer, pg_server: Any, test_database: str
) -> None:
    """DATABASE_POOLER_PREPARED_STATEMENTS against 1.18, 4 processes at once: every request fails with
    the setting's own error (the check's statements never collide between processes)."""
    require_old_pgbouncer()
    results = _run_workers("ours-prepared", _bouncer_url(pgbouncer, pg_server, test_database), 30, 4)
    assert [r["ok"] for r in results] == [0] * WORKERS
    keys = {key for r in results for key in r["errors"]}
    assert len(keys) == 1 and next(iter(keys)).startswith(
        "PoolerPreparedStatementsError: DATABASE_POOLER_PREPARED_STATEMENTS is on, but the pooler"
    ), keys


def test_plain_sqlalchemy_defaults_fail_through_pgbouncer_118(
    pgbouncer: PgBouncer, pg_server: Any, test_database: str
) -> None:
    """The fix is necessary: the naive setups break in exactly the way FIELD_NOTES records."""
    require_old_pgbouncer()
    url = _bouncer_url(pgbouncer, pg_server, test_database)
    failures: Counter[str] = Counter()
    for mode in ("naive-null", "naive-default"):
        for result in _run_workers(mode, url, requests=150, concurrency=8):
            failures.update(result["errors"])
    assert failures, "plain SQLAlchemy defaults unexpectedly survived PgBouncer transaction mode"
    assert any(
        "prepared statement" in key and ("already exists" in key or "does not exist" in key) for key in failures
    ), failures


async def test_statement_timeout_holds_through_pgbouncer(any_bouncer_config: Callable[..., DatabaseConfig]) -> None:
    config = any_bouncer_config(DATABASE_STATEMENT_TIMEOUT=0.2, DATABASE_LOCK_TIMEOUT=1.5)
    async with database_session(config) as session:
        settings = (
            await session.exec(text("SELECT current_setting('statement_timeout'), current_setting('lock_timeout')"))
        ).one()  # type: ignore[call-overload]
        assert tuple(settings) == ("200ms", "1500ms")
    with pytest.raises(DBAPIError, match="canceling statement due to statement timeout"):
        async with database_session(config) as session:
            await session.exec(text("SELECT pg_sleep(3)"))  # type: ignore[call-overload]


async def test_application_name_holds_through_pgbouncer(any_bouncer_config: Callable[..., DatabaseConfig]) -> None:
    config = any_bouncer_config(DATABASE_APPLICATION_NAME="shop-web")
    async with database_session(config) as session:
        name = (
            await session.exec(text("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"))
        ).one()[0]  # type: ignore[call-overload]
    assert name == "shop-web"


async def test_timeouts_as_startup_parameters_break_through_pgbouncer(
    any_pgbouncer: PgBouncer, pg_server: Any
) -> None:
    """Why the timeouts ride on BEGIN: PgBouncer refuses them as startup parameters."""
    import asyncpg

    with pytest.raises(asyncpg.PostgresError, match="unsupported startup parameter"):
        await asyncpg.connect(
            host="127.0.0.1",
            port=any_pgbouncer.port,
            user=pg_server.user,
            password=pg_server.password,
            database="postgres",
            ssl=False,
            server_settings={"statement_timeout": "200"},
        )
