"""One session and one server connection per request, across a `@sideeffect` and its re-render.

Counts are taken on the real engine the app uses (SQLAlchemy's pool `connect` event fires
once per connection our connector opens) and cross-checked with the server's backend PIDs.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.responses import JSONResponse
from mountaineer import AppController, ConfigBase, ControllerBase, Depends, Metadata, RenderBase, sideeffect
from mountaineer.config import unregister_config
from pydantic import BaseModel
from sqlalchemy import event, text
from sqlmodel import Field, SQLModel, select

from mountaineer_db import AsyncSession, DatabaseConfig, DatabaseDependencies, database_session
from mountaineer_db.engines.engine import engine_for
from tests.core_app import write_stub_views

APP_NAME = "request_session_app"
ACTION = "/internal/api/items_controller"


class ItemsConfig(DatabaseConfig, ConfigBase):
    """The test app is not pip-installed: it passes view_root instead of PACKAGE."""


class RequestItem(SQLModel, table=True):
    __tablename__ = "request_session_item"

    id: int | None = Field(default=None, primary_key=True)
    name: str


class ItemsRender(RenderBase):
    names: list[str]
    session_id: int
    backend_pid: int


class NewItem(BaseModel):
    name: str
    # commit | flush | add | commit_then_flush | read | fail_render | fail_render_after_read | lock | sql_write
    mode: str = "commit"


# What the handlers saw, for the tests to assert on.
SEEN: list[dict[str, Any]] = []


async def _backend_pid(session: AsyncSession) -> int:
    connection = await session.connection()
    return int(await connection.scalar(text("SELECT pg_backend_pid()")))


class ItemsController(ControllerBase):
    url = "/"
    view_path = "/app/items/page.tsx"

    async def render(self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)) -> ItemsRender:
        if SEEN and SEEN[-1].get("mode") == "fail_render":
            raise RuntimeError("render failed on purpose")
        names = [row.name for row in (await session.exec(select(RequestItem).order_by(RequestItem.id))).all()]  # type: ignore[arg-type]
        if SEEN and SEEN[-1].get("mode") == "fail_render_after_read":
            raise RuntimeError("render failed on purpose after reading")
        SEEN.append({"where": "render", "session": id(session), "in_transaction": session.in_transaction()})
        return ItemsRender(names=names, session_id=id(session), backend_pid=await _backend_pid(session))

    @sideeffect
    async def add_item(
        self, payload: NewItem, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)
    ) -> None:
        pid = None
        if payload.mode == "read":
            pid = await _backend_pid(session)
        elif payload.mode == "lock":  # reads with a row lock (which assigns a transaction id), writes nothing
            await session.exec(select(RequestItem).with_for_update())
        elif payload.mode == "sql_write":  # a write the ORM does not see
            await session.exec(text("UPDATE request_session_item SET name = name || ' (uncommitted)'"))  # type: ignore[call-overload]
        else:
            session.add(RequestItem(name=payload.name))
        if payload.mode in ("commit", "commit_then_flush", "fail_render", "fail_render_after_read"):
            pid = await _backend_pid(session)
            await session.commit()
        if payload.mode == "commit_then_flush":
            session.add(RequestItem(name=payload.name + " (uncommitted)"))
        if payload.mode in ("flush", "commit_then_flush"):
            await session.flush()
        SEEN.append({"where": "action", "session": id(session), "pid": pid, "mode": payload.mode})

    @sideeffect
    async def two_sessions(
        self,
        first: AsyncSession = Depends(DatabaseDependencies.get_db_session, use_cache=False),
        second: AsyncSession = Depends(DatabaseDependencies.get_db_session, use_cache=False),
    ) -> None:
        SEEN.append({"where": "two_sessions", "distinct": first is not second})

    @sideeffect
    async def without_database(self) -> None:
        SEEN.append({"where": "without_database"})


class CountRender(RenderBase):
    pass


class CommitTwiceController(ControllerBase):
    """GET /twice: commits twice and reads again in one render, answered as JSON."""

    url = "/twice"
    view_path = "/app/twice/page.tsx"

    async def render(self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)) -> CountRender:
        pids = []
        for name in ("one", "two"):
            session.add(RequestItem(name=name))
            pids.append(await _backend_pid(session))
            await session.commit()
        pids.append(await _backend_pid(session))
        return CountRender(metadata=Metadata(explicit_response=JSONResponse({"pids": pids})))


def build_app(view_root: Path, config: ItemsConfig) -> AppController:
    write_stub_views(view_root, "request-session-views", "items", "twice")
    app = AppController(view_root=view_root, config=config)
    app.register(ItemsController())
    app.register(CommitTwiceController())
    return app


async def _prepare(config: DatabaseConfig) -> None:
    async with engine_for(config).begin() as connection:
        await connection.run_sync(lambda sync: RequestItem.__table__.drop(sync, checkfirst=True))  # type: ignore[attr-defined]
        await connection.run_sync(lambda sync: RequestItem.__table__.create(sync))  # type: ignore[attr-defined]
    SEEN.clear()


@pytest.fixture
async def direct_config(pg_server: Any, test_database: str) -> ItemsConfig:
    config = ItemsConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(test_database), DATABASE_APPLICATION_NAME=APP_NAME)
    await _prepare(config)
    return config


async def _client(config: ItemsConfig, view_root: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(view_root, config)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://testserver") as http:
        yield http


@pytest.fixture
async def client(direct_config: ItemsConfig, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async for http in _client(direct_config, tmp_path / "views"):
        yield http


def _count_connects(config: DatabaseConfig) -> list[int]:
    connects: list[int] = []
    event.listen(engine_for(config).sync_engine, "connect", lambda *_: connects.append(1))
    return connects


def _observer_session(config: DatabaseConfig) -> AbstractAsyncContextManager[AsyncSession]:
    """A session of the test's own, under another application_name than the app's."""
    return database_session(config.model_copy(update={"DATABASE_APPLICATION_NAME": "observer"}))


async def _committed_names(config: DatabaseConfig) -> list[str]:
    async with _observer_session(config) as session:
        return list((await session.exec(select(RequestItem.name).order_by(RequestItem.id))).all())  # type: ignore[arg-type]


async def _open_server_connections(config: DatabaseConfig) -> list[tuple[str, str]]:
    async with _observer_session(config) as session:
        connection = await session.connection()
        rows = await connection.execute(
            text("SELECT state, query FROM pg_stat_activity WHERE application_name = :name"), {"name": APP_NAME}
        )
        return [(row[0], row[1]) for row in rows]


async def test_sideeffect_and_its_rerender_share_one_session_and_one_connection(
    client: httpx.AsyncClient, direct_config: ItemsConfig
) -> None:
    connects = _count_connects(direct_config)
    response = await client.post(f"{ACTION}/add_item", json={"name": "first"})
    assert response.status_code == 200, response.text
    rendered = response.json()["sideeffect"]
    assert rendered["names"] == ["first"], "the re-render reflects the action's committed write"
    action, render = SEEN
    assert action["where"] == "action" and render["where"] == "render"
    assert render["session"] == action["session"] == rendered["session_id"], "one session for the request"
    assert render["in_transaction"], "the re-render starts with a transaction open, like any handler"
    assert rendered["backend_pid"] == action["pid"], "the re-render ran on the action's server connection"
    assert len(connects) == 1, f"one server connection per sideeffect request, saw {len(connects)}"
    assert await _open_server_connections(direct_config) == [], "given back when the request ends"
    assert await _committed_names(direct_config) == ["first"]


async def test_uncommitted_flushed_writes_are_rolled_back_before_the_rerender_with_a_warning(
    client: httpx.AsyncClient, direct_config: ItemsConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mountaineer_db")
    response = await client.post(f"{ACTION}/add_item", json={"name": "flushed only", "mode": "flush"})
    assert response.status_code == 200, response.text
    assert response.json()["sideeffect"]["names"] == [], "the re-render never shows uncommitted data"
    warnings = [r for r in caplog.records if r.name == "mountaineer_db" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "left uncommitted changes; rolled them back before re-rendering" in warnings[0].getMessage()
    assert f"{ACTION}/add_item" in warnings[0].getMessage()
    assert await _committed_names(direct_config) == []


@pytest.mark.parametrize(
    ("name", "mode", "committed"),
    [
        pytest.param("added only", "add", [], id="pending_unflushed_objects_are_discarded_not_autoflushed"),
        pytest.param("kept", "commit_then_flush", ["kept"], id="only_the_uncommitted_part_is_rolled_back"),
    ],
)
async def test_uncommitted_changes_never_reach_the_rerender(
    client: httpx.AsyncClient,
    direct_config: ItemsConfig,
    caplog: pytest.LogCaptureFixture,
    name: str,
    mode: str,
    committed: list[str],
) -> None:
    caplog.set_level(logging.INFO, logger="mountaineer_db")
    connects = _count_connects(direct_config)
    response = await client.post(f"{ACTION}/add_item", json={"name": name, "mode": mode})
    assert response.json()["sideeffect"]["names"] == committed
    assert sum(r.levelno == logging.WARNING for r in caplog.records if r.name == "mountaineer_db") == 1
    assert len(connects) == 1
    assert await _committed_names(direct_config) == committed


async def test_a_read_only_action_shares_its_connection_without_a_warning(
    client: httpx.AsyncClient, direct_config: ItemsConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mountaineer_db")
    connects = _count_connects(direct_config)
    response = await client.post(f"{ACTION}/add_item", json={"name": "unused", "mode": "read"})
    assert response.json()["sideeffect"]["backend_pid"] == SEEN[0]["pid"]
    assert [r for r in caplog.records if r.name == "mountaineer_db" and r.levelno >= logging.WARNING] == []
    assert len(connects) == 1


@pytest.mark.parametrize(
    ("mode", "logged"),
    [
        ("fail_render", []),
        ("fail_render_after_read", [("INFO", "Rolled back the request's transaction after RuntimeError")]),
    ],
)
async def test_a_failing_rerender_gives_the_connection_back_and_is_logged_only_if_it_rolled_back(
    client: httpx.AsyncClient, direct_config: ItemsConfig, caplog: pytest.LogCaptureFixture, mode: str, logged: Any
) -> None:
    """The server (uvicorn, gunicorn) logs the exception with its traceback. Ours is one INFO line
    naming the class, and only when the re-render had a transaction to roll back."""
    caplog.set_level(logging.INFO, logger="mountaineer_db")
    with pytest.raises(RuntimeError, match="render failed on purpose"):
        await client.post(f"{ACTION}/add_item", json={"name": "committed before", "mode": mode})
    assert [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "mountaineer_db"] == logged
    assert await _open_server_connections(direct_config) == []
    assert await _committed_names(direct_config) == ["committed before"], "the action's commit stands"


async def test_an_action_without_a_session_leaves_the_rerender_its_own(
    client: httpx.AsyncClient, direct_config: ItemsConfig
) -> None:
    connects = _count_connects(direct_config)
    response = await client.post(f"{ACTION}/without_database")
    assert response.status_code == 200, response.text
    assert response.json()["sideeffect"]["names"] == []
    assert len(connects) == 1


async def test_separate_sessions_asked_for_with_use_cache_false_stay_separate(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{ACTION}/two_sessions")
    assert response.status_code == 200, response.text
    assert SEEN[0] == {"where": "two_sessions", "distinct": True}


async def test_a_handler_that_commits_twice_keeps_one_connection(
    client: httpx.AsyncClient, direct_config: ItemsConfig
) -> None:
    connects = _count_connects(direct_config)
    response = await client.get("/twice")
    assert response.status_code == 200, response.text
    pids = response.json()["pids"]
    assert len(set(pids)) == 1 and len(connects) == 1
    assert await _open_server_connections(direct_config) == []
    assert await _committed_names(direct_config) == ["one", "two"]


@pytest.mark.pgbouncer
async def test_through_pgbouncer_a_sideeffect_request_opens_one_client_connection(
    bouncer_config: Callable[..., DatabaseConfig], direct_config: ItemsConfig, tmp_path: Path
) -> None:
    url = bouncer_config().database_url
    unregister_config()  # direct_config (which made the table) registered itself; the app gets this one
    config = ItemsConfig(SQLALCHEMY_DATABASE_URI=url, DATABASE_APPLICATION_NAME=APP_NAME)
    connects = _count_connects(config)
    async for http in _client(config, tmp_path / "views"):
        for name in ("a", "b", "c"):
            response = await http.post(f"{ACTION}/add_item", json={"name": name})
            assert response.status_code == 200, response.text
        assert response.json()["sideeffect"]["names"] == ["a", "b", "c"]
    assert len(connects) == 3, "one connection per sideeffect request"


async def test_mountaineer_di_without_a_request_still_resolves_a_session(direct_config: ItemsConfig) -> None:
    """Resolving render() outside a request (a common way to test it) keeps working."""
    from mountaineer_di import get_function_dependencies

    async with get_function_dependencies(callable=ItemsController().render) as values:
        assert isinstance(values["session"], AsyncSession)
        assert values["session"].in_transaction()


async def test_concurrent_sideeffect_requests_each_keep_their_own_session(
    client: httpx.AsyncClient, direct_config: ItemsConfig
) -> None:
    connects = _count_connects(direct_config)
    responses = await asyncio.gather(
        *(client.post(f"{ACTION}/add_item", json={"name": f"concurrent {n}"}) for n in range(3))
    )
    rendered = [response.json()["sideeffect"] for response in responses]
    pid_of_action = {seen["session"]: seen["pid"] for seen in SEEN if seen["where"] == "action"}
    assert len({render["session_id"] for render in rendered}) == 3
    assert all(render["backend_pid"] == pid_of_action[render["session_id"]] for render in rendered)
    assert len(connects) == 3
    assert sorted(await _committed_names(direct_config)) == ["concurrent 0", "concurrent 1", "concurrent 2"]


@pytest.mark.parametrize("pool", ["NULL", "FIXED_PROCESS"])
async def test_an_action_that_only_locks_rows_gets_no_warning_and_one_that_writes_in_sql_does(
    direct_config: ItemsConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture, pool: str
) -> None:
    """Issue 31, row 5. A @sideeffect that reads with `with_for_update()` and does not commit changed
    nothing: no "left uncommitted changes" warning before its re-render (a row lock assigns a
    transaction id, so that alone does not tell). One that writes in plain SQL, which the ORM does not
    see, still gets it, and its write is rolled back."""
    unregister_config()
    config = ItemsConfig(
        SQLALCHEMY_DATABASE_URI=direct_config.SQLALCHEMY_DATABASE_URI,
        DATABASE_APPLICATION_NAME=APP_NAME,
        DATABASE_POOL_TYPE=pool,
    )
    caplog.set_level(logging.INFO, logger="mountaineer_db")
    async for http in _client(config, tmp_path / "views"):
        assert (await http.post(f"{ACTION}/add_item", json={"name": "locked"})).status_code == 200
        caplog.clear()
        response = await http.post(f"{ACTION}/add_item", json={"name": "unused", "mode": "lock"})
        assert response.json()["sideeffect"]["names"] == ["locked"]
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        response = await http.post(f"{ACTION}/add_item", json={"name": "unused", "mode": "sql_write"})
        assert response.json()["sideeffect"]["names"] == ["locked"], "the re-render never shows uncommitted data"
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "left uncommitted changes; rolled them back" in warnings[0], warnings
    assert await _committed_names(config) == ["locked"]
