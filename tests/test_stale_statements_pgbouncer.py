"""A schema change under load, through PgBouncer 1.18 and 1.24, with both pool types.

Through 1.18 the app uses unnamed statements (the default; FIXED_PROCESS with
DATABASE_STATEMENT_CACHE_SIZE=0), which never go stale. Through 1.24 it uses
DATABASE_POOLER_PREPARED_STATEMENTS: PgBouncer prepares each text once per server connection,
and a schema change leaves every server connection with a stale statement that re-preparing
the same text on the client maps back to. The recovery switches the engine to new statement
texts, so after the first stale statement every request runs on fresh ones.
The load is tests/stale_load.py's (an app, CONCURRENCY concurrent GETs per round, an ALTER).
"""

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from mountaineer_db.servers.pgbouncer import PgBouncer
from tests.sample_apps import server_execute
from tests.stale_load import (
    CONCURRENCY,
    LATER,
    POOL_SIZE,
    SCENARIOS,
    SCHEMA,
    Outcome,
    StaleConfig,
    app_client,
    fixed_pool_config,
    run_load,
)

pytestmark = pytest.mark.pgbouncer

DETAIL = {"detail": "The database schema changed while this request ran. Try again."}


@pytest.fixture(params=["NULL", "FIXED_PROCESS"])
async def bounced_client(
    request: pytest.FixtureRequest,
    any_pgbouncer: PgBouncer,
    pgbouncer_version_under_test: str,
    pg_server: Any,
    test_database: str,
    tmp_path: Path,
) -> AsyncIterator[Any]:
    """The stale-load app through the PgBouncer under test: (client, version, pool)."""
    await server_execute(pg_server, *SCHEMA, database=test_database)
    # As after `migrate apply`: a revision of its own, so this app's statement texts are not the ones
    # an earlier test's app left (stale, the table re-created) on the session's PgBouncer.
    await server_execute(
        pg_server,
        "DROP TABLE IF EXISTS alembic_version",
        "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)",
        f"INSERT INTO alembic_version VALUES ('{secrets.token_hex(6)}')",
        database=test_database,
    )
    url = any_pgbouncer.url(test_database, user=pg_server.user, password=pg_server.password)
    settings: dict[str, Any] = {"DATABASE_POOL_TYPE": request.param}
    if pgbouncer_version_under_test == "1.24":
        settings["DATABASE_POOLER_PREPARED_STATEMENTS"] = True
    elif request.param == "FIXED_PROCESS":
        settings["DATABASE_STATEMENT_CACHE_SIZE"] = 0  # what 1.18 needs (docs/deployment.md)
    if request.param == "FIXED_PROCESS":
        config = fixed_pool_config(url, **settings)
    else:
        config = StaleConfig(SQLALCHEMY_DATABASE_URI=url, **settings)
    try:
        async with app_client(config, tmp_path / "views") as client:
            yield client, pgbouncer_version_under_test, request.param
    finally:
        await server_execute(pg_server, "DROP TABLE IF EXISTS alembic_version", database=test_database)


def _failed(outcomes: list[Outcome]) -> list[Outcome]:
    return [outcome for outcome in outcomes if outcome.status != 200]


async def test_a_stale_first_statement_runs_again_and_nothing_fails(
    bounced_client: Any, pg_server: Any, test_database: str
) -> None:
    """Every scenario (a column's type, a dropped and re-added column, a composite type) in turn."""
    client, _, _ = bounced_client
    for name, (page, change) in SCENARIOS.items():
        outcomes = await run_load(client, pg_server, test_database, page, change, rounds_before=3, rounds_after=6)
        assert _failed(outcomes) == [], name


async def test_later_statements_fail_only_while_the_change_lands_and_as_503(
    bounced_client: Any, pg_server: Any, test_database: str
) -> None:
    client, version, pool = bounced_client
    for name, (page, change) in SCENARIOS.items():
        outcomes = await run_load(
            client, pg_server, test_database, LATER[page], change, rounds_before=3, rounds_after=8
        )
        failed = _failed(outcomes)
        assert all((o.status, o.retry_after, o.body) == (503, "0", DETAIL) for o in failed), (name, failed)
        if version == "1.18" and (pool == "NULL" or name != "composite_type"):
            assert failed == [], f"{name}: unnamed statements are never stale"
            continue
        # Only requests in flight when the change landed; none after the first failure.
        assert len(failed) <= CONCURRENCY, (name, failed)
        if failed:
            first_failure_seen = min(o.ended for o in failed)
            later = [o for o in outcomes if o.started > first_failure_seen]
            assert len(later) >= 5 * CONCURRENCY and _failed(later) == [], name


@pytest.mark.parametrize("later", [False, True], ids=["first", "later"])
async def test_one_request_at_a_time(bounced_client: Any, pg_server: Any, test_database: str, later: bool) -> None:
    """After the change, at most the first request fails (a 503, and only when its stale statement
    was not its transaction's first); every one after it succeeds, on every connection."""
    client, version, _ = bounced_client
    page, change = SCENARIOS["column_type"]
    page = LATER[page] if later else page
    for _ in range(2 * POOL_SIZE):  # every connection (client and server side) has the statement prepared
        assert (await client.get(page)).status_code == 200
    await server_execute(pg_server, change, database=test_database)
    statuses = [(await client.get(page)).status_code for _ in range(4 * POOL_SIZE)]
    first = 503 if later and version == "1.24" else 200
    assert statuses == [first] + [200] * (4 * POOL_SIZE - 1)
