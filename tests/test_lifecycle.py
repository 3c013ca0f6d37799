"""Engine lifecycle: many event loops, forks, shutdown, and dispose with work in flight.

Each finding of the lifecycle issue, against a real PostgreSQL; the loop and fork cases run
in a fresh process (`tests/lifecycle_worker.py`) so file descriptors and forks are its own.
"""

import asyncio
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from mountaineer_db import DatabaseConfig, database_session, dispose_engines
from mountaineer_db.engines.engine import engine_for
from tests.lifecycle_worker import APP_NAME
from tests.sample_apps import superuser_connect

ROOT = Path(__file__).resolve().parent.parent


async def _server_connections(server: Any, application_name: str) -> int:
    connection = await superuser_connect(server, "postgres")
    try:
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        return int(await connection.fetchval(query, application_name))
    finally:
        await connection.close()


class Worker:
    """`tests.lifecycle_worker` in a subprocess, read one JSON line at a time."""

    def __init__(self, *argv: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.lifecycle_worker", *argv],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def report(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            _, err = self.process.communicate(timeout=30)
            raise AssertionError(f"the worker ended without a report:\n{err}")
        return dict(json.loads(line))

    def proceed(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()

    def finish(self) -> None:
        try:
            _, err = self.process.communicate(timeout=60)
        finally:
            self.process.kill()
        assert self.process.returncode == 0, err
        assert "Traceback" not in err and "Warning" not in err, err


def _url(server: Any, database: str) -> str:
    return server.url(database).render_as_string(hide_password=False)


@pytest.mark.parametrize("mode", ["asyncio_run", "closed_loops"])
async def test_many_event_loops_leave_no_connections_or_descriptors(
    pg_server: Any, test_database: str, mode: str
) -> None:
    """200 jobs, each `asyncio.run()` with a FIXED_PROCESS pool: connections stay bounded.

    Before: every loop left its pool open (200 server connections, 200 descriptors).
    With `asyncio.run` a loop's engines are disposed as the loop shuts down; loops closed by
    hand are released by the next `engine_for`, so at most the last one's is left.
    """
    worker = Worker(mode, _url(pg_server, test_database), "200")
    report = worker.report()
    left = await _server_connections(pg_server, APP_NAME)
    allowed = 0 if mode == "asyncio_run" else 1
    assert left <= allowed, f"{left} server connections left after 200 jobs ({mode})"
    assert report["fds_after"] - report["fds_before"] <= allowed, report
    worker.proceed()
    after_dispose = worker.report()
    assert await _server_connections(pg_server, APP_NAME) == 0
    assert after_dispose["fds_after_dispose"] <= report["fds_before"] + 1, after_dispose
    worker.proceed()
    worker.finish()


@pytest.mark.parametrize("mode", ["fork", "fork_reused_loop"])
def test_a_forked_child_never_touches_its_parents_connections(pg_server: Any, test_database: str, mode: str) -> None:
    """The child disposes its engines and collects garbage; the parent's pooled connection survives.

    Before: the child's cleanup closed the parent's connection (a Terminate on its session)
    and removed its socket from the epoll set they share, so the parent's next query hung.
    `fork_reused_loop`: the child shuts down on the parent's own (copied) loop object.
    """
    result = subprocess.run(
        [sys.executable, "-m", "tests.lifecycle_worker", mode, _url(pg_server, test_database)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["pid_after"] is not None, f"the parent's query hung after the child exited: {report}"
    assert report["pid_after"] == report["pid_before"], "the parent kept its own pooled connection"
    assert report["seconds"] < 1, report
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr


def _fixed_config(pg_server: Any, test_database: str, name: str) -> DatabaseConfig:
    return DatabaseConfig(
        SQLALCHEMY_DATABASE_URI=pg_server.url(test_database),
        DATABASE_POOL_TYPE="FIXED_PROCESS",
        DATABASE_APPLICATION_NAME=name,
    )


async def test_dispose_with_a_session_in_flight_closes_its_connection_when_it_comes_back(
    pg_server: Any, test_database: str
) -> None:
    config = _fixed_config(pg_server, test_database, "dispose_in_flight")
    holding, release = asyncio.Event(), asyncio.Event()
    async with database_session(config) as session:
        await session.exec(text("CREATE TABLE IF NOT EXISTS in_flight (n int)"))  # type: ignore[call-overload]
        await session.commit()

    async def in_flight() -> int:
        async with database_session(config) as session:
            await session.exec(text("INSERT INTO in_flight VALUES (1)"))  # type: ignore[call-overload]
            holding.set()
            await release.wait()
            count = (await session.exec(text("SELECT count(*) FROM in_flight"))).one()[0]  # type: ignore[call-overload]
            await session.commit()
            return int(count)

    task = asyncio.ensure_future(in_flight())
    await holding.wait()
    await dispose_engines()
    assert await _server_connections(pg_server, "dispose_in_flight") == 1, "the session in flight keeps working"
    release.set()
    assert await task == 1, "it finished normally"
    assert await _server_connections(pg_server, "dispose_in_flight") == 0, "closed when it came back, not pooled"


def test_an_event_loop_that_shuts_down_disposes_its_engines(pg_server: Any, test_database: str) -> None:
    """No shutdown hook to write: a server's loop ending (asyncio.run) closes its pools."""
    config = _fixed_config(pg_server, test_database, "loop_shutdown")

    async def serve() -> int:
        async with database_session(config):
            pass
        engine = engine_for(config)
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
        return int(engine.pool.checkedin())  # type: ignore[attr-defined]

    assert asyncio.run(serve()) == 1, "the pool kept its connection while the loop ran"
    assert asyncio.run(_server_connections(pg_server, "loop_shutdown")) == 0


def test_engines_of_a_loop_in_another_thread_are_disposed_on_that_loop(pg_server: Any, test_database: str) -> None:
    config = _fixed_config(pg_server, test_database, "other_thread")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(_use(config), loop).result(timeout=30)
        assert asyncio.run(_server_connections(pg_server, "other_thread")) == 1
        asyncio.run(dispose_engines())
        deadline = 50
        while asyncio.run(_server_connections(pg_server, "other_thread")) and deadline:
            deadline -= 1
            threading.Event().wait(0.1)
        assert asyncio.run(_server_connections(pg_server, "other_thread")) == 0
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


async def _use(config: DatabaseConfig) -> None:
    async with database_session(config) as session:
        await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
