"""Recovering from prepared statements made stale by a schema change (a migration while serving).

With `DATABASE_POOL_TYPE=FIXED_PROCESS`, pooled connections keep their prepared statements
(SQLAlchemy's asyncpg statement cache, 100 per connection by default) together with the
result types and type codecs asyncpg looked up when it prepared them. A migration that
changes what a cached statement returns (a column's type, a dropped and re-added column, an
attribute added to a composite type, a re-created enum) makes the next execution fail:

- `InvalidCachedStatementError` ("cached plan must not change result type"), or
  "cache lookup failed for type ...": SQLAlchemy's dialect notices these and re-prepares
  lazily on every connection of the process (its `_invalidate_schema_cache` timestamp), but
  the request that met the error fails with a generic 500;
- `OutdatedSchemaCacheError` (a composite type changed): asyncpg closes the statement but
  SQLAlchemy keeps it cached, so every later use on that connection fails with "the prepared
  statement is closed" until the process restarts.

`install_stale_statement_recovery(engine)` listens to the engine's public `handle_error`
event. On any of these errors it marks the error as a disconnect with the whole pool to be
invalidated (`ExceptionContext.is_disconnect` / `invalidate_pool_on_disconnect`), so SQLAlchemy
discards this connection and replaces every other pooled connection at its next checkout:
no statement prepared before the change is used again, whichever cache held it. The request
that met the stale statement fails with `SchemaChangedError`, a 503 asking the client to
retry. Requests already running a stale statement on other connections at that moment fail
the same way; every request that starts after the first failure gets a fresh connection.

Through PgBouncer with DATABASE_POOLER_PREPARED_STATEMENTS, replacing the client's connections is
not enough: PgBouncer maps a re-prepared text to the server statement that went stale. The
recovery also tells the engine to prepare new statement texts from then on
(`mountaineer_db.engines.pooler_statements`).

The default `NULL` pool opens a connection per request and uses unnamed statements, so it
never meets a stale statement (unless DATABASE_POOLER_PREPARED_STATEMENTS is on, see above).
A `FIXED_PROCESS` pool with `DATABASE_STATEMENT_CACHE_SIZE=0`
has no stale statements either, but its connections still cache type codecs, which a changed
composite type outdates (`OutdatedSchemaCacheError`, handled the same way).
"""

import logging

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import Engine, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from mountaineer_db.engines.connections import _driver_connection
from mountaineer_db.engines.pooler_statements import note_schema_change
from mountaineer_db.exceptions import SchemaChangedError

__all__ = ["install_stale_statement_recovery", "schema_changed_error", "stale_statement_cause"]

logger = logging.getLogger("mountaineer_db")


def _is_stale(error: BaseException) -> bool:
    if isinstance(error, asyncpg.InvalidCachedStatementError | asyncpg.OutdatedSchemaCacheError):
        return True
    message = str(error)
    if isinstance(error, asyncpg.InternalServerError):
        return message.startswith("cache lookup failed for type")
    if isinstance(error, asyncpg.ProtocolError):
        # Through PgBouncer >= 1.21 (DATABASE_POOLER_PREPARED_STATEMENTS): the client's cached
        # statement still describes the old columns while PgBouncer prepared the same text anew
        # on a server connection that has the new ones, so rows come back wider than described
        # (asyncpg's `prepared_stmt.pyx`). The connection's description is stale: the same cure.
        return "is different from what was described" in message
    # Left behind by an OutdatedSchemaCacheError that was not handled here: asyncpg closed the
    # statement, SQLAlchemy's cache still holds it.
    return isinstance(error, asyncpg.InterfaceError) and "the prepared statement is closed" in message


def stale_statement_cause(error: BaseException | None) -> BaseException | None:
    """The asyncpg error behind `error` if it means "a cached statement met a schema change"."""
    for _ in range(3):  # the error, SQLAlchemy's DBAPI adapter error, asyncpg's
        if error is None or _is_stale(error):
            return error
        error = error.__cause__
    return None


def _recover(context: ExceptionContext) -> BaseException | None:
    cause = stale_statement_cause(context.original_exception)
    if cause is None:
        return None
    # Not a lost connection, but the cure is the same: SQLAlchemy discards this connection and
    # replaces every pooled one at its next checkout, dropping all statements cached before.
    context.is_disconnect = True
    context.invalidate_pool_on_disconnect = True
    # Through a pooler that prepares statements itself (DATABASE_POOLER_PREPARED_STATEMENTS), new
    # client connections would be mapped to the same stale server statements: new texts from now on.
    note_schema_change(_driver_connection(context))
    logger.warning(
        "A cached prepared statement met a database schema change (%s); replacing every pooled connection.",
        _reason(cause),
    )
    return schema_changed_error(cause)


def _reason(cause: BaseException) -> str:
    return f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}".rstrip(": ")


def schema_changed_error(cause: BaseException) -> SchemaChangedError:
    """The 503 for a request whose statement met a schema change (`cause`: the asyncpg error)."""
    return SchemaChangedError(
        f"The database schema changed under a statement this process had prepared and cached ({_reason(cause)}), "
        "most likely a migration applied while the app was serving. The request was rolled back and every "
        "pooled connection is being replaced, so later requests prepare their statements anew; retry it."
    )


def install_stale_statement_recovery(engine: AsyncEngine | Engine) -> None:
    """Make `engine` recover from statements made stale by a schema change (see the module docstring).

    ```python
    engine = create_async_engine(url, poolclass=AsyncAdaptedQueuePool)
    install_stale_statement_recovery(engine)
    ```

    Safe to call more than once; engines built by mountaineer_db have it already.
    """
    target = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if not event.contains(target, "handle_error", _recover):
        event.listen(target, "handle_error", _recover)


def uninstall_stale_statement_recovery(engine: AsyncEngine | Engine) -> None:
    """Undo `install_stale_statement_recovery` (for measuring the failures it prevents)."""
    target = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if event.contains(target, "handle_error", _recover):
        event.remove(target, "handle_error", _recover)
