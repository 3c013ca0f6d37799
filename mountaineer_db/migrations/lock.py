"""The migration lock: one process migrates a database at a time, and waiting for it holds nothing.

The lock is a PostgreSQL session-level advisory lock (`MIGRATION_LOCK_KEY`) held by the
connection the migrations run on, so it is released exactly when that work stops: at the
end of the run, or when the process dies and the server ends its session.

Waiting for it holds no transaction and no snapshot: the waiter polls
`pg_try_advisory_lock` in autocommit, one short statement at a time, with a bounded
backoff. `CREATE INDEX CONCURRENTLY`, `ALTER TYPE ... ADD VALUE`, `VACUUM`-like statements
run by the lock holder wait for older transactions and snapshots; a waiter that sat in a
transaction (the old `pg_advisory_lock` inside BEGIN) was one of them while it waited for
the holder, a deadlock PostgreSQL resolved by failing one side. A polling waiter's statement
never waits for anything, so it always ends within a round trip and no cycle can form.
While it waits, it logs every `LOCK_REPORT_INTERVAL` seconds which session holds the lock.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from mountaineer_db.engines.data_errors import describe_error

__all__ = ["LOCK_REPORT_INTERVAL", "MIGRATION_LOCK_KEY", "PROGRESS", "PROGRESS_ATTRIBUTE", "migration_lock"]

logger = logging.getLogger("mountaineer_db")

MIGRATION_LOCK_KEY: Final = 0x6D64625F6D696772  # "mdb_migr": fixed, so every process takes the same lock
"""Key of the PostgreSQL session advisory lock held while migrations run (per database)."""

LOCK_REPORT_INTERVAL: Final = 5.0
"""Seconds between two "waiting for the migration lock" log lines of a waiting process."""

PROGRESS_ATTRIBUTE: Final = "mountaineer_db_progress"
"""Set on the log records of progress lines (waiting, recovering): `mountaineer-db` shows them on stderr."""
PROGRESS: Final = {PROGRESS_ATTRIBUTE: True}
"""The `extra=` that marks a log line as progress."""

_FIRST_POLL: Final = 0.02
_LONGEST_POLL: Final = 0.5  # the backoff's bound: a waiter starts at most this long after the lock is free
_CLIENT_CHECK_INTERVAL: Final = "1s"

_TRY_LOCK = text("SELECT pg_try_advisory_lock(:key)")
_UNLOCK = text("SELECT pg_advisory_unlock(:key)")
# A bigint advisory key shows in pg_locks as classid (high 32 bits), objid (low 32 bits), objsubid 1.
_HOLDER = text(
    "SELECT a.pid, a.application_name, a.state, a.wait_event_type, a.wait_event, "
    "extract(epoch FROM now() - a.backend_start)::float8 "
    "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.classid = :high AND l.objid = :low "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


@asynccontextmanager
async def migration_lock(connection: AsyncConnection) -> AsyncIterator[None]:
    """Hold the migration advisory lock on `connection`; other processes wait for it.

    `connection` must have no transaction open (as `engine.connect()` gives it). Waiting is
    done in autocommit (see the module docstring) and is not bounded by
    MIGRATIONS_LOCK_TIMEOUT: a replica waits for the whole run of another one. The
    connection comes out of this with its isolation level restored and no transaction
    open, so Alembic manages its own (its `autocommit_block()` needs that). On PostgreSQL
    14+ the session also gets `client_connection_check_interval`, so a statement left
    running by a killed process (an index build) is cancelled within a second and the
    lock released, instead of running to its end. If releasing fails, the connection is
    invalidated, and closing it releases the lock on the server.
    """
    level = connection.default_isolation_level
    await connection.execution_options(isolation_level="AUTOCOMMIT")
    try:
        if (connection.dialect.server_version_info or (0,)) >= (14,):
            await connection.execute(text(f"SET client_connection_check_interval = '{_CLIENT_CHECK_INTERVAL}'"))
        await _wait_for_lock(connection)
        await connection.commit()  # ends SQLAlchemy's bookkeeping transaction (nothing on the server)
    finally:
        await _restore(connection, level)
    try:
        yield
    finally:
        try:
            await connection.rollback()
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(_UNLOCK, {"key": MIGRATION_LOCK_KEY})
            await connection.commit()
            await connection.execution_options(isolation_level=level)
        except Exception as error:  # noqa: BLE001 - must not hide the migration's own outcome
            logger.warning("Could not release the migration lock (%s); closing the connection.", describe_error(error))
            await connection.invalidate()


async def _restore(connection: AsyncConnection, level: str | None) -> None:
    if connection.closed or connection.invalidated:
        return
    await connection.rollback()
    if level is not None:
        await connection.execution_options(isolation_level=level)


async def _wait_for_lock(connection: AsyncConnection) -> None:
    """Poll `pg_try_advisory_lock` (autocommit) until it succeeds, logging who holds it meanwhile."""
    started = time.monotonic()
    next_report = started + LOCK_REPORT_INTERVAL
    delay = _FIRST_POLL
    while not await connection.scalar(_TRY_LOCK, {"key": MIGRATION_LOCK_KEY}):
        now = time.monotonic()
        if now >= next_report:
            logger.info(
                "Waiting for the migration lock for %.0fs; it is held by %s.",
                now - started,
                await _describe_holder(connection),
                extra=PROGRESS,
            )
            next_report = now + LOCK_REPORT_INTERVAL
        await asyncio.sleep(delay)
        delay = min(delay * 2, _LONGEST_POLL)
    waited = time.monotonic() - started
    if waited >= LOCK_REPORT_INTERVAL:
        logger.info("Got the migration lock after waiting %.0fs.", waited, extra=PROGRESS)


async def _describe_holder(connection: AsyncConnection) -> str:
    """`pid 4242 (application_name 'myapp', session started 12s ago, active)`: never a query's text."""
    try:
        row = (
            await connection.execute(
                _HOLDER, {"high": MIGRATION_LOCK_KEY >> 32, "low": MIGRATION_LOCK_KEY & 0xFFFFFFFF}
            )
        ).first()
    except SQLAlchemyError as error:
        return f"another session (could not read pg_locks: {type(error).__name__})"
    if row is None:
        return "another session, which just released it"
    pid, application_name, state, wait_type, wait_event, age = row
    state_text = state or "state not visible to this role"
    if wait_type and state == "active":
        state_text += f", waiting on {wait_type}:{wait_event}"
    name = f"'{application_name}'" if application_name else "none"
    age_text = f"{age:.0f}s" if age is not None else "?"
    return f"pid {pid} (application_name {name}, session started {age_text} ago, {state_text})"
