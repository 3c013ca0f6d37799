"""A migration applied while the app serves: stale cached statements are replaced; a request fails
(as a 503) only when a statement that went stale was not the first of its transaction.

The load (tests/stale_load.py): CONCURRENCY concurrent GETs per round against a Mountaineer
app on a FIXED_PROCESS pool (asyncpg's statement cache on), and an ALTER from another
connection alongside one round. Run `python -m tests.stale_load` for the counts without and
with the recovery.
"""

import logging
import pickle
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi.responses import JSONResponse
from mountaineer import AppController, ControllerBase, Metadata, RenderBase, sideeffect
from pydantic import BaseModel
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError
from sqlmodel import func, select

from mountaineer_db import DatabaseConfig, DatabaseUnavailableError, SchemaChangedError, SessionDep, on_commit
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.engines.stale_statements import _recover, stale_statement_cause, uninstall_stale_statement_recovery
from tests.core_app import write_stub_views
from tests.sample_apps import server_execute
from tests.stale_load import (
    CONCURRENCY,
    LATER,
    POOL_SIZE,
    SCENARIOS,
    SCHEMA,
    JSONRender,
    Outcome,
    StaleItem,
    app_client,
    fixed_pool_config,
    run_load,
)

DETAIL = {"detail": "The database schema changed while this request ran. Try again."}


@pytest.fixture
async def schema(pg_server: Any, test_database: str) -> None:
    await server_execute(pg_server, *SCHEMA, database=test_database)


@pytest.fixture
async def fixed_client(pg_server: Any, test_database: str, schema: None, tmp_path: Path) -> AsyncIterator[Any]:
    config = fixed_pool_config(pg_server.url(test_database))
    async with app_client(config, tmp_path / "views") as client:
        yield client, config


def _failed(outcomes: list[Outcome]) -> list[Outcome]:
    return [outcome for outcome in outcomes if outcome.status != 200]


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_under_load_a_stale_first_statement_runs_again_and_nothing_fails(
    fixed_client: Any, pg_server: Any, test_database: str, scenario: str
) -> None:
    """The page's stale statement is its transaction's first: nothing was lost, so it runs again."""
    client, _ = fixed_client
    page, change = SCENARIOS[scenario]
    outcomes = await run_load(client, pg_server, test_database, page, change)
    assert _failed(outcomes) == []
    last_round = [o for o in outcomes if o.round == max(o.round for o in outcomes)]
    assert len({o.body["pid"] for o in last_round}) == POOL_SIZE, "on every pooled connection"


@pytest.mark.parametrize("scenario", list(SCENARIOS))
async def test_under_load_only_requests_already_past_their_first_statement_fail_and_as_503(
    fixed_client: Any, pg_server: Any, test_database: str, scenario: str
) -> None:
    client, _ = fixed_client
    page, change = SCENARIOS[scenario]
    outcomes = await run_load(client, pg_server, test_database, LATER[page], change)
    failed = _failed(outcomes)
    assert 1 <= len(failed) <= POOL_SIZE, f"at most one per pooled connection in use at the change: {failed}"
    assert {(o.status, o.retry_after) for o in failed} == {(503, "0")}
    assert all(o.body == DETAIL for o in failed)
    first_failure_seen = min(o.ended for o in failed)
    later = [o for o in outcomes if o.started > first_failure_seen]
    assert len(later) >= 10 * CONCURRENCY and _failed(later) == [], "every request after the first failure succeeds"
    last_round = [o for o in outcomes if o.round == max(o.round for o in outcomes)]
    assert len({o.body["pid"] for o in last_round}) == POOL_SIZE, "on every pooled connection"


@pytest.mark.parametrize(("later", "expected_first"), [(False, 200), (True, 503)], ids=["first", "later"])
async def test_one_request_at_a_time(
    fixed_client: Any, pg_server: Any, test_database: str, later: bool, expected_first: int
) -> None:
    client, _ = fixed_client
    page, change = SCENARIOS["column_type"]
    page = LATER[page] if later else page
    for _ in range(2 * POOL_SIZE):  # every pooled connection has the statement cached
        assert (await client.get(page)).status_code == 200
    await server_execute(pg_server, change, database=test_database)
    statuses = [(await client.get(page)).status_code for _ in range(4 * POOL_SIZE)]
    assert statuses == [expected_first] + [200] * (4 * POOL_SIZE - 1)


WARNING = (
    "WARNING",
    "A cached prepared statement met a database schema change (InvalidCachedStatementError: cached "
    "statement plan is invalid due to a database schema or configuration change); replacing every "
    "pooled connection.",
)


async def test_the_failure_is_logged_once_with_the_cause_and_no_parameters(
    fixed_client: Any, pg_server: Any, test_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    client, _ = fixed_client
    page = LATER[SCENARIOS["column_type"][0]]
    assert (await client.get(page)).status_code == 200
    await server_execute(pg_server, SCENARIOS["column_type"][1], database=test_database)
    caplog.clear()
    assert (await client.get(page)).status_code == 503
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "mountaineer_db"]
    assert messages == [
        WARNING,
        (
            "ERROR",
            "Rolled back the request's transaction after SchemaChangedError: The database schema changed under "
            "a statement this process had prepared and cached (InvalidCachedStatementError: cached statement "
            "plan is invalid due to a database schema or configuration change), most likely a migration applied "
            "while the app was serving. The request was rolled back and every pooled connection is being "
            "replaced, so later requests prepare their statements anew; retry it.",
        ),
    ]


async def test_a_replayed_first_statement_is_logged_at_info(
    fixed_client: Any, pg_server: Any, test_database: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mountaineer_db")
    client, _ = fixed_client
    page, change = SCENARIOS["column_type"]
    assert (await client.get(page)).status_code == 200
    await server_execute(pg_server, change, database=test_database)
    caplog.clear()
    assert (await client.get(page)).status_code == 200
    messages = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "mountaineer_db"]
    assert messages == [
        WARNING,
        ("INFO", "A statement met a schema change before anything else in its transaction; running it again."),
    ]


async def test_with_the_statement_cache_off_only_type_codecs_can_go_stale(
    pg_server: Any, test_database: str, schema: None, tmp_path: Path
) -> None:
    """DATABASE_STATEMENT_CACHE_SIZE=0 on a fixed pool: unnamed statements never go stale, but each
    connection still caches type codecs, which a changed composite type outdates."""
    config = fixed_pool_config(pg_server.url(test_database), DATABASE_STATEMENT_CACHE_SIZE=0)
    async with app_client(config, tmp_path / "views") as client:
        for name, (page, change) in SCENARIOS.items():
            outcomes = await run_load(
                client, pg_server, test_database, LATER[page], change, rounds_before=2, rounds_after=3
            )
            failed = _failed(outcomes)
            if name == "composite_type":
                assert 1 <= len(failed) <= POOL_SIZE and all(o.body == DETAIL for o in failed)
            else:
                assert failed == [], f"{name}: unnamed statements are never cached, so never stale"


async def test_canary_without_the_recovery_a_changed_composite_type_fails_until_restart(
    pg_server: Any, test_database: str, schema: None
) -> None:
    """The upstream gap the recovery closes: after asyncpg's OutdatedSchemaCacheError, SQLAlchemy's
    asyncpg dialect (2.0 and 2.1) keeps the closed statement in its cache, so every later use on
    that connection fails ("the prepared statement is closed"). Plain SQLAlchemy on our engine with
    the recovery removed; if this test fails, SQLAlchemy has fixed it (the recovery is still
    needed for the 503 and for the other errors)."""
    engine = engine_for(fixed_pool_config(pg_server.url(test_database), DATABASE_POOL_SIZE=1))
    uninstall_stale_statement_recovery(engine)
    query = text("SELECT id, point FROM stale_pair WHERE id <= 5 ORDER BY id")
    async with engine.connect() as connection:
        await connection.execute(query)
        await connection.rollback()
    await server_execute(pg_server, SCENARIOS["composite_type"][1], database=test_database)
    errors = []
    for _ in range(3):
        async with engine.connect() as connection:  # the one pooled connection, every time
            try:
                await connection.execute(query)
            except DBAPIError as error:
                errors.append(type(stale_statement_cause(error)).__name__)
    assert errors == ["OutdatedSchemaCacheError", "InterfaceError", "InterfaceError"], errors


async def test_a_stale_statement_the_engine_recovery_missed_is_still_replayed_or_a_503(
    fixed_client: Any, pg_server: Any, test_database: str
) -> None:
    """Defence in depth: request sessions recognise a stale statement by its cause too, so one that
    reaches them untranslated (here: the engine's recovery removed) is replayed when it was the
    transaction's first statement, else a 503; never a 500, and the connection is replaced."""
    client, config = fixed_client
    uninstall_stale_statement_recovery(engine_for(config))
    for page, change in SCENARIOS.values():
        for path in (page, LATER[page]):
            assert (await client.get(path)).status_code == 200
        await server_execute(pg_server, change, database=test_database)
        assert (await client.get(page)).status_code == 200  # replayed
    page, change = SCENARIOS["column_type"]
    for _ in range(2 * POOL_SIZE):
        assert (await client.get(LATER[page])).status_code == 200
    await server_execute(pg_server, "ALTER TABLE stale_item ALTER COLUMN score TYPE int", database=test_database)
    statuses = [(await client.get(LATER[page])).status_code for _ in range(2 * POOL_SIZE)]
    assert 500 not in statuses and statuses[0] == 503, statuses


async def test_every_engine_has_the_recovery_installed(make_config: Callable[..., DatabaseConfig]) -> None:
    for config in (make_config(), make_config(DATABASE_POOL_TYPE="FIXED_PROCESS")):
        assert event.contains(engine_for(config).sync_engine, "handle_error", _recover)


@pytest.mark.pgbouncer
async def test_through_pgbouncer_the_default_pool_never_meets_a_stale_statement(
    bouncer_config: Callable[..., DatabaseConfig], schema: None, pg_server: Any, test_database: str, tmp_path: Path
) -> None:
    from tests.stale_load import StaleConfig

    config = StaleConfig(SQLALCHEMY_DATABASE_URI=bouncer_config().SQLALCHEMY_DATABASE_URI)
    async with app_client(config, tmp_path / "views") as client:
        for scenario in SCENARIOS.values():
            outcomes = await run_load(client, pg_server, test_database, *scenario, rounds_before=2, rounds_after=3)
            assert _failed(outcomes) == [], "unnamed statements are never cached, so never stale"


def test_schema_changed_error_is_a_503_that_keeps_its_message_when_pickled() -> None:
    error = SchemaChangedError("what happened")
    assert isinstance(error, DatabaseUnavailableError)
    assert (error.status_code, error.detail, error.headers) == (503, DETAIL["detail"], {"Retry-After": "0"})
    assert str(error) == "what happened"
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is SchemaChangedError and str(copy) == "what happened" and copy.detail == DETAIL["detail"]


# -- after-commit hooks across a replay -------------------------------------------------------

HOOKS_RAN: list[str] = []


class ScoresRender(RenderBase):
    scores: list[int]


class Bump(BaseModel):
    commit: bool = True


class BumpController(ControllerBase):
    url = "/bump"
    view_path = "/app/bump/page.tsx"

    async def render(self, session: SessionDep) -> ScoresRender:
        items = (await session.exec(select(StaleItem).where(StaleItem.id <= 2).order_by(StaleItem.id))).all()  # type: ignore[arg-type]
        return ScoresRender(scores=[item.score for item in items])

    @sideeffect
    async def bump(self, payload: Bump, session: SessionDep) -> None:
        on_commit(session, lambda: HOOKS_RAN.append("bumped"))  # before the transaction's first statement
        items = (await session.exec(select(StaleItem).where(StaleItem.id <= 2).order_by(StaleItem.id))).all()  # type: ignore[arg-type]
        for item in items:
            item.score += 10
        if payload.commit:
            await session.commit()


async def test_an_on_commit_hook_registered_before_a_replayed_first_statement_still_runs(
    pg_server: Any, test_database: str, schema: None, tmp_path: Path
) -> None:
    """Issue 31, row 3. An action registers an on_commit hook, then runs its transaction's first
    statement, which meets a migration and is replayed: the hook runs at the action's commit. A hook
    of an action that does not commit is still dropped, replay or not."""
    config = fixed_pool_config(pg_server.url(test_database), DATABASE_POOL_SIZE=1)
    write_stub_views(tmp_path / "views", "bump-views", "bump")
    app = AppController(view_root=tmp_path / "views", config=config)
    app.register(BumpController())
    action = "/internal/api/bump_controller/bump"
    HOOKS_RAN.clear()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://testserver") as client:
        response = await client.post(action, json={})  # the statement is now cached on the pooled connection
        assert response.json() == {"sideeffect": {"scores": [11, 12]}} and HOOKS_RAN == ["bumped"]
        HOOKS_RAN.clear()
        await server_execute(pg_server, SCENARIOS["column_type"][1], database=test_database)
        response = await client.post(action, json={})
        assert response.json() == {"sideeffect": {"scores": [21, 22]}}, "replayed, then committed"
        assert HOOKS_RAN == ["bumped"], "the hook registered before the replayed statement ran at the commit"
        HOOKS_RAN.clear()
        await server_execute(pg_server, SCENARIOS["drop_and_add_column"][1], database=test_database)
        response = await client.post(action, json={"commit": False})
        assert response.json() == {"sideeffect": {"scores": [21, 22]}}, "replayed, never committed"
        assert HOOKS_RAN == [], "a hook of a transaction that was rolled back never runs"


# -- every way a session runs a statement ------------------------------------------------------


class FirstStatementController(ControllerBase):
    """The page's first statement, run the way `?how=` names: each is a way SQLModel and SQLAlchemy
    offer to run one, and each is replayed the same."""

    url = "/first"
    view_path = "/app/first/page.tsx"

    async def render(self, how: str, session: SessionDep) -> JSONRender:
        query = select(StaleItem).where(StaleItem.id <= 2).order_by(StaleItem.id)  # type: ignore[arg-type]
        if how == "exec":
            items = list((await session.exec(query)).all())
        elif how == "execute":
            items = list((await session.execute(query)).scalars().all())
        elif how == "scalars":
            items = list((await session.scalars(query)).all())  # AsyncSession.scalars runs execute
        elif how == "sync-scalars":
            items = await session.run_sync(lambda sync: list(sync.scalars(query).all()))
        elif how == "get":
            items = [item for key in (1, 2) if (item := await session.get(StaleItem, key)) is not None]
        else:
            total = await session.scalar(select(func.sum(StaleItem.score)).where(StaleItem.id <= 2))  # type: ignore[arg-type]
            items = [StaleItem(id=0, score=int(total or 0))]
        body = {"scores": [item.score for item in items]}
        return JSONRender(metadata=Metadata(explicit_response=JSONResponse(body)))


# SQLModel's AsyncSession marks `execute` (and `scalars`, which calls it) deprecated in favour of `exec`.
@pytest.mark.filterwarnings("ignore:\\s*🚨 You probably want to use `session.exec\\(\\)`:DeprecationWarning")
@pytest.mark.parametrize("how", ["exec", "execute", "scalars", "sync-scalars", "scalar", "get"])
async def test_a_stale_first_statement_runs_again_however_the_session_runs_it(
    pg_server: Any, test_database: str, schema: None, tmp_path: Path, how: str
) -> None:
    """`session.exec`, `execute`, `scalars` (and the sync session's, in `run_sync`), `scalar` and `get`:
    after a migration changes the type of a column the page reads, its first statement (prepared on
    the pooled connection by the request before) is run again, and the page answers 200 with the
    same values."""
    config = fixed_pool_config(pg_server.url(test_database), DATABASE_POOL_SIZE=1)
    write_stub_views(tmp_path / "views", "first-views", "first")
    app = AppController(view_root=tmp_path / "views", config=config)
    app.register(FirstStatementController())
    transport = httpx.ASGITransport(app=app.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        before = await client.get("/first", params={"how": how})
        assert before.status_code == 200, before.text
        await server_execute(pg_server, SCENARIOS["column_type"][1], database=test_database)
        after = await client.get("/first", params={"how": how})
        assert after.status_code == 200, f"{how}: {after.status_code} {after.text[:300]}"
        assert after.json() == before.json() == {"scores": [1, 2] if how != "scalar" else [3]}


def test_rows_wider_than_the_cached_description_are_a_stale_statement() -> None:
    """Through PgBouncer 1.24 with named statements, a migration that adds a column can reach a
    client whose cached statement still describes the old columns, while PgBouncer prepared the
    same text anew on a server connection that has the new one: asyncpg refuses the wider rows
    with a `ProtocolError` (seen in test_migrating_while_serving under load, a 500 before). It is
    recognised as a stale statement, through SQLAlchemy's wrapping too (the 503 and the replay)."""
    message = "the number of columns in the result row (3) is different from what was described (2)"
    error = asyncpg.ProtocolError(message)
    assert stale_statement_cause(error) is error
    wrapped = DBAPIError("SELECT * FROM serve_item", None, error)
    wrapped.__cause__ = error
    assert stale_statement_cause(wrapped) is error
    assert stale_statement_cause(asyncpg.ProtocolError("unexpected message from the server")) is None
