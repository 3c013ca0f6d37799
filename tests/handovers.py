"""Checks for the tests of a cancellation landing between a connection's hand-over and its use.

A connection handed to a task that is cancelled before it runs (a pool waiter, a read session
choosing its replica) must still come back: nothing checked out of the pool, nothing left
`idle in transaction` on the server, and no more server connections than the pool keeps
idle. `assert_nothing_stranded` checks all three, the last two on the server itself
(`pg_stat_activity`), for the connections of one `application_name`.
"""

import asyncio
import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from mountaineer_db.metrics import engine_metrics
from tests.sample_apps import server_fetch


async def backends(server: Any, database: str, application_name: str) -> list[dict[str, Any]]:
    """The server's connections of `application_name` on `database`: state and last query."""
    rows = await server_fetch(
        server,
        "SELECT pid, state, query FROM pg_stat_activity "
        "WHERE datname = $1 AND application_name LIKE $2 AND pid <> pg_backend_pid()",
        database,
        f"{application_name}%",  # DATABASE_TAG_REQUESTS appends `:Controller.action`
    )
    return [dict(row) for row in rows]


async def assert_nothing_stranded(
    engine: AsyncEngine, server: Any, database: str, application_name: str, *, within: float = 5.0
) -> None:
    """`engine` has no connection checked out, and on the server its connections are exactly the
    pool's idle ones (none with the NULL pool), none of them in a transaction.

    Backends of closed connections exit asynchronously: the server side is polled up to `within`.
    """
    metrics = engine_metrics(engine)
    assert metrics is not None, "an engine built by mountaineer_db"
    assert metrics.checked_out == 0, f"{metrics.checked_out} connection(s) still checked out of the pool"
    expected = metrics.idle or 0
    deadline = time.monotonic() + within
    while True:
        seen = await backends(server, database, application_name)
        if len(seen) == expected and all(row["state"] == "idle" for row in seen):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {expected} idle connection(s) on the server, found {seen}")
        await asyncio.sleep(0.02)


class OneStep:
    """`with OneStep():` fails if the block let the event loop run anything else (it awaited for real).

    The hand-over races are reproduced by doing several things in one loop step; this proves the
    test really did, rather than trusting that an `await` did not suspend.
    """

    def __enter__(self) -> "OneStep":
        self._ran: list[bool] = []
        asyncio.get_running_loop().call_soon(self._ran.append, True)
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is None:
            assert not self._ran, "the block suspended: the steps it had to take together were interleaved"
