"""Read-only request sessions, served by a replica when one is fit, else by the primary.

`read_session()` is what `DatabaseDependencies.get_db_read_session` hands out, and what
`get_db_session` hands a GET request with DATABASE_READ_ROUTING=renders. It keeps the request
semantics (`session_scope`): open with a transaction, no connection until the first statement.
At that first statement the session picks its server (`_Route.connect`):

1. the replicas fit to serve reads (`ReplicaSet.candidates`), in turn, those known to have
   replayed the client's last write first. For each: connect, then send the transaction's
   BEGIN at once rather than with the first statement (same round trip count, but a replica
   that PgBouncer can no longer reach fails here, within DATABASE_CONNECT_TIMEOUT, instead
   of in the handler's statement); read its status when due; wait, on the first replica
   only and up to DATABASE_REPLICA_MAX_WAIT, for it to replay the client's last write;
2. else the primary.

Either way the transactions are `BEGIN READ ONLY` (SQLAlchemy's `postgresql_readonly`, riding
on our BEGIN), so any write fails on the server too; ORM flushes are refused before that.
Both raise `ReadOnlySessionError`, saying to use `get_db_session` for writes.

Sending BEGIN early calls SQLAlchemy's asyncpg adapter's `_start_transaction()` (the
coroutine its cursors await before a connection's first statement), in 2.0 and 2.1 alike:
tests/test_replicas.py has the canary.
"""

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import HTTPConnection

from mountaineer_db.engines.tenants import stage_for
from mountaineer_db.exceptions import ReadOnlySessionError
from mountaineer_db.replicas.read_your_writes import await_, required_position
from mountaineer_db.replicas.replica_set import Replica, ReplicaSet
from mountaineer_db.requests.session import RequestSyncSession, session_scope

__all__ = ["EXPLICIT", "RENDERS", "ReadOnlyRequestSession", "is_page_read", "is_rerender", "read_session"]

logger = logging.getLogger("mountaineer_db")

EXPLICIT = "explicit"
RENDERS = "renders"
_WHY = {
    EXPLICIT: (
        "This session is read-only: it comes from DatabaseDependencies.get_db_read_session, which reads "
        "from a replica. Use DatabaseDependencies.get_db_session (SessionDep) for writes."
    ),
    RENDERS: (
        "This session is read-only: with DATABASE_READ_ROUTING=renders, GET requests read from a replica. "
        "Write in an action, or set DATABASE_READ_ROUTING=primary."
    ),
}
_READ_ONLY = "mountaineer_db_read_only"  # connection execution option: which kind of read session
_instrumented: "weakref.WeakSet[Engine]" = weakref.WeakSet()


def is_page_read(request: HTTPConnection | None) -> bool:
    """A real GET (or HEAD) request served by the app: what DATABASE_READ_ROUTING=renders routes."""
    return request is not None and "app" in request.scope and request.scope.get("method") in ("GET", "HEAD")


def is_rerender(request: HTTPConnection | None) -> bool:
    """Mountaineer's re-render after a @sideeffect: a synthetic request without `app` in its scope."""
    return request is not None and "app" not in request.scope


class ReadOnlyRequestSession(RequestSyncSession):
    """A request session whose connection is chosen by its route, read-only on every server."""

    _mdb_route: "_Route | None" = None

    def _open(self, bind: Engine) -> Connection:
        route = self._mdb_route
        if route is None:
            return _read_only(bind.connect(), EXPLICIT)
        return route.connect(bind, self)


def _refuse_flush(session: Session, flush_context: Any, instances: Any) -> None:
    changed = [item for item in session.dirty if session.is_modified(item)]
    if not (session.new or changed or session.deleted):
        return
    route: _Route | None = getattr(session, "_mdb_route", None)
    raise ReadOnlySessionError(
        f"Cannot write {len(session.new)} new, {len(changed)} changed and {len(session.deleted)} deleted "
        f"object(s). {_WHY[route.label if route is not None else EXPLICIT]}"
    )


event.listen(ReadOnlyRequestSession, "before_flush", _refuse_flush)


def _translate_read_only(context: ExceptionContext) -> BaseException | None:
    """`handle_error` hook: the server's "read-only transaction" error, on a read session, explained."""
    if getattr(context.original_exception, "sqlstate", None) != "25006" or context.connection is None:
        return None
    label = context.connection.get_execution_options().get(_READ_ONLY)
    if label not in _WHY:
        return None
    original = context.original_exception
    server = original.__cause__ if original.__cause__ is not None else original
    what = str(server)
    return ReadOnlySessionError(f"{what[:1].upper()}{what[1:]}. {_WHY[label]}")


def _read_only(connection: Connection, label: str) -> Connection:
    engine = connection.engine
    if engine not in _instrumented:
        event.listen(engine, "handle_error", _translate_read_only)
        _instrumented.add(engine)
    return connection.execution_options(postgresql_readonly=True, **{_READ_ONLY: label})


class _Route:
    """Where one read session's statements go, decided at its first statement."""

    __slots__ = ("label", "replicas", "request")

    def __init__(self, replicas: ReplicaSet | None, request: HTTPConnection | None, label: str) -> None:
        self.replicas = replicas
        self.request = request
        self.label = label

    def connect(self, primary: Engine, session: Session | None = None) -> Connection:
        """A read-only connection on the first replica fit for this read, else on the primary.

        Runs in SQLAlchemy's greenlet (the session's first statement), so it can await.
        """
        replicas = self.replicas
        if replicas is not None:
            position = required_position(self.request, replicas.signer)
            for number, replica in enumerate(replicas.candidates(position)):
                connection = self._on_replica(replicas, replica, position, may_wait=number == 0, session=session)
                if connection is not None:
                    return connection
        return _read_only(primary.connect(), self.label)

    def _on_replica(
        self, replicas: ReplicaSet, replica: Replica, position: int, *, may_wait: bool, session: Session | None = None
    ) -> Connection | None:
        try:
            connection = replicas.engine(replica).sync_engine.connect()
        except Exception as error:  # noqa: BLE001 - an unreachable replica: the read goes elsewhere
            replicas.mark_down(replica, error)
            return None
        _read_only(connection, self.label)
        if session is not None:
            stage_for(session, connection)  # the session's tenant rides on the BEGIN sent now
        try:
            admitted = await_(_begin_and_admit(replicas, replica, connection, position, may_wait))
            if not admitted:
                # Roll the read-only transaction back here, where an interruption is handled as
                # below, not in the pool's reset when the connection is closed: SQLAlchemy 2.0
                # leaves a connection checked out when that reset is cancelled.
                connection.connection.dbapi_connection.rollback()  # type: ignore[union-attr]
        except BaseException as error:
            # Could not begin, read its status or roll back, or cancelled meanwhile: the connection is ours
            # alone until it is returned, and its state unknown (BEGIN or a query may be in
            # flight). Drop the socket now: a graceful close would wait on the same silence,
            # and a cancelled task must not wait at all.
            connection.connection.driver_connection.terminate()  # type: ignore[union-attr]
            connection.invalidate()
            connection.close()
            if not isinstance(error, Exception):
                raise  # a cancellation says nothing about the replica
            replicas.mark_down(replica, error)
            return None
        if not admitted:
            connection.close()  # rolled back already: no I/O
            return None
        return connection


async def _begin_and_admit(
    replicas: ReplicaSet, replica: Replica, connection: Connection, position: int, may_wait: bool
) -> bool:
    raw = connection.connection
    async with asyncio.timeout(replicas.timeout):
        # SQLAlchemy's own BEGIN for this connection, sent now instead of with the first statement.
        await raw.dbapi_connection._start_transaction()  # type: ignore[union-attr]
    return await replicas.admit(replica, raw.driver_connection, position, may_wait=may_wait)


@asynccontextmanager
async def read_session(
    engine: AsyncEngine, replicas: ReplicaSet | None, request: HTTPConnection | None, *, label: str
) -> AsyncIterator[AsyncSession]:
    """A read-only request session on `engine`'s replicas (`replicas`), else on `engine` itself.

    No `DisconnectGuard`: a read holds no locks worth cancelling for, and one guard per request
    (the request's `get_db_session`) listens for the disconnect; a second listener would share
    its messages, and would take the end of a finished response for a disconnect while this
    session still has its read transaction open.
    """
    async with session_scope(engine, sync_session_class=ReadOnlyRequestSession) as session:
        session.sync_session._mdb_route = _Route(replicas, request, label)  # type: ignore[attr-defined]
        yield session

