"""FastAPI / Mountaineer dependencies; exported as `mountaineer_db.DatabaseDependencies`.

```python
from mountaineer import ControllerBase, Depends
from mountaineer_db import AsyncSession, DatabaseDependencies

class HomeController(ControllerBase):
    async def render(
        self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)
    ) -> HomeRender:
        ...
```

One session, one connection per request
----------------------------------------
A `@sideeffect` request runs the action, then Mountaineer re-runs `render()` with its
dependencies resolved again, by `mountaineer_di` rather than FastAPI, on a synthetic GET
request, while the action's dependencies are still open. `get_db_session` hands that
re-render the action's session instead of opening a second one:

- the request's session keeps the one server connection it took across its commits, until
  the request ends (a client connection only: behind PgBouncer in transaction mode the
  server slot is held only while a transaction is open);
- before the re-render runs, whatever the action left uncommitted is rolled back (with a
  warning when it had changes), so the re-render shows committed data only;
- what the re-render leaves uncommitted is rolled back when it finishes; the request's
  own dependency still closes the session and the connection at the end.

The re-render is recognised by what Mountaineer 0.20 hands it: a request built without an
`app` in its ASGI scope, resolved in the same task (same `contextvars` context) while the
action's session is open. Anything else gets its own session, as before.
"""

import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, cast

from fastapi import Depends
from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.util.concurrency import in_greenlet
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import HTTPConnection, Request

from mountaineer_db.config import DatabaseConfig
from mountaineer_db.engine import engine_for
from mountaineer_db.session import DisconnectGuard, _shielded, registered_config, session_scope

__all__ = ["RequestSyncSession", "SessionDep", "get_database_config", "get_db", "get_db_session", "offer_to_rerender"]

logger = logging.getLogger("mountaineer_db")


async def get_database_config() -> DatabaseConfig:
    """The registered app config, as a `DatabaseConfig` (async: no thread hop per request)."""
    return registered_config()


async def get_db(config: DatabaseConfig = Depends(get_database_config)) -> AsyncEngine:
    """The engine for `config`, created on first use and cached per event loop.

    Outside FastAPI: `engine = await get_db(config=my_config)`.
    """
    return engine_for(config)


class RequestSyncSession(Session):
    """SQLModel's `Session`, keeping the connection it took across commits until it is closed.

    A plain session gives its connection back at every commit, so with the default `NULL`
    pool a handler that commits and then queries again (an action and its re-render) opens
    a second connection. This one takes a connection lazily, on the first statement, and
    keeps it until `close()`, `reset()` or `invalidate()`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._kept: dict[Engine, Connection] = {}

    def get_bind(self, mapper: Any = None, **kwargs: Any) -> Engine | Connection:
        """The kept connection for the engine the statement goes to (opened on first use)."""
        bind = super().get_bind(mapper, **kwargs)
        if not isinstance(bind, Engine) or not in_greenlet():
            # Asked from plain async code (no I/O possible there), or the user bound a
            # connection themselves: answer as SQLAlchemy would.
            return bind
        kept = self._kept.get(bind)
        if kept is None or kept.closed:
            kept = self._kept[bind] = bind.connect()
        return kept

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


class _SharedSession:
    """The request's session, offered to Mountaineer's re-render while the action runs."""

    __slots__ = ("engine", "is_open", "label", "scope", "session")

    def __init__(self, session: AsyncSession, request: HTTPConnection, engine: AsyncEngine | None) -> None:
        self.session = session
        self.engine = engine
        self.scope = request.scope
        self.label = str(request.scope.get("path", "?"))
        self.is_open = True

    def serves(self, request: HTTPConnection | None, engine: AsyncEngine | None) -> bool:
        """True for Mountaineer's re-render of this request (see the module docstring)."""
        return (
            request is not None
            and self.is_open
            and request.scope is not self.scope
            and "app" not in request.scope
            and (self.engine is None or engine is None or engine is self.engine)
        )


_shared: contextvars.ContextVar[_SharedSession | None] = contextvars.ContextVar(
    "mountaineer_db_request_session", default=None
)


@asynccontextmanager
async def offer_to_rerender(
    session: AsyncSession, request: HTTPConnection | None, *, engine: AsyncEngine | None = None
) -> AsyncIterator[None]:
    """Hand `session` to any re-render resolved inside this block (same task, same request).

    Used by `get_db_session` and by `mountaineer_db.testing`. `engine=None` hands it over
    whatever engine the re-render's own `get_db` would give.
    """
    if request is None:  # resolved outside a request (mountaineer_di without one): nothing to share
        yield
        return
    state = _SharedSession(session, request, engine)
    token = _shared.set(state)
    try:
        yield
    finally:
        state.is_open = False
        # Torn down from another context (ValueError): leave that context alone.
        with contextlib.suppress(ValueError):
            _shared.reset(token)


_WROTE = "mountaineer_db.wrote_since_commit"


def track_writes(session: AsyncSession) -> None:
    """Note ORM flushes and INSERT/UPDATE/DELETE statements in `session.info` until commit.

    For sessions without a kept connection of their own (the test kit's, which runs inside
    savepoints), where the server cannot tell what the current savepoint wrote.
    """
    sync_session = session.sync_session

    def wrote(*_: Any) -> None:
        sync_session.info[_WROTE] = True

    def executed(state: ORMExecuteState) -> None:
        if state.is_insert or state.is_update or state.is_delete:
            wrote()

    def cleared(*_: Any) -> None:
        sync_session.info.pop(_WROTE, None)

    event.listen(sync_session, "after_flush", wrote)
    event.listen(sync_session, "do_orm_execute", executed)
    event.listen(sync_session, "after_commit", cleared)
    event.listen(sync_session, "after_soft_rollback", cleared)


async def _has_uncommitted_changes(session: AsyncSession) -> bool:
    """Pending ORM changes, or writes the server has seen in the open transaction."""
    if session.new or session.deleted or any(session.is_modified(item) for item in session.dirty):
        return True
    if session.info.get(_WROTE):
        return True
    transaction = session.get_transaction()
    if transaction is None or not transaction.is_active:
        return transaction is not None  # a failed transaction is "uncommitted" too
    sync_session = session.sync_session
    kept = getattr(sync_session, "_kept", {})
    if not any(connection.in_transaction() for connection in kept.values()):
        return False  # nothing reached the server since the last commit
    # An xid is assigned on the first write of a transaction; reads never get one.
    connection = await session.connection()
    return bool(await connection.scalar(text("SELECT txid_current_if_assigned() IS NOT NULL")))


async def _end_transaction(session: AsyncSession) -> None:
    """Roll back what is uncommitted (no I/O if nothing reached the server); discard on failure."""
    try:
        await session.rollback()
    except Exception as error:  # noqa: BLE001 - the connection is unusable; discard it
        logger.warning("Could not roll back cleanly (%s); discarding the connection.", type(error).__name__)
        await session.invalidate()


@asynccontextmanager
async def _borrowed(state: _SharedSession) -> AsyncIterator[AsyncSession]:
    """The action's session, prepared for the re-render, and tidied up after it."""
    session = state.session
    if await _has_uncommitted_changes(session):
        logger.warning(
            "The action behind %s left uncommitted changes; rolled them back before re-rendering. "
            "Call `await session.commit()` in the action to keep them.",
            state.label,
        )
    await _shielded(_end_transaction(session))
    await session.begin()  # no I/O: the first statement continues on the kept connection
    try:
        yield session
    except Exception:
        # Rolled back here; logged once, by the request's own dependency it propagates to.
        await _shielded(_end_transaction(session))
        raise
    except BaseException:
        await _shielded(session.invalidate())
        raise
    else:
        await _shielded(_end_transaction(session))


async def get_db_session(
    engine: AsyncEngine = Depends(get_db),
    # HTTPConnection, not Request: FastAPI injects the request either way, while mountaineer_di
    # passes it when it has one and otherwise leaves the None default (it insists on a value
    # for parameters annotated Request), so resolving without a request keeps working.
    request: HTTPConnection = None,  # type: ignore[assignment]
) -> AsyncIterator[AsyncSession]:
    """A session with a transaction open. The handler commits; the rest is rolled back.

    One per request: Mountaineer's re-render after a `@sideeffect` gets the action's session
    (see the module docstring), and the session keeps one connection across commits.
    """
    state = _shared.get()
    if state is not None and state.serves(request, engine):
        async with _borrowed(state) as session:
            yield session
        return
    async with (
        # FastAPI hands a Request here; without one (None) the guard stays idle.
        DisconnectGuard(cast(Request, request)) as guard,
        session_scope(engine, sync_session_class=RequestSyncSession) as session,
        offer_to_rerender(session, request, engine=engine),
    ):
        guard.watch(session)  # a client disconnect cancels the work in flight (README: Failure behaviour)
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_db_session)]
"""`session: SessionDep` in a handler is `session: AsyncSession = Depends(get_db_session)`."""
