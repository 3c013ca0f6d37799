"""Sessions with the request semantics, for requests and for code outside them.

`session_scope(engine)` is the one implementation behind both
`DatabaseDependencies.get_db_session` and `database_session()`:

1. the session starts with a transaction open (`session.in_transaction()` is true), but no
   connection is taken until the first statement;
2. the caller commits; whatever it did not commit is rolled back at the end;
3. an exception rolls back, is logged once (no SQL parameters, no secrets) and propagates
   unchanged, except that a lost connection (terminated backend, restarting server, PgBouncer
   dropping us), an exhausted pool or a client-side command timeout becomes a
   `DatabaseUnavailableError` (HTTP 503) with the original error as its `__cause__`;
4. the connection is always given back: on success, error and cancellation, with the
   cleanup shielded from further cancellation;
5. `expire_on_commit=False`.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager

import anyio
from fastapi import HTTPException
from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from mountaineer_db.config import DatabaseConfig
from mountaineer_db.engine import AsyncEngine, engine_for
from mountaineer_db.exceptions import unavailable_error_for

__all__ = ["AsyncSession", "database_session", "session_scope", "registered_config"]

logger = logging.getLogger("mountaineer_db")


def registered_config() -> DatabaseConfig:
    """The Mountaineer app config registered in this process, checked to be a `DatabaseConfig`."""
    from mountaineer import config as mountaineer_config

    from mountaineer_db.exceptions import ConfigurationError

    config = mountaineer_config.APP_CONFIG
    if config is None:
        raise ConfigurationError(
            "No app config is registered. Instantiate your AppConfig (a subclass of DatabaseConfig "
            "and mountaineer.ConfigBase) before the first request, or pass config= explicitly."
        )
    if not isinstance(config, DatabaseConfig):
        raise ConfigurationError(
            f"The registered config {type(config).__name__} does not inherit from DatabaseConfig; "
            f"declare it as `class {type(config).__name__}(DatabaseConfig, ConfigBase)`."
        )
    return config


async def _shielded(work: Awaitable[None]) -> None:
    """Run `work` to completion even if the caller is cancelled meanwhile (then re-raise)."""
    task = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
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
        logger.warning("Could not roll back cleanly (%s: %s); discarding the connection.", type(error).__name__, error)
        try:
            await session.invalidate()
        except Exception as second:  # noqa: BLE001
            logger.warning("Discarding the connection failed too: %s", type(second).__name__)


def _log_failure(error: Exception) -> None:
    if isinstance(error, HTTPException) and error.status_code < 500:
        level = logging.INFO
    else:
        level = logging.ERROR
    logger.log(level, "Rolled back the request's transaction after %s: %s", type(error).__name__, error)


@asynccontextmanager
async def session_scope(
    engine: AsyncEngine, *, sync_session_class: type[Session] | None = None
) -> AsyncIterator[AsyncSession]:
    """A session on `engine` with a transaction open; see the module docstring for the rules.

    `sync_session_class` replaces SQLModel's `Session` behind the `AsyncSession` (the request
    dependency passes one that keeps its connection across commits).
    """
    session = AsyncSession(engine, expire_on_commit=False, sync_session_class=sync_session_class)
    await session.begin()  # no I/O: the connection is taken by the first statement
    try:
        yield session
    except Exception as error:
        unavailable = unavailable_error_for(error, url=engine.url)
        if unavailable is None:
            _log_failure(error)
            await _shielded(_release(session, invalidate=False))
            raise
        # The connection is gone or unusable: discard it and answer "database unavailable"
        # (503) rather than a generic 500. The original error stays chained as the cause.
        logger.error("Rolled back the request's transaction: %s", unavailable.message)
        await _shielded(_release(session, invalidate=True))
        raise unavailable from error
    except BaseException:
        await _shielded(_release(session, invalidate=True))
        raise
    else:
        await _shielded(_release(session, invalidate=False))


@asynccontextmanager
async def database_session(config: DatabaseConfig | None = None) -> AsyncIterator[AsyncSession]:
    """A session for code outside a request (scripts, jobs, CLI commands), same guarantees.

    ```python
    async with database_session() as session:
        session.add(Todo(description="from a job"))
        await session.commit()
    ```

    `config` defaults to the registered Mountaineer app config.
    """
    async with session_scope(engine_for(config or registered_config())) as session:
        yield session
