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

from mountaineer_db.engines.fair_pool import FairQueue
from mountaineer_db.observability.metrics import engine_metrics
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
    expected = len(idle_connections(engine))
    deadline = time.monotonic() + within
    while True:
        seen = await backends(server, database, application_name)
        if len(seen) == expected and all(row["state"] == "idle" for row in seen):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {expected} idle connection(s) on the server, found {seen}")
        await asyncio.sleep(0.02)


def idle_connections(engine: AsyncEngine) -> list[Any]:
    """The DBAPI connections idle in `engine`'s FIXED_PROCESS pool (a discarded one leaves an empty
    record behind, reconnected at its next checkout); none with the NULL pool."""
    queue = getattr(engine.pool, "_pool", None)
    if not isinstance(queue, FairQueue):
        return []
    return [record.dbapi_connection for record in queue._items if record.dbapi_connection is not None]


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


class HoldingProxy:
    """A TCP proxy to a PostgreSQL server that can hold the server's answers to one request.

    `hold_answers_to(marker)`: from the first client message containing `marker` (say, the text
    of a statement) on, that connection hears nothing more from the server, until `release()`.
    The returned event is set when that message has gone through: the client is then awaiting
    an answer that will not come, which is where the test cancels it. Closing either side
    closes the other, so a client that drops its connection ends the server's backend.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._marker = b""
        self._holding: asyncio.Event = asyncio.Event()
        self._released = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> "HoldingProxy":
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()
        assert self._server is not None
        self._server.close()
        for handler in list(self._handlers):
            handler.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    def hold_answers_to(self, marker: bytes) -> asyncio.Event:
        self._marker = marker
        self._holding = asyncio.Event()
        self._released = asyncio.Event()
        return self._holding

    def release(self) -> None:
        self._marker = b""
        self._released.set()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        held: list[asyncio.Event] = []  # the release this connection waits for, once held
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            client_writer.close()
            return

        async def to_server() -> None:
            while data := await client_reader.read(65536):
                if self._marker and self._marker in data and not held:
                    held.append(self._released)
                    self._holding.set()
                server_writer.write(data)
                await server_writer.drain()

        async def to_client() -> None:
            while data := await server_reader.read(65536):
                if held:
                    await held[0].wait()
                client_writer.write(data)
                await client_writer.drain()

        pumps = [asyncio.ensure_future(to_server()), asyncio.ensure_future(to_client())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the proxy is closing; ending quietly (asyncio logs a stream handler that ends cancelled)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in (server_writer, client_writer):
                writer.close()
            self._handlers.discard(handler)
