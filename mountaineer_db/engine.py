"""Engines: built lazily from a `DatabaseConfig`, cached per event loop and settings.

Connections are opened by our own connector rather than by SQLAlchemy's URL handling, so
that every connection is opened the same way, whatever the pool:

- unnamed prepared statements by default, so PgBouncer in transaction mode never sees a
  statement name from another client (no "prepared statement ... already exists");
- the server-side timeouts ride on the transaction's BEGIN as `SET LOCAL` in the same
  round trip, because PgBouncer rejects them as startup parameters;
- a bounded connect timeout, no SSL attempt on loopback unless asked for, an SSL context
  built once per engine rather than per connection;
- connection failures become one `DatabaseUnavailableError` naming host, port and
  database, never the password, with the asyncpg error (and its locals) not chained.
"""

import asyncio
import logging
import ssl as ssl_module
import time
import weakref
from collections.abc import Hashable
from typing import Any, NoReturn

import asyncpg
from sqlalchemy import event, exc
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool
from sqlalchemy.util import await_

from mountaineer_db.config import DatabaseConfig, PoolType, SSLMode
from mountaineer_db.exceptions import DatabaseUnavailableError, describe_target
from mountaineer_db.stale_statements import install_stale_statement_recovery

__all__ = ["Connector", "describe_target", "dispose_engines", "engine_for"]

logger = logging.getLogger("mountaineer_db")

# Errors that mean "the server is there but not ready yet": retried within the connect timeout.
_TRANSIENT_CONNECT_ERRORS: tuple[type[BaseException], ...] = (asyncpg.CannotConnectNowError,)


def _interval(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _ssl_argument(mode: SSLMode) -> ssl_module.SSLContext | str | bool:
    if mode in (SSLMode.DISABLE, SSLMode.ALLOW):
        return False
    if mode is SSLMode.REQUIRE:
        # Equivalent to asyncpg's own "require", but built once instead of per connection.
        context = ssl_module.SSLContext(ssl_module.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl_module.CERT_NONE
        return context
    return mode.value  # prefer / verify-ca / verify-full: asyncpg's logic (fallback, root certs)


class _AdaptedConnection(AsyncAdapt_asyncpg_connection):
    """SQLAlchemy's asyncpg adapter, with BEGIN and the per-transaction settings in one round trip."""

    __slots__ = ("_begin_suffix", "_close_timeout", "_idle_timeout")

    def __init__(
        self,
        dbapi: Any,
        connection: Any,
        *,
        begin_suffix: str,
        idle_timeout: float | None = None,
        close_timeout: float = 5.0,
        **kw: Any,
    ) -> None:
        super().__init__(dbapi, connection, **kw)  # type: ignore[no-untyped-call]
        self._begin_suffix = begin_suffix
        self._idle_timeout = idle_timeout
        self._close_timeout = close_timeout

    def _handle_exception(self, error: Exception) -> NoReturn:
        if isinstance(error, TimeoutError) and not self._connection.is_closed():
            # asyncpg's command_timeout (DATABASE_COMMAND_TIMEOUT) expired: the network or the
            # server is silent. Close the socket now (a graceful close would wait on the same
            # silence, then log an error) and report a lost connection, which SQLAlchemy
            # invalidates and we turn into DatabaseUnavailableError.
            self._connection.terminate()
            error = asyncpg.ConnectionDoesNotExistError(
                "no answer within DATABASE_COMMAND_TIMEOUT; the connection was closed. Check the "
                "network path to the server and the server's load."
            )
        # The server's FATAL "idle-in-transaction timeout" arrives while asyncpg is idle and is
        # dropped; all the next statement sees is "connection is closed". Name the likely cause.
        elif (
            self._idle_timeout is not None
            and self._transaction is not None
            and type(error) is asyncpg.InterfaceError
            and self._connection.is_closed()
        ):
            error = asyncpg.IdleInTransactionSessionTimeoutError(
                "connection is closed: it closed while the transaction was idle, most likely ended by the "
                f"server's idle-in-transaction timeout (DATABASE_IDLE_IN_TRANSACTION_TIMEOUT="
                f"{self._idle_timeout:g}s). Keep transactions short, or raise the timeout."
            )
        super()._handle_exception(error)

    def close(self) -> None:
        """Close gracefully, but never wait longer than the command (else connect) timeout.

        asyncpg waits for the server to acknowledge a close, by default forever: on a silent
        network a request's cleanup would hang. Past the bound the socket is dropped, with
        one warning line rather than a second traceback for an error already reported.
        """
        self.rollback()  # type: ignore[no-untyped-call]
        connection: Any = self._connection  # SQLAlchemy's protocol types the timeout as int
        try:
            await_(connection.close(timeout=self._close_timeout))
        except (TimeoutError, OSError) as error:
            self._connection.terminate()
            logger.warning("Closing a connection timed out or failed (%s); dropped it.", type(error).__name__)

    async def _start_transaction(self) -> None:
        if self.isolation_level == "autocommit":
            return
        begin = "BEGIN"
        if self.isolation_level:
            begin += " ISOLATION LEVEL " + self.isolation_level.replace("_", " ").upper()
        if self.readonly:
            begin += " READ ONLY"
        if self.deferrable:
            begin += " DEFERRABLE"
        try:
            # No arguments: asyncpg uses the simple query protocol, which allows several
            # statements, so BEGIN and the SET LOCALs cost a single round trip.
            connection: Any = self._connection
            await connection.execute(begin + self._begin_suffix)
        except Exception as error:  # noqa: BLE001 - translated by SQLAlchemy's handler, as upstream does
            self._handle_exception(error)
        else:
            self._transaction = _PlainTransaction(self._connection)  # type: ignore[assignment]


class _PlainTransaction:
    """What the adapter needs of a transaction: commit() and rollback()."""

    __slots__ = ("_connection",)

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def commit(self) -> None:
        await self._connection.execute("COMMIT")

    async def rollback(self) -> None:
        if not self._connection.is_closed():
            await self._connection.execute("ROLLBACK")


def _unnamed_statement() -> str:
    return ""


class Connector:
    """Opens asyncpg connections for one engine. Holds the password; its repr does not."""

    def __init__(self, config: DatabaseConfig, url: URL, *, statement_cache_size: int) -> None:
        self.url = url
        self.target = describe_target(url)
        self.connect_timeout = config.DATABASE_CONNECT_TIMEOUT
        server_settings = {}
        if config.application_name:
            server_settings["application_name"] = config.application_name
        app_name = url.query.get("application_name")
        if isinstance(app_name, str):
            server_settings["application_name"] = app_name
        self._kwargs: dict[str, Any] = {
            "host": url.host,
            "port": url.port or 5432,
            "user": url.username,
            "password": url.password,
            "database": url.database,
            "ssl": _ssl_argument(config.sslmode_for(url)),
            "command_timeout": config.DATABASE_COMMAND_TIMEOUT,
            "statement_cache_size": statement_cache_size,
            "server_settings": server_settings or None,
        }
        settings = [
            ("statement_timeout", config.DATABASE_STATEMENT_TIMEOUT),
            ("lock_timeout", config.DATABASE_LOCK_TIMEOUT),
            ("idle_in_transaction_session_timeout", config.DATABASE_IDLE_IN_TRANSACTION_TIMEOUT),
        ]
        self.begin_suffix = "".join(
            f"; SET LOCAL {name} = '{_interval(value)}'" for name, value in settings if value is not None
        )

    def __repr__(self) -> str:
        return f"Connector({self.target})"

    async def connect(self) -> asyncpg.Connection:
        """Open one connection, or raise `DatabaseUnavailableError` within the connect timeout."""
        deadline = time.monotonic() + self.connect_timeout
        while True:
            remaining = deadline - time.monotonic()
            reason = ""
            try:
                return await asyncpg.connect(timeout=max(remaining, 0.001), **self._kwargs)
            except _TRANSIENT_CONNECT_ERRORS as error:
                reason = _reason(error)
            except Exception as error:  # noqa: BLE001 - every failure is reported as one error below
                reason = _reason(error)
                remaining = 0
            if remaining > 0.1:
                await asyncio.sleep(min(0.05, remaining - 0.1))
                continue
            # Raised outside the except block: the asyncpg error, whose frames hold the
            # password in their locals, is neither chained nor kept as context.
            raise DatabaseUnavailableError(f"Could not connect to {self.target}: {reason}", url=self.url)


def _reason(error: BaseException) -> str:
    """What went wrong, and what to check, for a failed connection attempt."""
    if isinstance(error, (asyncio.TimeoutError, TimeoutError)):
        return (
            "no answer within DATABASE_CONNECT_TIMEOUT. Check that the host and port are right, "
            "that the server is running and that no firewall drops the traffic."
        )
    if isinstance(error, asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError):
        return f"{error}. Check POSTGRES_USER and POSTGRES_PASSWORD (or the URL's user and password)."
    if isinstance(error, asyncpg.InvalidCatalogNameError):
        return f"{error}. Create it (mountaineer-db createdb) or check POSTGRES_DB."
    if isinstance(error, asyncpg.TooManyConnectionsError):
        return f"{error}. The server is out of connection slots; put PgBouncer in front or lower the pool sizes."
    if isinstance(error, asyncpg.CannotConnectNowError):
        return f"{error}. The server is starting up or shutting down; retry shortly."
    if isinstance(error, OSError):
        detail = error.strerror or str(error)
        return f"{detail}. Check POSTGRES_HOST and POSTGRES_PORT and that the server accepts TCP connections."
    return f"{type(error).__name__}: {error}"


def _build_engine(config: DatabaseConfig, url: URL) -> AsyncEngine:
    fixed = config.DATABASE_POOL_TYPE is PoolType.FIXED_PROCESS
    cache_size = config.DATABASE_STATEMENT_CACHE_SIZE
    if cache_size is None:
        cache_size = 100 if fixed else 0
    connector = Connector(config, url, statement_cache_size=cache_size)
    engine_holder: list[AsyncEngine] = []

    def creator() -> Any:
        dbapi = engine_holder[0].sync_engine.dialect.dbapi
        return await_(
            _AdaptedConnection.create(
                dbapi,
                connector.connect(),
                begin_suffix=connector.begin_suffix,
                idle_timeout=config.DATABASE_IDLE_IN_TRANSACTION_TIMEOUT,
                close_timeout=config.DATABASE_COMMAND_TIMEOUT or config.DATABASE_CONNECT_TIMEOUT,
                prepared_statement_cache_size=cache_size,
                prepared_statement_name_func=None if cache_size else _unnamed_statement,
            )
        )

    kwargs: dict[str, Any] = {
        "echo": config.DATABASE_ECHO,
        "hide_parameters": True,
        "creator": creator,
        "poolclass": AsyncAdaptedQueuePool if fixed else NullPool,
    }
    if fixed:
        # Forward only what the user set; SQLAlchemy's defaults stay in force otherwise.
        for setting, argument in (
            ("DATABASE_POOL_SIZE", "pool_size"),
            ("DATABASE_MAX_OVERFLOW", "max_overflow"),
            ("DATABASE_POOL_TIMEOUT", "pool_timeout"),
            ("DATABASE_POOL_RECYCLE", "pool_recycle"),
            ("DATABASE_POOL_PRE_PING", "pool_pre_ping"),
        ):
            value = getattr(config, setting)
            if value is not None:
                kwargs[argument] = value
    # The URL only names the dialect and is shown in logs and reprs: no password in it.
    engine = create_async_engine(url.set(password=None), **kwargs)
    engine_holder.append(engine)
    install_stale_statement_recovery(engine)  # issue 13: stale cached statements after a migration
    if fixed:
        event.listen(engine.sync_engine.pool, "checkout", _discard_if_closed)
    return engine


def _discard_if_closed(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Pool checkout hook: a pooled connection the server has closed is replaced, not handed out.

    When a backend is terminated (pg_terminate_backend, a server restart, an idle timeout)
    the server closes the socket and asyncpg notices at once; checking that flag costs no
    I/O, unlike `pool_pre_ping`. SQLAlchemy retries the checkout with a fresh connection.
    """
    if dbapi_connection._connection.is_closed():
        raise exc.DisconnectionError("The server closed this pooled connection while it was idle.")


_ENGINE_FIELDS = (
    "DATABASE_POOL_TYPE",
    "DATABASE_POOL_SIZE",
    "DATABASE_MAX_OVERFLOW",
    "DATABASE_POOL_TIMEOUT",
    "DATABASE_POOL_RECYCLE",
    "DATABASE_POOL_PRE_PING",
    "DATABASE_STATEMENT_CACHE_SIZE",
    "DATABASE_ECHO",
    "DATABASE_CONNECT_TIMEOUT",
    "DATABASE_COMMAND_TIMEOUT",
    "DATABASE_STATEMENT_TIMEOUT",
    "DATABASE_LOCK_TIMEOUT",
    "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT",
    "POSTGRES_SSLMODE",
)

_engines: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Hashable, AsyncEngine]]" = (
    weakref.WeakKeyDictionary()
)

# Per-request fast path: the same config object (and url object) as last time gives the same
# engine without rebuilding the settings key (hashing a URL renders it as a string, ~40 µs a
# request). The entry holds the config and url themselves, so their ids cannot be reused, and
# the config's URL object, so a config whose URL was filled in later is looked up afresh.
_IdentityEntry = tuple[DatabaseConfig, URL | None, URL | None, AsyncEngine]
_recent: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[int, int], _IdentityEntry]]" = (
    weakref.WeakKeyDictionary()
)
_RECENT_LIMIT = 16


def engine_for(config: DatabaseConfig, *, url: URL | None = None) -> AsyncEngine:
    """The engine for `config` on the running event loop, created on first use.

    `url` overrides the config's URL (the admin and migration commands pass the
    migrations URL). Engines are never shared between event loops, so a test suite that
    runs each test in its own loop never sees "attached to a different loop".
    """
    loop = asyncio.get_running_loop()
    recent = _recent.get(loop)
    identity = (id(config), id(url))
    if recent is not None:
        entry = recent.get(identity)
        if entry is not None and entry[0] is config and entry[1] is url and entry[2] is config.SQLALCHEMY_DATABASE_URI:
            return entry[3]
    target = url or config.database_url
    key = (target, config.application_name, *(getattr(config, name) for name in _ENGINE_FIELDS))
    per_loop = _engines.get(loop)
    if per_loop is None:
        per_loop = _engines[loop] = {}
    engine = per_loop.get(key)
    if engine is None:
        engine = per_loop[key] = _build_engine(config, target)
        logger.debug("Created engine for %s (%s pool)", describe_target(target), config.DATABASE_POOL_TYPE.value)
    if recent is None or len(recent) >= _RECENT_LIMIT:
        recent = _recent[loop] = {}
    recent[identity] = (config, url, config.SQLALCHEMY_DATABASE_URI, engine)
    return engine


async def dispose_engines() -> None:
    """Close every cached engine. Call on shutdown, and between tests that change settings.

    Engines of the running loop are disposed properly; engines of other loops (closed
    ones, in a test suite) are dropped without I/O, since their loop cannot run it.
    """
    try:
        current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    entries = list(_engines.items())
    _engines.clear()
    _recent.clear()
    for loop, engines in entries:
        if loop is current:
            for engine in engines.values():
                await engine.dispose()


def engines_on_this_loop() -> list[AsyncEngine]:
    """The engines cached for the running loop (for tests and diagnostics)."""
    return list(_engines.get(asyncio.get_running_loop(), {}).values())
