"""Every error this library raises on purpose derives from `MountaineerDBError`.

Messages say what went wrong, which setting or input caused it, and what to do about
it. They never contain a password.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from fastapi import HTTPException
from pydantic import ValidationError
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

__all__ = [
    "ClientDisconnectedError",
    "ClusterError",
    "ConfigurationError",
    "DatabaseAdminError",
    "DatabaseConfigError",
    "DatabaseNotSetUpError",
    "DatabaseUnavailableError",
    "InvalidInputError",
    "LazyLoadError",
    "MigrationCheckError",
    "MigrationError",
    "MigrationLockTimeoutError",
    "MountaineerDBError",
    "PoolerPreparedStatementsError",
    "PrimaryDemotedError",
    "ReadOnlySessionError",
    "ResourceAlreadyExistsError",
    "ResourceConflictError",
    "ResourceNotFoundError",
    "SchemaChangedError",
    "TenantRequiredError",
    "describe_target",
    "unavailable_error_for",
]


class MountaineerDBError(Exception):
    """Base class of every error raised by mountaineer_db."""


class _HTTPMessageError(MountaineerDBError, HTTPException):
    """Ours and an HTTP error: `detail` is what the client sees, `message` what we log and show."""

    message: str

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class ConfigurationError(MountaineerDBError, ValueError):
    """A setting is missing, invalid or contradicts another one."""


class PoolerPreparedStatementsError(ConfigurationError):
    """DATABASE_POOLER_PREPARED_STATEMENTS is on, but the pooler passes named statements through.

    Raised at the first connection of an engine (and every later one until the pooler is
    fixed or the setting is turned off); see `mountaineer_db.engines.pooler_statements`.
    """


class DatabaseConfigError(ValidationError, ConfigurationError):
    """Raised when a `DatabaseConfig` cannot be built from the given values.

    It is a `pydantic.ValidationError` (so code that already catches those keeps
    working) and a `ConfigurationError`. Input values are never echoed back, so a
    password cannot leak through it.
    """


def describe_target(url: URL, *, user: bool = True) -> str:
    """`database "app" on db.internal:5432 as user "app"`: for messages, never with a password."""
    who = f' as user "{url.username}"' if user and url.username else ""
    if url.host is not None and "," in url.host:  # a multi-host URL: every host carries its port
        return f'database "{url.database}" on {url.host}{who}'
    return f'database "{url.database}" on {url.host or "localhost"}:{url.port or 5432}{who}'


class DatabaseUnavailableError(_HTTPMessageError):
    """The database could not be reached, refused us, or went away mid-request.

    It is also an HTTP 503 for FastAPI/Mountaineer: an action that hits it answers
    `503 Service Unavailable` with a `Retry-After` header instead of a bare 500.
    """

    def __init__(
        self,
        message: str,
        *,
        url: URL | None = None,
        host: str | None = None,
        port: int | None = None,
        database: str | None = None,
        retry_after: int = 1,
    ) -> None:
        HTTPException.__init__(
            self,
            status_code=503,
            detail="The database is unavailable. Try again shortly.",
            headers={"Retry-After": str(retry_after)},
        )
        if url is not None:  # the target's parts, never its password (a multi-host URL: its host list, no port)
            host, port, database = url.host, url.port or (None if "," in (url.host or "") else 5432), url.database
        self.message = message
        self.host = host
        self.port = port
        self.database = database
        self.args = (message,)

    def __reduce__(self) -> Any:
        return (_rebuild_unavailable, (self.message, self.host, self.port, self.database))


def _rebuild_unavailable(
    message: str, host: str | None, port: int | None, database: str | None
) -> DatabaseUnavailableError:
    return DatabaseUnavailableError(message, host=host, port=port, database=database)


class SchemaChangedError(DatabaseUnavailableError):
    """A statement prepared and cached before a schema change (a migration) could not run.

    An HTTP 503 like its base class, with its own detail: the request was rolled back, the
    connections holding stale statements are being replaced, and a retry will succeed. See
    `mountaineer_db.engines.stale_statements`.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=0)
        self.detail = "The database schema changed while this request ran. Try again."

    def __reduce__(self) -> Any:
        return (type(self), (self.message,))


class PrimaryDemotedError(DatabaseUnavailableError):
    """The server the primary's connection reached answered as a read-only replica (SQLSTATE
    25006): the primary was demoted by a failover or switchover.

    An HTTP 503 with `Retry-After: 1`: the request was rolled back, the pooled connections that
    reached the old primary are being replaced, and the retry reaches the new primary. See
    `mountaineer_db.engines.failover`.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=1)
        self.detail = "The database primary changed while this request ran. Try again."

    def __reduce__(self) -> Any:
        return (type(self), (self.message,))


# Server errors after which the connection is gone (or never became usable), whatever SQLAlchemy
# made of them. Deliberately not QueryCanceledError (57014: statement timeout, cancel requests),
# which shares their SQLSTATE class 57 but leaves the connection usable and is the caller's doing.
_CONNECTION_LOST = (
    asyncpg.ConnectionDoesNotExistError,  # the socket closed mid-operation
    asyncpg.PostgresConnectionError,  # class 08, incl. PgBouncer's "query_wait_timeout" and login failures
    asyncpg.AdminShutdownError,  # pg_terminate_backend, fast/immediate shutdown
    asyncpg.CrashShutdownError,
    asyncpg.CannotConnectNowError,  # the server is starting up or shutting down
    asyncpg.IdleInTransactionSessionTimeoutError,
    ConnectionError,
)


def unavailable_error_for(error: BaseException, *, url: URL) -> "DatabaseUnavailableError | None":
    """The `DatabaseUnavailableError` that `error` amounts to, or None if it is something else.

    Connection losses mid-request (a terminated backend, a restarting server, PgBouncer
    dropping us), an exhausted client pool and a client-side command timeout all mean "the
    database is unavailable right now": callers get one 503 error naming the target and the
    server's reason. Anything else (constraint violations, statement timeouts, bugs) is None
    and propagates unchanged. `url` names the target; its password is never used.
    """
    where = describe_target(url, user=False)
    if isinstance(error, sa_exc.TimeoutError):  # the client pool had no free connection in time
        reason = (
            f"{error.args[0] if error.args else error} All connections of the pool were busy for "
            "DATABASE_POOL_TIMEOUT; raise DATABASE_POOL_SIZE/DATABASE_MAX_OVERFLOW or lower the load."
        )
        return DatabaseUnavailableError(f"No connection to {where} available: {reason}", url=url)
    if isinstance(error, sa_exc.DBAPIError):
        cause = error.orig.__cause__ if error.orig is not None and error.orig.__cause__ else error.orig
        if error.connection_invalidated or isinstance(cause, _CONNECTION_LOST):
            detail = f"{type(cause).__name__}: {cause}" if cause is not None else str(error)
            return DatabaseUnavailableError(f"Lost the connection to {where} mid-request: {detail}", url=url)
        return None
    if isinstance(error, _CONNECTION_LOST) or _closed_under_us(error):
        # Raised by the driver itself, not wrapped by SQLAlchemy: SQLAlchemy's own setup of a
        # new connection (its codecs) met a server that closed the connection right after the
        # login (a shutdown or a restart in that moment).
        return DatabaseUnavailableError(
            f"Lost the connection to {where} while opening it: {type(error).__name__}: {error}", url=url
        )
    if isinstance(error, TimeoutError):  # asyncpg's command_timeout (DATABASE_COMMAND_TIMEOUT)
        return DatabaseUnavailableError(
            f"No answer from {where} within DATABASE_COMMAND_TIMEOUT; the connection was discarded. "
            "Check the network path to the server and the server's load.",
            url=url,
        )
    return None


def _closed_under_us(error: BaseException) -> bool:
    """asyncpg's "connection is closed": the connection was used after it closed. Its other
    `InterfaceError`s (bad arguments, an operation already in progress) are the caller's."""
    return type(error) is asyncpg.InterfaceError and str(error) == "connection is closed"


class ClientDisconnectedError(_HTTPMessageError):
    """The client went away while its request held a transaction; the work was cancelled.

    Raised in place of the `CancelledError` our disconnect guard caused, so the server sees
    an ordinary handled error (status 499, which no client will read) instead of a
    cancelled task.
    """

    def __init__(self, message: str) -> None:
        HTTPException.__init__(self, status_code=499, detail="Client closed the request.")
        self.message = message
        self.args = (message,)


class _HTTPError(_HTTPMessageError):
    """A library error that is also an HTTP error: `str()` is the message for logs and
    developers, `detail` the short text a client sees (never the message, which may name
    hosts, paths or tables)."""

    status: int = 500
    default_detail: str = "Internal Server Error"

    def __init__(self, message: str, *, detail: str | None = None) -> None:
        HTTPException.__init__(self, status_code=self.status, detail=detail or self.default_detail)
        self.message = message
        self.args = (message,)

    def __reduce__(self) -> Any:
        return (type(self), (self.message,), dict(self.__dict__))


class ResourceNotFoundError(_HTTPError, LookupError):
    """Something that was asked for (a database, a revision, a row) does not exist.

    Also an HTTP 404 for FastAPI and Mountaineer (`get_or_404` raises it for a missing row);
    clients see `detail`, "Not found." unless the raiser says otherwise.
    """

    status = 404
    default_detail = "Not found."


class ResourceConflictError(_HTTPError):
    """The change conflicts with what the database holds: an HTTP 409.

    `map_integrity_errors()` raises it for foreign-key violations (a reference to a missing
    row, or a delete of a row still referred to), and its subclass
    `ResourceAlreadyExistsError` for unique violations. `constraint` names the constraint.
    """

    status = 409
    default_detail = "This conflicts with the current state of the data."

    def __init__(self, message: str, *, detail: str | None = None, constraint: str | None = None) -> None:
        super().__init__(message, detail=detail)
        self.constraint = constraint


class ResourceAlreadyExistsError(ResourceConflictError):
    """Something that was to be created (a database, a migrations folder, a row) already exists.

    An HTTP 409; `map_integrity_errors()` raises it for unique violations, naming the
    constraint, never the values.
    """

    default_detail = "This already exists."


class InvalidInputError(_HTTPError, ValueError):
    """The database cannot take a value it was sent: an HTTP 422, naming the kind of problem, never the value.

    Request sessions (and `database_session()`) raise it in place of PostgreSQL's data
    exceptions (SQLSTATE class 22: a NUL in a text, a number out of the column's range, text
    where a number goes, a text too long) and of asyncpg's errors for arguments it cannot
    encode (an int past int64, an unpaired surrogate). `detail` is what the client reads,
    `kind` the same as a word (`invalid_text`, `out_of_range`, `invalid_datetime`, `too_long`,
    `invalid_value`, `division_by_zero`), `sqlstate` the SQLSTATE (22000 for asyncpg's own).
    The driver's error, whose message quotes the value, is not chained.
    """

    status = 422
    default_detail = "A value is not valid for the database."

    def __init__(
        self, message: str, *, detail: str | None = None, kind: str = "invalid_value", sqlstate: str | None = None
    ) -> None:
        super().__init__(message, detail=detail)
        self.kind = kind
        self.sqlstate = sqlstate


class ClusterError(MountaineerDBError):
    """A local PostgreSQL or PgBouncer process could not be set up, started or stopped."""


class DatabaseAdminError(MountaineerDBError):
    """PostgreSQL refused an admin operation (missing privilege, database in use, ...)."""


class MigrationError(MountaineerDBError):
    """A migration command could not do what was asked (the message says why and what to do)."""


class PendingRevision(Protocol):
    """A migration script not applied yet (`mountaineer_db.migrations.Revision` is one).

    A protocol so that this module, the bottom layer, needs nothing from the migrations package.
    """

    @property
    def id(self) -> str: ...
    @property
    def message(self) -> str: ...
    @property
    def down_revisions(self) -> tuple[str, ...]: ...
    @property
    def is_head(self) -> bool: ...
    @property
    def path(self) -> Path: ...


class MigrationCheckError(MigrationError):
    """The database does not match the models: unapplied revisions or schema differences."""

    def __init__(self, message: str, *, pending: Sequence[PendingRevision], differences: list[str]) -> None:
        super().__init__(message)
        self.pending = pending
        self.differences = differences


class MigrationLockTimeoutError(MigrationError):
    """A migration waited longer than MIGRATIONS_LOCK_TIMEOUT for a table lock and was rolled back."""


class DatabaseNotSetUpError(_HTTPError):
    """A statement met a table that does not exist (SQLSTATE 42P01): the migrations were not applied.

    Raised by request sessions in place of the driver's error, with one log line naming the
    fix. In development (Mountaineer's ENVIRONMENT is not "production") the app answers with
    a page (JSON for actions) saying what to run; in production with the usual 500, whose
    detail names nothing.
    """

    default_detail = "Internal Server Error"
    reason: str = ""
    """What PostgreSQL said, e.g. `relation "todo" does not exist`."""
    commands: tuple[str, ...] = ()
    """The commands that set the database up (the development page shows them)."""


class ReadOnlySessionError(MountaineerDBError):
    """A write was attempted on a read-only session: one that reads from a replica.

    Raised when such a session flushes ORM changes, or in place of the server's "cannot execute
    ... in a read-only transaction". The message says which session it was and what to use for
    writes (`DatabaseDependencies.get_db_session`). A programming error, so an HTTP 500.
    """


class TenantRequiredError(_HTTPError, PermissionError):
    """With DATABASE_TENANT_SETTING on, a request session got no tenant (or a second, different one).

    Raised by `DatabaseDependencies.for_tenant(...)` when the app's tenant dependency returns
    None, before any statement runs: an HTTP 403. An app that wants 401 for anonymous clients
    raises its own `HTTPException(401)` in its tenant dependency instead of returning None.
    """

    status = 403
    default_detail = "No tenant for this request."


class LazyLoadError(MountaineerDBError):
    """A relationship that was not loaded was read in a request session (DATABASE_LAZY_LOADS).

    The message names the model, the attribute, the controller and action, and the fix
    (an eager loader option in the query, or `await session.refresh(obj, ["attr"])`). Where
    SQLAlchemy itself failed (`MissingGreenlet`), its error is the `__cause__`. A programming
    error, so an HTTP 500. `model`, `attribute` and `origin` hold the names.
    """

    def __init__(self, message: str, *, model: str, attribute: str, origin: str | None) -> None:
        super().__init__(message)
        self.model = model
        self.attribute = attribute
        self.origin = origin
