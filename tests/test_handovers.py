"""A cancellation landing between a connection's hand-over and its use never strands it (issue 31).

The places a request session hands a connection (or the work of giving one back) from one
party to another, each with the cancellation made to land in that very window, in one loop
step or while a proxy holds the server's answer, never by timing luck:

- the disconnect guard cancelling a request whose second session was just handed a pooled
  connection (`DisconnectGuard`, `fair_pool`);
- a cancellation already pending when a session's cleanup is handed to its shielded task
  (`run_shielded`); the cleanup's first step run at once (Python 3.12 and later) as that task,
  so a committed pooled session goes back within one loop step and a timeout inside the
  cleanup cancels the cleanup, never the request;
- the re-render taking over the action's session, cancelled while it asks the server whether
  the action left changes (`rerender.borrowed`).

The fair pool itself and read sessions on replicas have theirs in `test_fair_pool.py` and
`test_replicas.py`. Each test checks the pool (nothing checked out) and the server
(`pg_stat_activity`: nothing idle in transaction, no connection beyond the pool's idle ones).
"""

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from mountaineer import AppController, ConfigBase, ControllerBase, Depends, RenderBase, sideeffect
from mountaineer.config import unregister_config
from pydantic import BaseModel
from sqlalchemy import text

from mountaineer_db import AsyncSession, DatabaseConfig, DatabaseDependencies, SessionDep, database_session
from mountaineer_db.requests.dependencies import get_db
from mountaineer_db.requests.session import run_shielded
from tests.core_app import write_stub_views
from tests.handovers import HoldingProxy, OneStep, assert_nothing_stranded, idle_connections

APP_NAME = "mdb-handovers"
ACTION = "/internal/api/handover_controller"


class HandoverConfig(DatabaseConfig, ConfigBase):
    """Not pip-installed: the app passes view_root."""


class Nothing(BaseModel):
    note: str = ""


class ValueRender(RenderBase):
    value: int


class HandoverController(ControllerBase):
    url = "/"
    view_path = "/app/handover/page.tsx"

    async def render(self, session: SessionDep) -> ValueRender:
        return ValueRender(value=(await session.exec(text("SELECT 3"))).one()[0])  # type: ignore[call-overload]

    @sideeffect
    async def read_without_commit(self, payload: Nothing, session: SessionDep) -> None:
        await session.exec(text("SELECT 1"))  # type: ignore[call-overload]  # the re-render asks if it changed anything

    @sideeffect
    async def hold_then_wait(
        self,
        payload: Nothing,
        first: SessionDep,
        second: AsyncSession = Depends(DatabaseDependencies.get_db_session, use_cache=False),
    ) -> None:
        await first.exec(text("SELECT 1"))  # type: ignore[call-overload]  # a transaction: the guard is armed
        await second.exec(text("SELECT 2"))  # type: ignore[call-overload]  # waits for a pooled connection


def _app(config: HandoverConfig, view_root: Path) -> AppController:
    write_stub_views(view_root, "handover-views", "handover")
    app = AppController(view_root=view_root, config=config)
    app.register(HandoverController())
    return app


async def _taken(engine: Any) -> Any:
    """A connection checked out of `engine`'s pool, no transaction open (giving it back is no I/O)."""
    connection = await engine.connect().start()
    await connection.execute(text("SELECT 1"))
    await connection.commit()
    return connection


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("timed out waiting for the state the test needs")


async def test_the_disconnect_guard_cancelling_right_after_a_hand_over_strands_nothing(
    pg_server: Any, test_database: str, tmp_path: Path
) -> None:
    """An action holds a transaction on its first session and waits for a connection for its second
    (pool size 1, overflow 2, the other two held by the test). In one loop step the client disconnects
    and both held connections come back: the first to the waiting session, the second into the now
    full pool. The guard's cancellation reaches the request after that hand-over, before it used the
    connection: the request ends as a 499, the handed connection goes back (closed: the pool is full),
    and nothing is left checked out or open on the server."""
    unregister_config()
    config = HandoverConfig(
        SQLALCHEMY_DATABASE_URI=pg_server.url(test_database),
        DATABASE_APPLICATION_NAME=APP_NAME,
        DATABASE_POOL_TYPE="FIXED_PROCESS",
        DATABASE_POOL_SIZE=1,
        DATABASE_MAX_OVERFLOW=2,
    )
    app = _app(config, tmp_path / "views")
    engine = await get_db(config=config)
    queue = engine.pool._pool  # type: ignore[attr-defined]
    held = [await _taken(engine), await _taken(engine)]

    body = json.dumps({}).encode()
    body_read = False
    disconnect = asyncio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal body_read
        if not body_read:
            body_read = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    path = f"{ACTION}/hold_then_wait"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    request = asyncio.ensure_future(app.app(scope, receive, send))
    await _until(lambda: queue.waiting() == 1 and engine.pool.checkedout() == 3)
    with OneStep():
        disconnect.set()  # the guards' listeners run first in the next step
        await held[0].close()  # handed to the waiting second session
        await held[1].close()  # into the idle queue, which is now full
    await request
    statuses = [message["status"] for message in sent if message["type"] == "http.response.start"]
    assert statuses == [499], sent
    await assert_nothing_stranded(engine, pg_server, test_database, APP_NAME)
    assert (len(idle_connections(engine)), engine.pool.overflow()) == (1, 0)


@pytest.mark.parametrize("pool", ["NULL", "FIXED_PROCESS"])
async def test_a_cancellation_pending_as_the_cleanup_starts_lets_the_cleanup_finish(
    make_config: Callable[..., DatabaseConfig], pg_server: Any, test_database: str, pool: str
) -> None:
    """A task is cancelled while its session holds a transaction, and the cancellation is delivered at
    the first await of the session's cleanup, just as that cleanup is handed to its own task: the
    rollback still completes and the connection goes back whole (kept by a FIXED_PROCESS pool, not
    discarded); the task ends cancelled."""
    name = f"{APP_NAME}-cleanup"
    config = make_config(DATABASE_POOL_TYPE=pool, DATABASE_APPLICATION_NAME=name)

    async def job() -> None:
        async with database_session(config) as session:
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
            task = asyncio.current_task()
            assert task is not None
            task.cancel()  # delivered at the next await: inside the cleanup

    task = asyncio.ensure_future(job())
    with pytest.raises(asyncio.CancelledError):
        await task
    engine = await get_db(config=config)
    await assert_nothing_stranded(engine, pg_server, test_database, name)
    assert len(idle_connections(engine)) == (1 if pool == "FIXED_PROCESS" else 0), "rolled back, not discarded"


_EAGER = pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio starts tasks eagerly from Python 3.12")


@_EAGER
async def test_a_committed_pooled_session_goes_back_within_one_loop_step(
    make_config: Callable[..., DatabaseConfig], pg_server: Any, test_database: str
) -> None:
    """With FIXED_PROCESS, giving back a committed session's connection needs no I/O: its shielded
    cleanup finishes in its first step, without a trip through the event loop."""
    name = f"{APP_NAME}-one-step"
    config = make_config(DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_APPLICATION_NAME=name)
    scope = database_session(config)
    session = await scope.__aenter__()
    await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
    await session.commit()
    with OneStep():
        await scope.__aexit__(None, None, None)
    engine = await get_db(config=config)
    await assert_nothing_stranded(engine, pg_server, test_database, name)
    assert len(idle_connections(engine)) == 1


async def test_a_timeout_inside_a_shielded_cleanup_cancels_the_cleanup_not_its_caller() -> None:
    """`asyncio.timeout` (asyncpg's `close` waits in one on Python 3.12 and later) cancels the task
    it was entered in: the cleanup's own task, also when its first step ran at once."""
    seen: list[object] = []
    caller = asyncio.current_task()
    assert caller is not None

    async def cleanup() -> None:
        seen.append(asyncio.current_task())
        try:
            async with asyncio.timeout(0):  # expires at the next loop step
                await asyncio.Event().wait()
        except TimeoutError:
            seen.append("timed out")

    await run_shielded(cleanup())
    assert seen[1:] == ["timed out"]
    assert seen[0] is not caller, "the cleanup ran as the caller's task"
    assert caller.cancelling() == 0, "the cleanup's timeout cancelled its caller"
    await asyncio.sleep(0)  # a cancellation aimed at the caller would be delivered here


async def test_a_loop_with_a_task_factory_of_its_own_makes_the_cleanup_task() -> None:
    """An app's task factory (tracing, context propagation) makes the shielded cleanup's task, as it
    makes every other task of the loop; the cleanup runs to its end."""
    loop = asyncio.get_running_loop()
    made: list[asyncio.Task[Any]] = []
    ran: list[bool] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        made.append(task)
        return task

    async def cleanup() -> None:
        await asyncio.sleep(0)
        ran.append(asyncio.current_task() in made)

    loop.set_task_factory(factory)
    try:
        await run_shielded(cleanup())
    finally:
        loop.set_task_factory(None)
    assert ran == [True], "the cleanup did not run as a task of the loop's factory"


@pytest.mark.parametrize("pool", ["NULL", "FIXED_PROCESS"])
async def test_a_rerender_cancelled_as_it_takes_over_the_actions_session_strands_nothing(
    pg_server: Any, test_database: str, tmp_path: Path, pool: str
) -> None:
    """The re-render after a @sideeffect takes the action's session over and first asks the server
    whether the action left changes. Cancelled while that answer is held (a proxy in front of the
    server): the request ends cancelled, the connection goes back, nothing stays open on the server,
    and the app serves the next request."""
    unregister_config()
    async with HoldingProxy(pg_server.port) as proxy:
        config = HandoverConfig(
            SQLALCHEMY_DATABASE_URI=pg_server.url(test_database).set(port=proxy.port),
            DATABASE_APPLICATION_NAME=APP_NAME,
            DATABASE_POOL_TYPE=pool,
        )
        app = _app(config, tmp_path / "views")
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://testserver") as http:
            answer_held = proxy.hold_answers_to(b"txid_current_if_assigned()")
            action = asyncio.ensure_future(http.post(f"{ACTION}/read_without_commit", json={}))
            await asyncio.wait_for(answer_held.wait(), 10)
            action.cancel()
            with pytest.raises(asyncio.CancelledError):
                await action
            proxy.release()
            engine = await get_db(config=config)
            await assert_nothing_stranded(engine, pg_server, test_database, APP_NAME)
            response = await http.post(f"{ACTION}/read_without_commit", json={})
            assert response.json() == {"sideeffect": {"value": 3}}
        await assert_nothing_stranded(engine, pg_server, test_database, APP_NAME)
