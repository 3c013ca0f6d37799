"""How every connection is opened and behaves, whatever the pool and the SQLAlchemy version.

SQLAlchemy wraps the connection our `Connector` opens in its own asyncpg adapter, reached
through public APIs only: the pool's `creator` hands SQLAlchemy's asyncpg DBAPI our
coroutine (`dbapi.connect(async_creator_fn=...)`, the form SQLAlchemy's `async_creator`
documentation points to for adapter arguments), and everything else is asyncpg's own
extension point, a `connection_class`:

- unnamed prepared statements by default, so PgBouncer in transaction mode never sees a
  statement name from another client (no "prepared statement ... already exists");
- the server-side timeouts ride on the transaction's BEGIN as `SET LOCAL` in the same
  round trip (`MountaineerConnection.transaction`), because PgBouncer rejects them as
  startup parameters; so does the request's tag (DATABASE_TAG_REQUESTS, `origins`);
- closing is bounded: asyncpg would otherwise wait forever for a silent server;
- a bounded connect timeout, no SSL attempt on loopback unless asked for, an SSL context
  built once per engine rather than per connection;
- the SCRAM key derivation (~1 ms of CPU) done once per password, salt and iteration count
  in the process rather than per connection (`mountaineer_db.engines.scram`, DATABASE_SCRAM_CACHE);
- connection failures become one `DatabaseUnavailableError` naming host, port and
  database, never the password, with the asyncpg error (and its locals) not chained.
"""

import asyncio
import logging
import ssl as ssl_module
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from sqlalchemy import exc
from sqlalchemy.engine import URL, ExceptionContext

from mountaineer_db.engines.origins import application_name_suffix, current_origin
from mountaineer_db.engines.scram import scram_attempt
from mountaineer_db.engines.tenants import TenantState
from mountaineer_db.exceptions import DatabaseUnavailableError, describe_target
from mountaineer_db.settings.config import DatabaseConfig, SSLMode
from mountaineer_db.settings.multi_host import hosts_of, is_multi_host, session_attrs_of

__all__ = ["Connector", "MountaineerConnection", "translate_driver_error"]

logger = logging.getLogger("mountaineer_db")

# Errors that mean "the server is there but not ready yet": retried within the connect timeout.
_TRANSIENT_CONNECT_ERRORS: tuple[type[BaseException], ...] = (asyncpg.CannotConnectNowError,)
# With several hosts (a multi-host URL), also "none has the wanted role" and "refused": a failover
# in progress, whose new primary usually answers within the connect timeout.
_TRANSIENT_MULTI_HOST_ERRORS = (*_TRANSIENT_CONNECT_ERRORS, asyncpg.TargetServerAttributeNotMatched, OSError)


_CLIENT_CHECK_INTERVAL = "500ms"
"""How often PostgreSQL (14+) checks, during a statement, that the client is still connected."""


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


class MountaineerConnection(asyncpg.Connection):  # type: ignore[misc]
    """asyncpg's connection, with our BEGIN and a bounded close. Made only by `Connector`."""

    __slots__ = (
        "_mdb_begin_suffix",
        "_mdb_close_timeout",
        "_mdb_idle_timeout",
        "_mdb_open_transaction",
        "_mdb_tag_prefix",
        "_mdb_tenancy",
    )

    def _mdb_setup(
        self,
        *,
        begin_suffix: str,
        close_timeout: float,
        idle_timeout: float | None,
        tag_prefix: str | None = None,
        tenancy: TenantState | None = None,
    ) -> None:
        if self.get_server_version() >= (14,):
            # The server checks that the client is still there while a statement runs, and
            # cancels the statement if not: a client that drops the connection (a cancelled
            # task, a killed worker) does not leave a statement running on the server.
            begin_suffix += f"; SET LOCAL client_connection_check_interval = '{_CLIENT_CHECK_INTERVAL}'"
        self._mdb_begin_suffix = begin_suffix
        self._mdb_close_timeout = close_timeout
        self._mdb_idle_timeout = idle_timeout
        self._mdb_open_transaction = False
        self._mdb_tag_prefix = tag_prefix  # None: DATABASE_TAG_REQUESTS is off
        self._mdb_tenancy = tenancy  # None: DATABASE_TENANT_SETTING is off (`mountaineer_db.engines.tenants`)

    def transaction(self, *, isolation: str | None = None, readonly: bool = False, deferrable: bool = False) -> Any:
        """asyncpg's `transaction()`; with per-transaction settings, BEGIN carries them.

        SQLAlchemy's adapter starts each transaction with `connection.transaction(...).start()`
        and ends it with `commit()` or `rollback()` on that object.
        """
        suffix = self._mdb_begin_suffix
        if self._mdb_tag_prefix is not None:
            # DATABASE_TAG_REQUESTS: the request's controller and action, for this transaction only.
            origin = current_origin()
            if origin is not None:
                suffix += application_name_suffix(self._mdb_tag_prefix, origin)
        if self._mdb_tenancy is not None:
            # DATABASE_TENANT_SETTING: the tenant staged for this transaction, or '' (`tenants`).
            suffix += self._mdb_tenancy.begin_suffix()
        if not suffix:
            return super().transaction(isolation=isolation, readonly=readonly, deferrable=deferrable)
        begin = "BEGIN"
        if isolation:
            begin += " ISOLATION LEVEL " + isolation.replace("_", " ").upper()
        if readonly:
            begin += " READ ONLY"
        if deferrable:
            begin += " DEFERRABLE"
        return _SettingsTransaction(self, begin + suffix)

    async def close(self, *, timeout: float | None = None) -> None:
        """Close gracefully, but never wait longer than the command (else connect) timeout.

        asyncpg waits for the server to acknowledge a close, by default forever: on a silent
        network a request's cleanup would hang. Past the bound the socket is dropped, with
        one warning line rather than a second traceback for an error already reported.
        """
        try:
            await super().close(timeout=self._mdb_close_timeout if timeout is None else timeout)
        except (TimeoutError, OSError) as error:
            self.terminate()
            logger.warning("Closing a connection timed out or failed (%s); dropped it.", type(error).__name__)


class _SettingsTransaction:
    """`BEGIN ...; SET LOCAL ...` in one simple-protocol round trip; `COMMIT`/`ROLLBACK` to end."""

    __slots__ = ("_begin", "_connection")

    def __init__(self, connection: MountaineerConnection, begin: str) -> None:
        self._connection = connection
        self._begin = begin

    async def start(self) -> None:
        # No arguments: asyncpg uses the simple query protocol, which allows several statements.
        await self._connection.execute(self._begin)
        self._connection._mdb_open_transaction = True

    async def commit(self) -> None:
        try:
            await self._connection.execute("COMMIT")
        finally:
            self._connection._mdb_open_transaction = False
            if self._connection._mdb_tenancy is not None:
                self._connection._mdb_tenancy.ended()

    async def rollback(self) -> None:
        try:
            if not self._connection.is_closed():
                # Bounded like close(): a rollback on a silent network must not hang cleanup.
                await self._connection.execute("ROLLBACK", timeout=self._connection._mdb_close_timeout)
        finally:
            self._connection._mdb_open_transaction = False
            if self._connection._mdb_tenancy is not None:
                self._connection._mdb_tenancy.ended()

    async def __aenter__(self) -> "_SettingsTransaction":
        await self.start()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        if kind is None:
            await self.commit()
        else:
            await self.rollback()


class Connector:
    """Opens asyncpg connections for one engine. Holds the password; its repr does not."""

    def __init__(
        self,
        config: DatabaseConfig,
        url: URL,
        *,
        statement_cache_size: int,
        connection_class: type[MountaineerConnection] = MountaineerConnection,
        on_connect: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        self.url = url
        self.on_connect = on_connect  # run on each new connection, after our setup (pooler_statements)
        self.target = describe_target(url)
        self.connect_timeout = config.DATABASE_CONNECT_TIMEOUT
        self.close_timeout = config.DATABASE_COMMAND_TIMEOUT or config.DATABASE_CONNECT_TIMEOUT
        self.idle_timeout = config.DATABASE_IDLE_IN_TRANSACTION_TIMEOUT
        self.scram_cache = config.DATABASE_SCRAM_CACHE
        self.transient = _TRANSIENT_MULTI_HOST_ERRORS if is_multi_host(url) else _TRANSIENT_CONNECT_ERRORS
        self.location_settings = _location_settings(config, url)
        server_settings: dict[str, str] = {}
        if config.application_name:
            server_settings["application_name"] = config.application_name
        app_name = url.query.get("application_name")
        if isinstance(app_name, str):
            server_settings["application_name"] = app_name
        # DATABASE_TAG_REQUESTS: transactions are tagged `<application_name>:<origin>`.
        self.tag_prefix = server_settings.get("application_name", "") if config.DATABASE_TAG_REQUESTS else None
        self.tenant_setting = config.DATABASE_TENANT_SETTING
        self.bypass_role = config.DATABASE_TENANT_BYPASS_ROLE
        self.app_name = server_settings.get("application_name", "")
        host = url.query.get("host")  # a Unix socket directory given as ?host=/path
        self._kwargs: dict[str, Any] = {
            "host": host if isinstance(host, str) else url.host,
            "port": url.port or 5432,
            **_multi_host_arguments(url),
            "user": url.username,
            "password": url.password,
            "database": url.database,
            "ssl": _ssl_argument(config.sslmode_for(url)),
            "command_timeout": config.DATABASE_COMMAND_TIMEOUT,
            "statement_cache_size": statement_cache_size,
            "server_settings": server_settings or None,
            "connection_class": connection_class,
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

    async def connect(self) -> MountaineerConnection:
        """Open one connection, or raise `DatabaseUnavailableError` within the connect timeout."""
        deadline = time.monotonic() + self.connect_timeout
        while True:
            remaining = deadline - time.monotonic()
            reason = ""
            try:
                with scram_attempt(enabled=self.scram_cache) as scram:
                    connection: MountaineerConnection = await asyncpg.connect(
                        timeout=max(remaining, 0.001), **self._kwargs
                    )
                    scram.authenticated()
            except self.transient as error:
                reason = _reason(error, self.location_settings)
            except Exception as error:  # noqa: BLE001 - every failure is reported as one error below
                reason = _reason(error, self.location_settings)
                remaining = 0
            else:
                connection._mdb_setup(
                    begin_suffix=self.begin_suffix,
                    close_timeout=self.close_timeout,
                    idle_timeout=self.idle_timeout,
                    tag_prefix=self.tag_prefix,
                    tenancy=None
                    if self.tenant_setting is None
                    else TenantState(self.tenant_setting, self.bypass_role, self.app_name),
                )
                if self.on_connect is not None:
                    await self.on_connect(connection)
                return connection
            if remaining > 0.1:
                await asyncio.sleep(min(0.05, remaining - 0.1))
                continue
            # Raised outside the except block: the asyncpg error, whose frames hold the
            # password in their locals, is neither chained nor kept as context.
            raise DatabaseUnavailableError(f"Could not connect to {self.target}: {reason}", url=self.url)


def _multi_host_arguments(url: URL) -> dict[str, Any]:
    """asyncpg's arguments for a multi-host URL: the hosts, their ports, which one to keep."""
    arguments: dict[str, Any] = {}
    if is_multi_host(url):
        pairs = hosts_of(url)
        arguments["host"] = [host for host, _ in pairs]
        arguments["port"] = [port for _, port in pairs]
    attrs = session_attrs_of(url)
    if attrs is not None:
        arguments["target_session_attrs"] = attrs
    return arguments


def _location_settings(config: DatabaseConfig, url: URL) -> str:
    """The settings the user wrote `url`'s host and port in, for a hint that names them.

    Only what the user set: a URL given as SQLALCHEMY_DATABASE_URI (or DATABASE_URL) is not
    answered with POSTGRES_HOST/POSTGRES_PORT, which that user never saw.
    """
    where = (url.host, url.port or 5432)

    def at(other: URL | None) -> bool:
        return other is not None and (other.host, other.port or 5432) == where

    app_url = config.SQLALCHEMY_DATABASE_URI
    if not at(app_url):
        if at(config.MIGRATIONS_DATABASE_URI):
            return "the host and port in MIGRATIONS_DATABASE_URI"
        if any(at(replica) for replica in config.DATABASE_REPLICA_URLS):
            return "the host and port in DATABASE_REPLICA_URLS"
    if config.DATABASE_EMBEDDED:
        return "that the development database (DATABASE_EMBEDDED, kept in .mountaineer_db/) is running"
    if config._url_from_parts_:
        return "POSTGRES_HOST and POSTGRES_PORT"
    return "the host and port in SQLALCHEMY_DATABASE_URI (or DATABASE_URL)"


def _reason(error: BaseException, location_settings: str = "POSTGRES_HOST and POSTGRES_PORT") -> str:
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
    if isinstance(error, asyncpg.TargetServerAttributeNotMatched):
        return (
            f"{error}. None of the URL's hosts has that role now: a failover in progress, or the host list "
            "misses the current primary."
        )
    if isinstance(error, asyncpg.CannotConnectNowError):
        return f"{error}. The server is starting up or shutting down; retry shortly."
    if isinstance(error, ConnectionError) and str(error).endswith("rejected SSL upgrade"):  # asyncpg's words
        return f"{error}. The server does not accept SSL connections: check POSTGRES_SSLMODE (or the URL's sslmode)."
    if isinstance(error, OSError):
        detail = error.strerror or str(error)
        return f"{detail}. Check {location_settings} and that the server accepts TCP connections."
    return f"{type(error).__name__}: {error}"


def _driver_connection(context: ExceptionContext) -> Any:
    if context.connection is None:
        return None
    try:
        return context.connection.connection.driver_connection
    except exc.SQLAlchemyError:  # already invalidated or closed
        return None


def translate_driver_error(context: ExceptionContext) -> BaseException | None:
    """`handle_error` hook: make two silent failures explicit, on the one connection they hit.

    - asyncpg's command timeout (DATABASE_COMMAND_TIMEOUT) expired: the network or the server
      is silent. The socket is closed at once (a graceful close would wait on the same
      silence) and the connection invalidated; the `TimeoutError` propagates, and sessions
      report it as `DatabaseUnavailableError`.
    - The server's FATAL "idle-in-transaction timeout" arrives while asyncpg is idle and is
      dropped; all the next statement sees is "connection is closed". Name the likely cause.
    """
    driver = _driver_connection(context)
    if not isinstance(driver, MountaineerConnection):
        return None
    error = context.original_exception
    if isinstance(error, TimeoutError) and not driver.is_closed():
        driver.terminate()
        context.is_disconnect = True
        context.invalidate_pool_on_disconnect = False  # the other connections are fine
        return None
    if (
        driver._mdb_idle_timeout is not None
        and driver._mdb_open_transaction
        and driver.is_closed()
        and isinstance(context.sqlalchemy_exception, exc.InterfaceError)
    ):
        context.is_disconnect = True
        reason = asyncpg.IdleInTransactionSessionTimeoutError(
            "connection is closed: it closed while the transaction was idle, most likely ended by the "
            f"server's idle-in-transaction timeout (DATABASE_IDLE_IN_TRANSACTION_TIMEOUT="
            f"{driver._mdb_idle_timeout:g}s). Keep transactions short, or raise the timeout."
        )
        return exc.OperationalError(context.statement, None, reason, connection_invalidated=True)
    return None
