"""One session per request: Mountaineer's re-render after a `@sideeffect` gets the action's.

What this relies on in Mountaineer 0.20 (`mountaineer/actions/sideeffect_dec.py`):

- a `@sideeffect` request runs the action with its FastAPI dependencies, then re-runs the
  controller's `render()` with dependencies resolved again by `mountaineer_di` (not by
  FastAPI), in the same task, while the action's dependencies are still open;
- the re-render gets a synthetic GET `Request` built from a plain dict, with no `app` in its
  ASGI scope (FastAPI always puts one there).

`get_db_session` offers its session (`offer_to_rerender`) while the action runs; a
resolution that looks like that re-render (`serves`) borrows it (`borrowed`) instead of
opening a second session and connection. Before the re-render runs, whatever the action
left uncommitted is rolled back (with a warning when it had changes), so the re-render
shows committed data only; what the re-render leaves uncommitted is rolled back after it.

If a future Mountaineer builds the re-render differently (say, with `app` in its scope),
the re-render is simply not recognised and gets its own session: a second connection that
sees committed data only, never the action's uncommitted work. `tests/test_compat.py`
names the upstream change that would do this.

Ending a transaction here never expires what the handlers loaded (`end_transaction`):
SQLAlchemy's rollback expires every instance in the session, even with
`expire_on_commit=False`, and an expired SQLModel table object handed to Mountaineer
serializes as `{}`. Instances are detached first, keeping every loaded attribute.
"""

import contextvars
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import ORMExecuteState
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import HTTPConnection

from mountaineer_db.engines.origins import INTERNAL_STATEMENT
from mountaineer_db.requests.failure_log import note_rollback
from mountaineer_db.requests.session import RequestSyncSession, run_shielded

__all__ = [
    "SharedSession",
    "borrowed",
    "end_transaction",
    "offer",
    "offer_to_rerender",
    "shared_session",
    "track_writes",
    "withdraw",
]

logger = logging.getLogger("mountaineer_db")


class SharedSession:
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
            self.nested(request)
            and "app" not in request.scope  # type: ignore[union-attr]
            and (self.engine is None or engine is None or engine is self.engine)
        )

    def nested(self, request: HTTPConnection | None) -> bool:
        """True for a resolution inside this request's handling, on a request of its own."""
        return request is not None and self.is_open and request.scope is not self.scope


_shared: contextvars.ContextVar[SharedSession | None] = contextvars.ContextVar(
    "mountaineer_db_request_session", default=None
)


def shared_session() -> SharedSession | None:
    """The session offered in this context (by `offer_to_rerender`), if any."""
    return _shared.get()


class _Offer:
    """`offer_to_rerender`'s context manager (a class: cheaper per request than a generator)."""

    __slots__ = ("_state", "_token")

    def __init__(self, state: SharedSession | None) -> None:
        self._state = state
        self._token: contextvars.Token[SharedSession | None] | None = None

    async def __aenter__(self) -> None:
        if self._state is not None:
            self._token = offer(self._state)

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> bool:
        if self._state is not None and self._token is not None:
            withdraw(self._state, self._token)
        return False


def offer(state: SharedSession) -> contextvars.Token[SharedSession | None]:
    """What `offer_to_rerender` does on entry, without a context manager: pass the token to `withdraw`."""
    return _shared.set(state)


def withdraw(state: SharedSession, token: contextvars.Token[SharedSession | None]) -> None:
    """End what `offer` began: the session is no longer offered, here or to anything that kept `state`."""
    state.is_open = False
    try:  # noqa: SIM105 - contextlib.suppress would cost three calls per request
        _shared.reset(token)
    except ValueError:  # torn down from another context: leave that context alone
        pass


def offer_to_rerender(
    session: AsyncSession, request: HTTPConnection | None, *, engine: AsyncEngine | None = None
) -> _Offer:
    """`async with offer_to_rerender(...)`: hand `session` to any re-render resolved inside the block
    (same task, same request).

    Used by `get_db_session` and by `mountaineer_db.testing`. `engine=None` hands it over
    whatever engine the re-render's own `get_db` would give. Without a request (resolved
    outside one, by mountaineer_di), there is nothing to share.
    """
    return _Offer(None if request is None else SharedSession(session, request, engine))


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


async def has_uncommitted_changes(session: AsyncSession) -> bool:
    """Pending ORM changes, or writes the server has seen in the open transaction.

    Reads, row locks included, are not changes. The server is asked only when the session's
    connection is inside a transaction since its last commit (one round trip, `_WROTE_ON_SERVER`).
    Not seen as a change: a `NOTIFY` alone (it takes no lock). Seen as one although nothing
    changed: an UPDATE or DELETE that matched no row, or `LOCK TABLE` in a writer's mode, in a
    transaction that also locked rows or advanced a sequence.
    """
    if session.new or session.deleted or any(session.is_modified(item) for item in session.dirty):
        return True
    if session.info.get(_WROTE):
        return True
    sync_session = session.sync_session
    transaction = sync_session.get_transaction()
    if transaction is None or not transaction.is_active:
        return transaction is not None  # a failed transaction is "uncommitted" too
    if not isinstance(sync_session, RequestSyncSession) or not sync_session.holds_transaction():
        return False  # nothing reached the server since the last commit
    connection = await session.connection()
    return bool(await connection.scalar(_WROTE_ON_SERVER))


_WROTE_ON_SERVER = text(
    # A transaction that changed data has a transaction id and holds, until it ends, a lock
    # of a writer's mode on what it changed: ROW EXCLUSIVE for INSERT, UPDATE, DELETE and
    # MERGE (whether sent as SQL, through the ORM or by a function), stronger for DDL. A row
    # lock alone (`SELECT ... FOR UPDATE`) also gets a transaction id, but holds ROW SHARE.
    # Sequences are left out: `nextval` takes ROW EXCLUSIVE, and no rollback undoes it. Locks
    # taken after a savepoint that was rolled back are gone, with what it wrote. pg_locks is
    # read only when a transaction id was assigned (CASE evaluates in order).
    "SELECT CASE WHEN txid_current_if_assigned() IS NULL THEN false ELSE EXISTS ("
    "SELECT FROM pg_locks AS l JOIN pg_class AS c ON c.oid = l.relation "
    "WHERE l.pid = pg_backend_pid() AND l.locktype = 'relation' "
    "AND l.mode NOT IN ('AccessShareLock', 'RowShareLock') AND c.relkind <> 'S') END"
).execution_options(**{INTERNAL_STATEMENT: True})


async def end_transaction(session: AsyncSession, *, keep: Sequence[Any] = ()) -> None:
    """Roll back what is uncommitted without expiring anything a handler may have handed out.

    Every instance is detached first (its loaded attributes stay, readable with no I/O),
    then the transaction is rolled back (no I/O if nothing reached the server), and the
    session is ready for a new one. `keep` are instances to attach again afterwards (the
    test kit's, which outlive a request); they are expired if something was rolled back,
    as what they hold may be what was just undone.
    """
    changed = bool(keep) and await has_uncommitted_changes(session)
    session.expunge_all()
    try:
        await session.rollback()
    except Exception as error:  # noqa: BLE001 - the connection is unusable; discard it
        logger.warning("Could not roll back cleanly (%s); discarding the connection.", type(error).__name__)
        await session.invalidate()
    for instance in keep:
        state = inspect(instance)
        if state.detached and not state.was_deleted:
            session.add(instance)
            if changed:
                session.expire(instance)


@asynccontextmanager
async def borrowed(state: SharedSession, *, keep: Sequence[Any] = ()) -> AsyncIterator[AsyncSession]:
    """The action's session, prepared for the re-render, and tidied up after it."""
    session = state.session
    changed = await has_uncommitted_changes(session)
    if changed:
        logger.warning(
            "The action behind %s left uncommitted changes; rolled them back before re-rendering. "
            "Call `await session.commit()` in the action to keep them.",
            state.label,
        )
    await run_shielded(end_transaction(session, keep=keep))
    if not session.in_transaction():  # attaching `keep` again may have begun one already
        await session.begin()  # no I/O: the first statement continues on the kept connection
    try:
        yield session
    except Exception:
        # Rolled back here; logged once, by the request's own dependency it propagates to.
        note_rollback(session)
        await run_shielded(end_transaction(session, keep=keep))
        raise
    except BaseException:
        await run_shielded(session.invalidate())
        raise
    else:
        await run_shielded(end_transaction(session, keep=keep))
