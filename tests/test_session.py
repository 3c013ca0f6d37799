"""Request sessions through a real Mountaineer app: the six semantics of DESIGN.md."""

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from mountaineer_db import AsyncSession, DatabaseUnavailableError, database_session
from mountaineer_db.engines.engine import engine_for
from tests.core_app import OBSERVED, CoreAppConfig, CoreTodo, build_app

ConfigFactory = Any

APP_NAME = "core_app"


@pytest.fixture
async def app_config(pg_server: Any, test_database: str) -> AsyncIterator[CoreAppConfig]:
    config = CoreAppConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(test_database), DATABASE_APPLICATION_NAME=APP_NAME)
    async with engine_for(config).begin() as connection:
        await connection.run_sync(lambda sync: CoreTodo.__table__.drop(sync, checkfirst=True))  # type: ignore[attr-defined]
        await connection.run_sync(lambda sync: CoreTodo.__table__.create(sync))  # type: ignore[attr-defined]
    OBSERVED.clear()
    yield config


@pytest.fixture
async def client(app_config: CoreAppConfig, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(tmp_path / "views", app_config)
    transport = httpx.ASGITransport(app=app.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def _server_connections(config: CoreAppConfig) -> list[tuple[str, str | None]]:
    """(state, query) of every server connection our app holds, seen from a separate session."""
    async with database_session(config.model_copy(update={"DATABASE_APPLICATION_NAME": "observer"})) as session:
        rows = await session.exec(  # type: ignore[call-overload]
            text("SELECT state, query FROM pg_stat_activity WHERE application_name = :name").bindparams(name=APP_NAME)
        )
        return [(row[0], row[1]) for row in rows]


def _count_connects(config: CoreAppConfig) -> list[int]:
    connects: list[int] = []
    event.listen(engine_for(config).sync_engine, "connect", lambda *_: connects.append(1))
    return connects


async def test_render_starts_in_a_transaction_without_taking_a_connection(
    client: httpx.AsyncClient, app_config: CoreAppConfig
) -> None:
    connects = _count_connects(app_config)
    response = await client.get("/probe")
    assert response.status_code == 200
    assert response.json() == {"in_transaction": True}
    assert OBSERVED[-1]["session_type"] is AsyncSession
    assert connects == [], "a handler that never queries costs no connection"


async def test_committed_action_persists_and_rerender_sees_it(
    client: httpx.AsyncClient, app_config: CoreAppConfig
) -> None:
    response = await client.post("/internal/api/todo_controller/add_todo", json={"description": "buy milk"})
    assert response.status_code == 200, response.text
    assert response.json()["sideeffect"] == {"count": 1, "descriptions": ["buy milk"]}
    count = await client.get("/count")
    assert count.json() == {"count": 1}


async def test_uncommitted_work_is_rolled_back(client: httpx.AsyncClient, app_config: CoreAppConfig) -> None:
    response = await client.post(
        "/internal/api/todo_controller/add_todo", json={"description": "never committed", "commit": False}
    )
    assert response.status_code == 200
    assert (await client.get("/count")).json() == {"count": 0}
    assert await _server_connections(app_config) == [], "nothing left open, let alone idle in transaction"


async def test_handler_exception_rolls_back_is_logged_once_and_propagates(
    client: httpx.AsyncClient, app_config: CoreAppConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mountaineer_db")
    with pytest.raises(ValueError, match=r"^handler failed on purpose$"):
        await client.post(
            "/internal/api/todo_controller/add_todo",
            json={"description": "secret-param-value", "fail_after_add": True},
        )
    # The server (uvicorn, gunicorn) logs the exception with its traceback; our one line says
    # what was rolled back, at INFO, naming the class only: its message is the app's to show.
    records = [r for r in caplog.records if r.name == "mountaineer_db" and r.levelno >= logging.INFO]
    assert [(r.levelname, r.getMessage()) for r in records] == [
        ("INFO", "Rolled back the request's transaction after ValueError")
    ]
    assert all("secret-param-value" not in r.getMessage() for r in caplog.records)
    assert (await client.get("/count")).json() == {"count": 0}, "the flushed row was rolled back"
    assert await _server_connections(app_config) == []


async def test_objects_stay_readable_after_commit_without_io(
    client: httpx.AsyncClient, app_config: CoreAppConfig
) -> None:
    statements: list[str] = []
    event.listen(engine_for(app_config).sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    await client.post("/internal/api/todo_controller/add_todo", json={"description": "kept"})
    observed = next(o for o in OBSERVED if "id_after_commit" in o)
    assert observed["description_after_commit"] == "kept"
    assert isinstance(observed["id_after_commit"], int)
    insert_index = next(i for i, s in enumerate(statements) if s.startswith("INSERT"))
    # After the INSERT and COMMIT, the next statement is the re-render's SELECT, not a refresh.
    assert all(
        not s.startswith("SELECT core_todo.id, core_todo.description FROM core_todo WHERE core_todo.id")
        for s in statements[insert_index + 1 :]
    )


async def test_database_session_outside_requests_has_the_same_guarantees(app_config: CoreAppConfig) -> None:
    async with database_session(app_config) as session:
        assert session.in_transaction()
        session.add(CoreTodo(description="from a job"))
        await session.commit()
        session.add(CoreTodo(description="left uncommitted"))
        await session.flush()
    with pytest.raises(RuntimeError):
        async with database_session(app_config) as session:
            session.add(CoreTodo(description="failed job"))
            await session.flush()
            raise RuntimeError("job failed")
    async with database_session(app_config) as session:
        rows = (await session.exec(select(CoreTodo.description))).all()
    assert rows == ["from a job"]
    assert await _server_connections(app_config) == []


async def test_database_session_uses_the_registered_config(app_config: CoreAppConfig) -> None:
    async with database_session() as session:  # app_config is the registered Mountaineer config
        assert (await session.exec(text("SELECT current_database()"))).one()[0] == app_config.database_url.database  # type: ignore[call-overload]


async def test_cancelled_task_releases_its_connection_and_stops_the_query(app_config: CoreAppConfig) -> None:
    started = asyncio.Event()

    async def slow_job() -> None:
        async with database_session(app_config) as session:
            session.add(CoreTodo(description="cancelled before commit"))
            await session.flush()
            started.set()
            await session.exec(text("SELECT pg_sleep(30)"))  # type: ignore[call-overload]
            await session.commit()

    task = asyncio.create_task(slow_job())
    await asyncio.wait_for(started.wait(), 10)
    await asyncio.sleep(0.2)
    assert any("pg_sleep" in (query or "") for _, query in await _server_connections(app_config))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0
    while await _server_connections(app_config) and loop.time() < deadline:
        await asyncio.sleep(0.05)
    assert await _server_connections(app_config) == [], "the query stopped and the connection closed within 1 s"
    async with database_session(app_config) as session:
        assert (await session.exec(select(CoreTodo))).all() == []


async def test_bound_values_never_reach_a_log_record_even_with_sql_echo(
    make_config: ConfigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """DATABASE_ECHO logs statements, never their parameters, nor does any error or our log line."""
    caplog.set_level(logging.DEBUG)  # every logger, SQLAlchemy's included
    config = make_config(DATABASE_ECHO=True)
    marker = "ZEBRA-bound-value-7f3a"
    async with database_session(config) as session:
        await session.exec(text("CREATE TABLE IF NOT EXISTS echo_probe (v text UNIQUE)"))  # type: ignore[call-overload]
        await session.exec(text("DELETE FROM echo_probe"))  # type: ignore[call-overload]
        await session.commit()
    with pytest.raises(IntegrityError) as caught:
        async with database_session(config) as session:
            for _ in range(2):  # the second one violates the unique constraint
                await session.exec(text("INSERT INTO echo_probe VALUES (:v)").bindparams(v=marker))  # type: ignore[call-overload]
    assert any("INSERT INTO echo_probe" in record.getMessage() for record in caplog.records), "echo was not on"
    shown = [record.getMessage() for record in caplog.records]
    shown += [logging.Formatter().formatException(record.exc_info) for record in caplog.records if record.exc_info]
    assert not [line for line in shown if marker in line]
    assert "[SQL parameters hidden due to hide_parameters=True]" in str(caught.value)


async def test_a_connection_closed_while_it_is_set_up_is_a_503_not_a_500(app_config: CoreAppConfig) -> None:
    """A server shutting down right after a login closes the new connection while SQLAlchemy
    sets up its codecs; asyncpg then raises its bare "connection is closed", unwrapped by
    SQLAlchemy. That is the database being unavailable (503), not a bug in the app (500)."""
    engine = engine_for(app_config)

    def close_it(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.driver_connection.terminate()  # as the server's shutdown would

    # insert=True: before SQLAlchemy's own on-connect setup, which then meets the closed connection.
    event.listen(engine.sync_engine.pool, "connect", close_it, insert=True, once=True)
    with pytest.raises(DatabaseUnavailableError, match="while opening it: InterfaceError: connection is closed"):
        async with database_session(app_config) as session:
            await session.exec(select(CoreTodo))
    async with database_session(app_config) as session:  # the next session connects as usual
        assert (await session.exec(select(CoreTodo))).all() == []
