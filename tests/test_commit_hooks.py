"""`on_commit`: hooks run after the outermost commit, in order, and never for rolled-back work."""

import functools
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy.util
from mountaineer import AppController, ConfigBase, ControllerBase, Depends, RenderBase, sideeffect
from pydantic import BaseModel
from sqlmodel import Field, SQLModel, func, select

from mountaineer_db import AsyncSession, DatabaseConfig, DatabaseDependencies, database_session, on_commit
from mountaineer_db.engines.engine import engine_for
from tests.core_app import write_stub_views

ACTION = "/internal/api/hooks_controller"


class HooksConfig(DatabaseConfig, ConfigBase):
    """The test app is not pip-installed: it passes view_root instead of PACKAGE."""


class HookRow(SQLModel, table=True):
    __tablename__ = "commit_hook_row"

    id: int | None = Field(default=None, primary_key=True)
    name: str


# What the hooks saw, in the order they ran.
RAN: list[Any] = []


async def _committed_count(config: DatabaseConfig) -> int:
    """Rows visible to another connection: what a hook sees if it runs after COMMIT."""
    async with database_session(config) as session:
        return (await session.exec(select(func.count()).select_from(HookRow))).one()


@pytest.fixture
async def config(pg_server: Any, test_database: str) -> DatabaseConfig:
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(test_database))
    async with engine_for(config).begin() as connection:
        await connection.run_sync(lambda sync: HookRow.__table__.drop(sync, checkfirst=True))  # type: ignore[attr-defined]
        await connection.run_sync(lambda sync: HookRow.__table__.create(sync))  # type: ignore[attr-defined]
    RAN.clear()
    return config


def _recorder(name: str) -> Callable[[], None]:
    def record() -> None:
        RAN.append(name)

    record.__qualname__ = f"record_{name}"
    return record


async def test_sync_and_async_hooks_run_after_the_commit_in_registration_order(config: DatabaseConfig) -> None:
    async def async_hook() -> None:
        RAN.append(("async", await _committed_count(config)))

    async with database_session(config) as session:
        session.add(HookRow(name="one"))
        on_commit(session, _recorder("first"))
        on_commit(session, async_hook)
        on_commit(session, _recorder("third"))
        assert RAN == [], "nothing runs at registration"
        await session.flush()
        assert RAN == [], "nor at a flush"
        await session.commit()
        assert RAN == ["first", ("async", 1), "third"], "after COMMIT: another connection already sees the row"
        assert not session.in_transaction(), "the session has left the committed transaction"


async def test_hooks_are_dropped_on_rollback_and_when_the_session_ends_uncommitted(config: DatabaseConfig) -> None:
    async with database_session(config) as session:
        on_commit(session, _recorder("rolled back"))
        await session.rollback()
        on_commit(session, _recorder("never committed"))
    async with database_session(config) as session:
        on_commit(session, _recorder("committed later"))
        await session.commit()
    assert RAN == ["committed later"], "a rolled-back transaction's hooks never run, not even at a later commit"


async def test_async_with_begin_and_an_explicit_transaction_commit_run_the_hooks(config: DatabaseConfig) -> None:
    session = AsyncSession(engine_for(config), expire_on_commit=False)
    try:
        async with session.begin():
            on_commit(session, _recorder("begin block"))
            session.add(HookRow(name="in a begin block"))
        assert RAN == ["begin block"]
        transaction = await session.begin()
        on_commit(session, _recorder("transaction.commit"))
        await transaction.commit()
        assert RAN == ["begin block", "transaction.commit"]
        with pytest.raises(RuntimeError, match=r"^undo$"):
            async with session.begin():
                on_commit(session, _recorder("failed begin block"))
                raise RuntimeError("undo")
        assert RAN == ["begin block", "transaction.commit"]
    finally:
        await session.close()


async def test_a_plain_sqlalchemy_async_session_works_too(config: DatabaseConfig) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession as SQLAlchemyAsyncSession

    async with SQLAlchemyAsyncSession(engine_for(config)) as session:
        on_commit(session, _recorder("plain sqlalchemy"))
        await session.commit()
    assert RAN == ["plain sqlalchemy"]


async def test_a_released_savepoint_hands_its_hooks_to_the_outer_transaction(config: DatabaseConfig) -> None:
    async with database_session(config) as session:
        on_commit(session, _recorder("outer"))
        async with session.begin_nested():
            on_commit(session, _recorder("released savepoint"))
        assert RAN == [], "releasing a savepoint is not a commit"
        nested = await session.begin_nested()
        on_commit(session, _recorder("rolled-back savepoint"))
        await nested.rollback()
        async with session.begin_nested(), session.begin_nested():
            on_commit(session, _recorder("inner released savepoint"))
        on_commit(session, _recorder("outer again"))
        await session.commit()
    assert RAN == ["outer", "released savepoint", "inner released savepoint", "outer again"]


async def test_a_released_savepoints_hooks_are_dropped_when_the_enclosing_savepoint_rolls_back(
    config: DatabaseConfig,
) -> None:
    """Released into the enclosing savepoint, not into the whole transaction: that savepoint decides."""
    async with database_session(config) as session:
        on_commit(session, _recorder("outer"))
        enclosing = await session.begin_nested()
        async with session.begin_nested():
            session.add(HookRow(name="rolled back with the enclosing savepoint"))
            on_commit(session, _recorder("released into a savepoint that rolls back"))
        await enclosing.rollback()
        async with session.begin_nested(), session.begin_nested():
            on_commit(session, _recorder("released twice"))
        await session.commit()
    assert RAN == ["outer", "released twice"]
    assert await _committed_count(config) == 0, "the enclosing savepoint's work was rolled back too"


async def test_session_commit_inside_a_savepoint_commits_everything_and_runs_all_hooks(config: DatabaseConfig) -> None:
    async with database_session(config) as session:
        on_commit(session, _recorder("outer"))
        await session.begin_nested()
        on_commit(session, _recorder("savepoint"))
        await session.commit()  # SQLAlchemy commits the savepoint, then the transaction
    assert RAN == ["outer", "savepoint"]


async def test_a_hook_registered_between_transactions_begins_the_next_one(config: DatabaseConfig) -> None:
    async with database_session(config) as session:
        await session.commit()
        assert not session.in_transaction()
        on_commit(session, _recorder("rolled back"))
        assert session.in_transaction(), "begun, as the next statement would have"
        await session.rollback()
        on_commit(session, _recorder("next transaction"))
        session.add(HookRow(name="second transaction"))
        await session.commit()
    assert RAN == ["next transaction"]


async def test_a_failing_hook_propagates_after_the_data_is_committed_and_skips_the_rest(
    config: DatabaseConfig,
) -> None:
    def fail() -> None:
        raise ValueError("hook failed on purpose")

    with pytest.raises(ValueError, match=r"^hook failed on purpose$"):
        async with database_session(config) as session:
            session.add(HookRow(name="stays committed"))
            on_commit(session, fail)
            on_commit(session, _recorder("after the failure"))
            await session.commit()
    assert RAN == []
    assert await _committed_count(config) == 1


async def test_a_robust_hook_failure_is_logged_without_its_arguments_and_the_rest_run(
    config: DatabaseConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mountaineer_db")

    async def send_mail(address: str, token: str) -> None:
        raise ConnectionRefusedError("mail server down")

    async with database_session(config) as session:
        on_commit(session, functools.partial(send_mail, "someone@example.com", "secret-token-value"), robust=True)
        on_commit(session, _recorder("still runs"))
        await session.commit()
    assert RAN == ["still runs"]
    errors = [r for r in caplog.records if r.name == "mountaineer_db" and r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "on_commit hook tests.test_commit_hooks.test_a_robust_hook_failure_is_logged_without_its_arguments_"
        "and_the_rest_run.<locals>.send_mail failed (ConnectionRefusedError: mail server down); the remaining "
        "hooks still run."
    ]
    assert all("secret-token-value" not in r.getMessage() for r in caplog.records)
    assert all("someone@example.com" not in r.getMessage() for r in caplog.records)


async def test_an_async_hook_may_use_the_database_and_register_further_hooks(config: DatabaseConfig) -> None:
    async def audit() -> None:
        async with database_session(config) as other:
            other.add(HookRow(name="written by the hook"))
            on_commit(other, _recorder("hook of the hook"))
            await other.commit()

    async with database_session(config) as session:
        session.add(HookRow(name="original"))
        on_commit(session, audit)
        await session.commit()
    assert RAN == ["hook of the hook"]
    assert await _committed_count(config) == 2


def test_canary_sqlalchemy_exports_a_greenlet_await_helper() -> None:
    """Async hooks are awaited from the sync session with SQLAlchemy's public helper.

    `sqlalchemy.util.await_only` (2.0; a deprecated alias in 2.1, to be removed in 2.2) or
    `sqlalchemy.util.await_` (2.1+). If neither is exported, `commit_hooks._await` must follow.
    """
    assert callable(getattr(sqlalchemy.util, "await_", None) or getattr(sqlalchemy.util, "await_only", None))


# --- In requests -------------------------------------------------------------------------------


class HooksRender(RenderBase):
    names: list[str]
    hooks_seen: list[str]


class NewRow(BaseModel):
    name: str
    commit: bool = True
    hook_after_commit: bool = False


class HooksController(ControllerBase):
    url = "/"
    view_path = "/app/hooks/page.tsx"

    async def render(self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)) -> HooksRender:
        names = [row.name for row in (await session.exec(select(HookRow).order_by(HookRow.id))).all()]  # type: ignore[arg-type]
        on_commit(session, _recorder("render (never commits)"))
        return HooksRender(names=names, hooks_seen=[str(item) for item in RAN])

    @sideeffect
    async def add_row(
        self, payload: NewRow, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)
    ) -> None:
        session.add(HookRow(name=payload.name))
        on_commit(session, _recorder(f"action {payload.name}"))
        if payload.commit:
            await session.commit()
        if payload.hook_after_commit:
            on_commit(session, _recorder("registered after the commit, never committed"))
            session.add(HookRow(name="uncommitted"))
            await session.flush()


@pytest.fixture
async def client(config: DatabaseConfig, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app_config = HooksConfig(SQLALCHEMY_DATABASE_URI=config.SQLALCHEMY_DATABASE_URI)
    write_stub_views(tmp_path / "views", "hooks-views", "hooks")
    app = AppController(view_root=tmp_path / "views", config=app_config)
    app.register(HooksController())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://testserver") as http:
        yield http


async def test_in_a_sideeffect_request_the_action_hooks_run_at_its_commit_before_the_rerender(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(f"{ACTION}/add_row", json={"name": "a"})
    assert response.status_code == 200, response.text
    rendered = response.json()["sideeffect"]
    assert rendered == {"names": ["a"], "hooks_seen": ["action a"]}, "ran at the commit, before the re-render"
    assert RAN == ["action a"], "the re-render's hook was dropped: it never committed"


async def test_in_a_request_uncommitted_hooks_are_dropped(client: httpx.AsyncClient, config: DatabaseConfig) -> None:
    response = await client.post(f"{ACTION}/add_row", json={"name": "b", "commit": False})
    assert response.status_code == 200, response.text
    assert response.json()["sideeffect"] == {"names": [], "hooks_seen": []}
    response = await client.post(f"{ACTION}/add_row", json={"name": "c", "hook_after_commit": True})
    assert response.status_code == 200, response.text
    assert response.json()["sideeffect"]["names"] == ["c"]
    assert RAN == ["action c"], "what the action registered after its commit was rolled back with it"
    assert await _committed_count(config) == 1


@pytest.mark.pgbouncer
async def test_through_pgbouncer_hooks_run_after_the_commit(bouncer_config: Callable[..., DatabaseConfig]) -> None:
    bounced = bouncer_config()
    async with engine_for(bounced).begin() as connection:
        await connection.run_sync(lambda sync: HookRow.__table__.create(sync, checkfirst=True))  # type: ignore[attr-defined]

    async def count_in_hook() -> None:
        RAN.append(await _committed_count(bounced))

    RAN.clear()
    before = await _committed_count(bounced)
    async with database_session(bounced) as session:
        session.add(HookRow(name="via pgbouncer"))
        on_commit(session, count_in_hook)
        await session.commit()
    seen_by_the_hook = list(RAN)
    assert seen_by_the_hook == [before + 1], "the hook saw the committed row"
