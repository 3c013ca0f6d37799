"""What a request sees when the primary fails over, and how engines recover by themselves.

A high-availability cluster (Patroni, a managed service) promotes a replica when the primary
fails or during a planned switchover. For the app this means two kinds of errors:

- **Lost connections.** The old primary shuts down: pooled connections, and statements in
  flight, fail with a connection error. SQLAlchemy discards the connection and replaces the
  pool's others at their next checkout; the request gets `DatabaseUnavailableError` (503),
  except that a request whose *first* statement met the lost connection is run again once on
  a fresh connection (`is_lost_connection`, used by the request session's replay): nothing of
  it reached the database, so nothing can be done twice. A statement after the first (the
  transaction had begun on the server), or any statement after a commit, is never run again.
- **A demoted primary.** A connection meant for the primary reaches a server that is now a
  replica (an old pooled connection through a proxy that had not switched yet, a DNS name
  still pointing at the old primary): writes fail with SQLSTATE 25006 "cannot execute ... in
  a read-only transaction". On an engine's connection that did not ask for a read-only
  transaction itself, `install_demoted_primary_recovery` treats it as the primary gone:
  the connection is discarded and every other pooled connection replaced at its next
  checkout (they reached the same server), and the request fails with `PrimaryDemotedError`,
  a 503 with `Retry-After: 1`. The next requests connect anew and reach the new primary
  (through a multi-host URL's `target_session_attrs=read-write`, HAProxy's health checks or
  the updated DNS).

Read sessions (`postgresql_readonly` transactions) keep their own 25006 handling: there a
write is the caller's mistake (`ReadOnlySessionError`), not a failover.
"""

import logging

import asyncpg
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Engine, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from mountaineer_db.exceptions import PrimaryDemotedError, describe_target, unavailable_error_for

__all__ = ["install_demoted_primary_recovery", "is_lost_connection", "primary_demoted_cause"]

logger = logging.getLogger("mountaineer_db")

READ_ONLY_TRANSACTION = "25006"


def primary_demoted_cause(error: BaseException | None) -> BaseException | None:
    """The server error behind `error` if it is SQLSTATE 25006 (read-only transaction)."""
    for _ in range(3):  # the error, SQLAlchemy's DBAPI adapter error, asyncpg's
        if error is None or getattr(error, "sqlstate", None) == READ_ONLY_TRANSACTION:
            return error
        error = error.__cause__
    return None


def _recover(context: ExceptionContext) -> BaseException | None:
    cause = primary_demoted_cause(context.original_exception)
    if cause is None or context.connection is None:
        return None
    if context.connection.get_execution_options().get("postgresql_readonly"):
        return None  # a read-only transaction the caller asked for: not a failover
    context.is_disconnect = True
    context.invalidate_pool_on_disconnect = True
    where = describe_target(context.engine.url, user=False) if context.engine is not None else "the database"
    message = (
        f"The primary's connection to {where} reached a read-only server ({str(cause).splitlines()[0]}): "
        "the primary was demoted (a failover or switchover). The request was rolled back and the pooled "
        "connections are being replaced; a retry reaches the new primary."
    )
    logger.warning("%s", message)
    return PrimaryDemotedError(message)


def install_demoted_primary_recovery(engine: AsyncEngine | Engine) -> None:
    """Make `engine` treat SQLSTATE 25006 as its primary demoted (see the module docstring).

    Safe to call more than once; engines built by mountaineer_db have it already.
    """
    target = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if not event.contains(target, "handle_error", _recover):
        event.listen(target, "handle_error", _recover)


def uninstall_demoted_primary_recovery(engine: AsyncEngine | Engine) -> None:
    """Undo `install_demoted_primary_recovery` (for measuring what it prevents)."""
    target = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if event.contains(target, "handle_error", _recover):
        event.remove(target, "handle_error", _recover)


def is_lost_connection(error: BaseException) -> bool:
    """True if `error` says an established connection was lost under a statement (a server that
    shut down or restarted, a terminated backend, a proxy that dropped us): what a replay on a
    fresh connection cures. Not a failed connect (already retried within the connect timeout),
    an exhausted pool, a command timeout (the statement may have run for long) or a demoted primary.
    """
    if not isinstance(error, sa_exc.DBAPIError) or isinstance(error, PrimaryDemotedError):
        return False
    cause = error.orig.__cause__ if error.orig is not None and error.orig.__cause__ else error.orig
    if isinstance(cause, TimeoutError) or primary_demoted_cause(error) is not None:
        return False
    if isinstance(cause, asyncpg.TargetServerAttributeNotMatched):
        return False
    return unavailable_error_for(error, url=_ANY_URL) is not None


_ANY_URL = URL.create("postgresql+asyncpg", host="localhost", database="-")
"""`unavailable_error_for` names a target in its message; only its verdict is used here."""
