"""Sessions with the request semantics, for requests and for code outside them.

`session_scope(engine)` is the one implementation behind both
`DatabaseDependencies.get_db_session` and `database_session()`:

1. the session starts with a transaction open (`session.in_transaction()` is true), but no
   connection is taken until the first statement;
2. the caller commits; whatever it did not commit is rolled back at the end;
3. an exception rolls back and propagates unchanged, except that a lost connection
   (terminated backend, restarting server, PgBouncer dropping us), an exhausted pool or a
   client-side command timeout becomes a `DatabaseUnavailableError` (HTTP 503) with the
   original error as its `__cause__`, a missing table (migrations not applied) becomes
   `DatabaseNotSetUpError` (`setup_errors`), and a value the database cannot take (a NUL in a
   text, a number out of range: `data_errors`) becomes an `InvalidInputError` (HTTP 422) with
   the driver's error, which quotes the value, not chained. One log line says what went
   wrong, without parameters, values or secrets: for an error of the database layer always,
   for any other exception only when a transaction was rolled back (`failure_log`);
4. the connection is always given back: on success, error and cancellation, with the
   cleanup shielded from further cancellation;
5. `expire_on_commit=False`.
"""

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import Request
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util.concurrency import in_greenlet
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from mountaineer_db.engines.data_errors import describe_error, invalid_input_error_for
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.engines.failover import is_lost_connection
from mountaineer_db.engines.pooler_statements import note_schema_change
from mountaineer_db.engines.stale_statements import schema_changed_error, stale_statement_cause
from mountaineer_db.engines.tenants import Tenant, bind_tenant, require_tenant
from mountaineer_db.exceptions import ClientDisconnectedError, SchemaChangedError, unavailable_error_for
from mountaineer_db.requests.commit_hooks import hooks_carried_over
from mountaineer_db.requests.failure_log import ScopedSyncSession, log_failure, origin_note, rolled_back_here
from mountaineer_db.requests.lazy_loads import LazyLoadCheckedSession
from mountaineer_db.requests.lifespan import with_development_database
from mountaineer_db.requests.setup_errors import not_set_up_error_for
from mountaineer_db.settings.appconfig import registered_config
from mountaineer_db.settings.config import DatabaseConfig

__all__ = [
    "AsyncSession",
    "DisconnectGuard",
    "RequestSyncSession",
    "SessionScope",
    "database_session",
    "run_shielded",
    "session_scope",
]

logger = logging.getLogger("mountaineer_db")


class RequestSyncSession(LazyLoadCheckedSession):
    """SQLModel's `Session`, keeping the connection it took across commits until it is closed
    (and its lazy loads checked: `mountaineer_db.requests.lazy_loads`).

    A plain session gives its connection back at every commit, so with the default `NULL`
    pool a handler that commits and then queries again (an action and its re-render) opens
    a second connection. This one takes a connection lazily, on the first statement, and
    keeps it until `close()`, `reset()` or `invalidate()`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kept: dict[Engine, Connection] = {}
        self._mdb_connected = False  # a statement of this session has gone to a connection
        self._mdb_flushes = 0  # flushes with changes started (`before_flush`): see `_had_pending_changes`

    def get_bind(self, mapper: Any = None, **kwargs: Any) -> Engine | Connection:
        """The kept connection for the engine the statement goes to (opened on first use)."""
        bind = super().get_bind(mapper, **kwargs)
        if not in_greenlet():
            return bind  # asked from plain async code: no I/O possible there, answer as SQLAlchemy would
        self._mdb_connected = True  # SQLAlchemy asks right before it takes a connection for a statement
        if not isinstance(bind, Engine):
            return bind  # the user bound a connection themselves
        kept = self._kept.get(bind)
        if kept is None or kept.closed:
            kept = self._kept[bind] = self._open(bind)
        return kept

    def _open(self, bind: Engine) -> Connection:
        """The connection kept for `bind` (the replica routing of read sessions overrides this)."""
        return bind.connect()

    def holds_transaction(self) -> bool:
        """True while a kept connection is inside a transaction (between a statement and its end)."""
        return any(connection.in_transaction() for connection in self._kept.values())

    def server_transaction_open(self) -> bool:
        """True once a statement of the current transaction has reached the server."""
        for connection in self._kept.values():
            if connection.closed or connection.invalidated:
                continue
            driver = connection.connection.driver_connection
            if driver is not None and driver.is_in_transaction():
                return True
        return False

    # Every statement of the session goes through one of these four (`Session.get`, `refresh`,
    # lazy loads and `Query` call `execute`; SQLModel's `exec` calls SQLAlchemy's `execute`
    # past them; `tests/test_compat.py` has the canary). The first statement of a transaction,
    # while nothing has reached the server, may be run again (`_replayed`); the others run as
    # SQLAlchemy runs them, for the cost of one check.

    def exec(self, statement: Any, **kwargs: Any) -> Any:
        """SQLModel's `exec`, the first statement of a transaction replayed as `_replayed` says."""
        run = super().exec
        if self.server_transaction_open():
            return run(statement, **kwargs)
        return _replayed(self, run, statement, **kwargs)

    def execute(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:
        """SQLAlchemy's `execute`, the first statement of a transaction replayed as `_replayed` says."""
        run = super().execute
        if self.server_transaction_open():
            return run(statement, params, **kwargs)
        return _replayed(self, run, statement, params, **kwargs)

    def scalar(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:
        """SQLAlchemy's `scalar`, the first statement of a transaction replayed as `_replayed` says."""
        run = super().scalar
        if self.server_transaction_open():
            return run(statement, params, **kwargs)
        return _replayed(self, run, statement, params, **kwargs)

    def scalars(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:
        """SQLAlchemy's `scalars`, the first statement of a transaction replayed as `_replayed` says."""
        run = super().scalars
        if self.server_transaction_open():
            return run(statement, params, **kwargs)
        return _replayed(self, run, statement, params, **kwargs)

    def _release_kept(self, *, invalidate: bool) -> None:
        kept = list(self._kept.values())
        self._kept.clear()
        for connection in kept:
            if invalidate and not connection.invalidated:
                connection.invalidate()
            connection.close()

    def close(self) -> None:
        """Close as SQLAlchemy does (rolling back), then give the kept connection back."""
        try:
            super().close()
        finally:
            self._release_kept(invalidate=False)

    def reset(self) -> None:
        """Reset as SQLAlchemy does, then give the kept connection back."""
        try:
            super().reset()
        finally:
            self._release_kept(invalidate=False)

    def invalidate(self) -> None:
        """Invalidate as SQLAlchemy does, then discard the kept connection too."""
        try:
            super().invalidate()
        finally:
            self._release_kept(invalidate=True)


def _replayed(session: "RequestSyncSession", run: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`run(*args, **kwargs)` (the session's statement); run again if it met a schema change as the first statement
    of a transaction (a migration), or lost its connection as the request's very first statement
    (a failover, a restart).

    A `SchemaChangedError` (see `mountaineer_db.engines.stale_statements`) on the first statement of
    a transaction, with nothing pending to flush, lost nothing: the transaction is rolled
    back and the statement runs once more on a fresh connection, so the request goes on. The
    objects loaded earlier and the `on_commit` hooks registered so far carry over to the new
    transaction.
    A lost connection (`mountaineer_db.engines.failover.is_lost_connection`) is replayed the same way,
    once, but only on the first statement of the request: never after an earlier statement
    reached a connection, so never after a commit either.
    Later statements of a transaction are never replayed (`RequestSyncSession.execute` and its
    siblings run them directly); their request gets the 503.
    """
    first_of_request = not session._mdb_connected
    flushes = session._mdb_flushes
    try:
        return run(*args, **kwargs)
    except SchemaChangedError:
        if _had_pending_changes(session, flushes):
            raise
        message = _STALE_REPLAY
    except Exception as error:
        if _had_pending_changes(session, flushes):
            raise
        if first_of_request and is_lost_connection(error):
            message = f"The request's first statement lost its connection ({describe_error(error)}); running it again."
        elif stale_statement_cause(error) is None:
            raise
        else:
            # Not seen by the engine's recovery (another error handler raised first, or SQLAlchemy
            # skipped its error events): drop the connection here, its statements are stale.
            for connection in session._kept.values():
                if not connection.invalidated:
                    note_schema_change(connection.connection.driver_connection)  # pooler statements: new texts
                    connection.invalidate()
            message = _STALE_REPLAY
    logger.info("%s", message)
    kept = list(session.identity_map.values())  # loaded by earlier transactions of the request
    with hooks_carried_over(session):  # on_commit hooks registered before the statement stay
        session.expunge_all()
        session.rollback()
        for instance in kept:
            session.add(instance)
    return run(*args, **kwargs)


def _had_pending_changes(session: "RequestSyncSession", flushes_before: int) -> bool:
    """True when `session` had changes to flush before the statement that failed: never replayed.

    Asked only once the statement has failed, so a request pays nothing for it: a flush the
    statement started (autoflush) was counted by `_count_flush`, whether it succeeded or not,
    and changes that were not flushed (`no_autoflush`) are still pending.
    """
    return session._mdb_flushes != flushes_before or bool(session.new or session.dirty or session.deleted)


def _count_flush(session: RequestSyncSession, flush_context: Any, instances: Any) -> None:
    session._mdb_flushes += 1


_STALE_REPLAY = "A statement met a schema change before anything else in its transaction; running it again."
event.listen(RequestSyncSession, "before_flush", _count_flush)


async def run_shielded(work: Coroutine[Any, Any, None]) -> None:
    """Run `work` to completion even if the caller is cancelled meanwhile (then re-raise).

    `work` runs in a task of its own that the caller's cancellation does not reach. Only once a
    cancellation has arrived does the caller wait inside an anyio shield too (so a cancelled
    anyio scope, as FastAPI's and Starlette's, stops re-delivering it): the common path pays
    for the task alone. On Python 3.12 and later the task starts eagerly: its first step runs
    at once (as its own task, so timeouts inside it belong to it), and cleanup that needs no I/O
    (a pooled connection going back after a commit) finishes there, without a trip through the
    event loop; a cancellation can only arrive once it waits, and then it is a task like any.
    """
    task = _start_task(work)
    if task.done():
        task.result()
        return
    cancelled: asyncio.CancelledError | None = None
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError as error:
        if task.done() and task.cancelled():
            raise
        cancelled = error
    while not task.done():
        try:
            with anyio.CancelScope(shield=True):
                await asyncio.shield(task)
        except asyncio.CancelledError as error:
            if task.done() and task.cancelled():
                raise
            cancelled = error
    task.result()
    if cancelled is not None:
        raise cancelled


if sys.version_info >= (3, 12):

    def _start_task(work: Coroutine[Any, Any, None]) -> "asyncio.Task[None]":
        """`work` as a task of its own, its first step run at once (eagerly), as that task.

        A loop with a task factory of its own (tracing, context propagation) makes the task as
        before, through that factory.
        """
        loop = asyncio.get_running_loop()
        if loop.get_task_factory() is None:
            return asyncio.Task(work, loop=loop, eager_start=True)
        return loop.create_task(work)

else:

    def _start_task(work: Coroutine[Any, Any, None]) -> "asyncio.Task[None]":
        """`work` as a task of its own, first run by the event loop (Python 3.11 starts no task eagerly)."""
        return asyncio.get_running_loop().create_task(work)  # `ensure_future`'s own path, two calls shorter


async def _release(session: AsyncSession, *, invalidate: bool) -> None:
    try:
        if invalidate:
            # Cancelled or interrupted, possibly mid-statement: drop the connection. asyncpg
            # has already asked the server to cancel a running statement; closing the socket
            # makes the server roll back.
            await session.invalidate()
        else:
            # Rolls back whatever was not committed (one round trip if a connection was
            # taken and a transaction is open; none otherwise), then gives the connection back.
            await session.close()
    except Exception as error:  # noqa: BLE001 - cleanup must not mask the handler's outcome
        logger.warning("Could not roll back cleanly (%s); discarding the connection.", describe_error(error))
        try:
            await session.invalidate()
        except Exception as second:  # noqa: BLE001
            logger.warning("Discarding the connection failed too: %s", type(second).__name__)


class SessionScope:
    """`session_scope`'s context manager (a class: a generator-based one costs ~10 µs more per request).

    The request dependency's own scope extends it (`mountaineer_db.requests.dependencies`).
    """

    __slots__ = ("_bind", "_engine", "_session", "_sync_session_class")

    def __init__(self, engine: AsyncEngine, sync_session_class: type[Session] | None, bind: AsyncEngine) -> None:
        self._engine = engine
        self._bind = bind
        self._sync_session_class = sync_session_class or ScopedSyncSession

    async def __aenter__(self) -> AsyncSession:
        return self.open_session()

    def open_session(self) -> AsyncSession:
        """What entering does: the session, its transaction begun (no I/O)."""
        session = AsyncSession(self._bind, expire_on_commit=False, sync_session_class=self._sync_session_class)
        # No I/O: the connection is taken by the first statement. Called on the sync session
        # directly: `await session.begin()` would run the same call in a greenlet (~18 µs).
        session.sync_session.begin()
        self._session = session
        return session

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> bool:
        session, engine = self._session, self._engine
        if error is None:
            await run_shielded(_release(session, invalidate=False))
            return False
        if not isinstance(error, Exception):  # cancelled or interrupted: drop the connection
            await run_shielded(_release(session, invalidate=True))
            return False
        rolled_back = rolled_back_here(session)
        unavailable = unavailable_error_for(error, url=engine.url)
        if unavailable is None and not isinstance(error, SchemaChangedError):
            stale = stale_statement_cause(error)  # missed by the engine's recovery: still a 503, not a 500
            unavailable = schema_changed_error(stale) if stale is not None else None
        not_set_up = not_set_up_error_for(error) if unavailable is None else None
        if not_set_up is not None:
            # A missing table: the migrations were not applied. One line naming the fix.
            logger.error("%s", not_set_up.message)
            await run_shielded(_release(session, invalidate=False))
            raise not_set_up from error
        invalid = invalid_input_error_for(error) if unavailable is None else None
        if invalid is not None:
            # A value the database cannot take: the client's 422, naming the kind of problem. The
            # driver's error is not chained: its message (and its frames) hold the value.
            log_failure(invalid, engine, transaction_open=True)
            await run_shielded(_release(session, invalidate=False))
            raise invalid from None
        if unavailable is None:
            log_failure(error, engine, transaction_open=rolled_back)
            await run_shielded(_release(session, invalidate=False))
            return False  # the handler's exception propagates unchanged
        # The connection is gone or unusable: discard it and answer "database unavailable"
        # (503) rather than a generic 500. The original error stays chained as the cause.
        logger.error("Rolled back the request's transaction%s: %s", origin_note(engine), unavailable.message)
        await run_shielded(_release(session, invalidate=True))
        raise unavailable from error


def session_scope(
    engine: AsyncEngine,
    *,
    sync_session_class: type[Session] | None = None,
    execution_options: dict[str, Any] | None = None,
) -> SessionScope:
    """`async with session_scope(engine) as session:` a session on `engine` with a transaction
    open; see the module docstring for the rules.

    `sync_session_class` replaces SQLModel's `Session` behind the `AsyncSession` (the request
    dependency passes one that keeps its connection across commits). `execution_options` hold
    for every connection the session takes, so for each of its transactions, not only the first
    (`{"isolation_level": "SERIALIZABLE"}`: SQLAlchemy's per-session isolation, a session bound
    to `engine.execution_options(...)`; the level is reset when a pooled connection goes back).
    """
    bind = engine.execution_options(**execution_options) if execution_options else engine
    return SessionScope(engine, sync_session_class, bind)


class DisconnectGuard:
    """Cancels a request's database work when its client disconnects (the documented policy).

    While the handler holds a transaction on the server, a client disconnect cancels the
    request's task: asyncpg sends the server a cancel request for the running statement,
    `session_scope` discards the connection (the server rolls back), and the cancellation
    leaves this guard as a `ClientDisconnectedError` (499) that no client will read. Work
    that already committed stays committed. The guard listens only once the request body has
    been read (as for actions), so it never takes a message the handler is waiting for.

    ```python
    async with DisconnectGuard(request) as guard, session_scope(engine) as session:
        guard.watch(session)
        ...
    ```
    """

    __slots__ = ("_fired", "_receive", "_task", "_watcher")

    def __init__(self, request: Request) -> None:
        self._receive = request.receive if hasattr(request, "_body") else None
        self._task = asyncio.current_task()
        self._watcher: asyncio.Task[None] | None = None
        self._fired = False

    def watch(self, session: AsyncSession) -> None:
        """Start listening for the disconnect, cancelling the work in flight on `session`."""
        if self._receive is not None and self._task is not None and self._watcher is None:
            self._watcher = asyncio.ensure_future(self._listen(self._receive, session))

    async def _listen(self, receive: Callable[[], Awaitable[Any]], session: AsyncSession) -> None:
        while True:
            message = await receive()
            if message.get("type") == "http.disconnect":
                break
        # The server also reports the end of a finished response this way; by then the
        # handler holds no transaction, so only a real mid-request disconnect cancels.
        if _holds_transaction(session) and self._task is not None:
            self._fired = True
            logger.warning("The client disconnected mid-request; cancelling its database work and rolling back.")
            self._task.cancel()

    async def __aenter__(self) -> "DisconnectGuard":
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        disconnected = self.finish(error)
        if disconnected is not None:
            raise disconnected from None

    def finish(self, error: BaseException | None) -> ClientDisconnectedError | None:
        """What leaving does (stop listening), without a context manager: the error to raise
        instead of `error` when the guard's own cancellation ends the block, else None."""
        if self._watcher is not None:
            self._watcher.cancel()
        ours = self._fired and isinstance(error, asyncio.CancelledError) and self._task is not None
        if ours and self._task is not None and self._task.uncancel() == 0:
            return ClientDisconnectedError("The client disconnected mid-request; its work was rolled back.")
        return None


def _holds_transaction(session: AsyncSession) -> bool:
    """True while `session` holds a server connection inside a transaction."""
    sync_session = session.sync_session
    return isinstance(sync_session, RequestSyncSession) and sync_session.holds_transaction()


@asynccontextmanager
async def database_session(
    config: DatabaseConfig | None = None, *, tenant: Tenant | None = None
) -> AsyncIterator[AsyncSession]:
    """A session for code outside a request (scripts, jobs, CLI commands), same guarantees.

    ```python
    async with database_session() as session:
        session.add(Todo(description="from a job"))
        await session.commit()
    ```

    `config` defaults to the registered Mountaineer app config. With DATABASE_EMBEDDED=true
    the development database is started first when nothing started it yet.

    `tenant` (with DATABASE_TENANT_SETTING): every transaction of the session serves that tenant
    (`ALL_TENANTS`: the bypass for admin work, docs/tenants.md); without it, none (rows under
    row-level security stay out of reach).
    """
    config = with_development_database(config or registered_config())
    if tenant is not None:
        require_tenant(tenant, config)  # before any I/O
    async with session_scope(engine_for(config)) as session:
        if tenant is not None:
            bind_tenant(session, tenant, config)
        yield session
