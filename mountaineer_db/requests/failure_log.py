"""The one log line a request session writes about a failure, and when it writes it.

Whether a transaction was rolled back is asked of the session: request sessions
(`session.RequestSyncSession`) look at their kept connection, sessions of `database_session()`
(`ScopedSyncSession`) note when their transaction takes a connection.

`log_failure` is called by `session_scope` when an exception leaves a session. The line names
the request's origin (DATABASE_TAG_REQUESTS) and describes the error with
`data_errors.describe_error`: never a parameter, a value a client sent, or a secret.

- An error of the database layer (the driver's, SQLAlchemy's, one of ours that is not a
  client's 4xx: a connection refused, a read-only session written to) is logged at ERROR,
  always: it is ours to report.
- Anything else, bad client input (a 4xx, a request that does not validate) or an error of the
  app's own code, only when a transaction was rolled back, at INFO. The server (uvicorn,
  gunicorn) logs an exception of the app's code itself, with its traceback; ours would be a
  second copy. Its message is the app's, so only the class is named.
"""

import logging

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import SessionTransaction
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from mountaineer_db.engines.data_errors import describe_error, driver_error_of
from mountaineer_db.engines.origins import current_origin, tags_requests
from mountaineer_db.exceptions import LazyLoadError, MountaineerDBError

__all__ = ["ScopedSyncSession", "log_failure", "note_rollback", "origin_note", "rolled_back_here"]

logger = logging.getLogger("mountaineer_db")


def log_failure(error: Exception, engine: AsyncEngine, *, transaction_open: bool) -> None:
    """Log `error`, raised in a session on `engine`, by the rules of the module docstring.

    `transaction_open`: a statement of the failed transaction had reached the server.
    """
    client_error = (isinstance(error, HTTPException) and error.status_code < 500) or isinstance(
        error, RequestValidationError
    )
    from_database = (
        isinstance(error, sa_exc.SQLAlchemyError | MountaineerDBError) or driver_error_of(error) is not None
    ) and not isinstance(error, LazyLoadError)  # the app's code read an unloaded relationship: its bug, not ours
    failure = from_database and not client_error
    if not (failure or transaction_open):
        return  # nothing reached the server, nothing was rolled back, and the framework reports the error
    level = logging.ERROR if failure else logging.INFO
    logger.log(level, "Rolled back the request's transaction%s after %s", origin_note(engine), describe_error(error))


def origin_note(engine: AsyncEngine) -> str:
    """` in HomeController.add_todo` when the engine tags requests (DATABASE_TAG_REQUESTS)."""
    origin = current_origin() if tags_requests(engine.sync_engine) else None
    return f" in {origin}" if origin else ""


class ScopedSyncSession(Session):
    """SQLModel's `Session` for `database_session()`, noting whether its transaction took a connection."""

    _mdb_began = False

    def server_transaction_open(self) -> bool:
        """True once the current transaction took a connection (its BEGIN goes with the first statement)."""
        return self._mdb_began


def _took_connection(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    session._mdb_began = True  # type: ignore[attr-defined]


def _ended(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session._mdb_began = False  # type: ignore[attr-defined]


event.listen(ScopedSyncSession, "after_begin", _took_connection)
event.listen(ScopedSyncSession, "after_transaction_end", _ended)

_ROLLED_BACK_EARLY = "mountaineer_db.rolled_back_early"


def _transaction_open(session: AsyncSession) -> bool:
    """True when a statement of the current transaction reached the server (there is something to roll back)."""
    check = getattr(session.sync_session, "server_transaction_open", None)
    return bool(check()) if callable(check) else True  # a session class we do not know: assume so


def note_rollback(session: AsyncSession) -> None:
    """Before rolling back a failed part of the request (the re-render after a @sideeffect): note
    whether a transaction was open, for the one log line the request's session writes."""
    if _transaction_open(session):
        session.info[_ROLLED_BACK_EARLY] = True


def rolled_back_here(session: AsyncSession) -> bool:
    """Whether the failure leaving `session` rolls back a transaction, or one was rolled back before it
    (`note_rollback`)."""
    return bool(session.info.pop(_ROLLED_BACK_EARLY, False)) or _transaction_open(session)
