"""A clean process for the engine-lifecycle tests: `python -m tests.lifecycle_worker MODE URL ...`.

Prints one JSON line with what it measured, then (for the loop modes) waits for a line on
stdin before exiting, so the test can look at the server while this process is still alive.

- `asyncio_run N`: N jobs, each its own `asyncio.run()`, using `database_session()`;
- `closed_loops N`: the same with loops closed by hand (no `shutdown_asyncgens()`);
- `fork`: a parent holding a pooled connection forks; the child uses the database, calls
  `dispose_engines()` and garbage-collects; the parent then queries again;
- `fork_reused_loop`: the same, but the child shuts down on the parent's (copied) loop object
  without using the database first.
"""

import asyncio
import gc
import json
import os
import sys
import time
from typing import Any

from sqlalchemy import text

from mountaineer_db import DatabaseConfig, database_session, dispose_engines

APP_NAME = "lifecycle_worker"


def _config(url: str) -> DatabaseConfig:
    return DatabaseConfig(
        SQLALCHEMY_DATABASE_URI=url, DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_APPLICATION_NAME=APP_NAME
    )


async def _job(config: DatabaseConfig) -> int:
    async with database_session(config) as session:
        return int((await session.exec(text("SELECT pg_backend_pid()"))).one()[0])  # type: ignore[call-overload]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _wait_for_the_test(report: dict[str, Any]) -> None:
    print(json.dumps(report), flush=True)
    sys.stdin.readline()


def run_loops(url: str, count: int, *, closed_by_hand: bool) -> None:
    config = _config(url)
    fds_before = _open_fds()
    for _ in range(count):
        if closed_by_hand:
            loop = asyncio.new_event_loop()
            try:
                loop.run_until_complete(_job(config))
            finally:
                loop.close()
        else:
            asyncio.run(_job(config))
    _wait_for_the_test({"fds_before": fds_before, "fds_after": _open_fds()})
    asyncio.run(dispose_engines())
    _wait_for_the_test({"fds_after_dispose": _open_fds()})


async def _fork_and_query_again(url: str) -> dict[str, Any]:
    config = _config(url)
    pid_before = await _job(config)  # the connection goes back to the pool, still open
    child = os.fork()
    if child == 0:  # the child: use the database, shut down as the README says, collect garbage
        try:
            asyncio.run(_child(config))
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    started = time.monotonic()
    try:
        async with asyncio.timeout(10):
            pid_after = await _job(config)
    except TimeoutError:
        return {"pid_before": pid_before, "pid_after": None, "seconds": time.monotonic() - started}
    return {"pid_before": pid_before, "pid_after": pid_after, "seconds": time.monotonic() - started}


async def _child(config: DatabaseConfig) -> None:
    await _job(config)
    await dispose_engines()
    gc.collect()


def _fork_on_a_reused_loop(url: str) -> dict[str, Any]:
    """The parent drives one loop with run_until_complete; the child, forked between two runs,
    shuts down on that same (copied) loop object without using the database first."""
    config = _config(url)
    loop = asyncio.new_event_loop()
    pid_before = loop.run_until_complete(_job(config))
    child = os.fork()
    if child == 0:
        try:
            loop.run_until_complete(dispose_engines())
            gc.collect()
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    started = time.monotonic()

    async def again() -> int | None:
        try:
            async with asyncio.timeout(10):
                return await _job(config)
        except TimeoutError:
            return None

    pid_after = loop.run_until_complete(again())
    seconds = time.monotonic() - started
    loop.run_until_complete(dispose_engines())
    loop.close()
    return {"pid_before": pid_before, "pid_after": pid_after, "seconds": seconds}


def main(argv: list[str]) -> None:
    mode, url = argv[0], argv[1]
    if mode in ("asyncio_run", "closed_loops"):
        run_loops(url, int(argv[2]), closed_by_hand=mode == "closed_loops")
    elif mode == "fork":
        print(json.dumps(asyncio.run(_fork_and_query_again(url))), flush=True)
    elif mode == "fork_reused_loop":
        print(json.dumps(_fork_on_a_reused_loop(url)), flush=True)
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
