"""Transactions that retry on serialization failures and deadlocks: `run_in_transaction`.

PostgreSQL aborts a transaction with SQLSTATE 40001 (serialization failure: a SERIALIZABLE
or REPEATABLE READ transaction met a concurrent one it cannot be ordered with) or 40P01
(deadlock detected) and expects the client to run it again from the start. Nothing of the
aborted attempt remains, so re-running the whole unit of work is safe as long as the work
itself only touches the database (or defers the rest with `on_commit`).
"""

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session
from sqlmodel.ext.asyncio.session import AsyncSession

from mountaineer_db.engines.engine import engine_for
from mountaineer_db.engines.tenants import Tenant, bind_tenant, require_tenant
from mountaineer_db.requests.commit_hooks import describe_callback
from mountaineer_db.requests.session import session_scope
from mountaineer_db.settings.appconfig import registered_config
from mountaineer_db.settings.config import DatabaseConfig

__all__ = ["RETRYABLE_SQLSTATES", "run_in_transaction", "sqlstate_of"]

logger = logging.getLogger("mountaineer_db")

T = TypeVar("T")

RETRYABLE_SQLSTATES = {"40001": "a serialization failure", "40P01": "a deadlock"}
"""The SQLSTATEs after which PostgreSQL expects the whole transaction to be run again."""

_ISOLATION_LEVELS = ("SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED", "READ UNCOMMITTED")
_FIRST_DELAY = 0.025  # seconds before the first retry (on average 3/4 of it, with the jitter)
_MAX_DELAY = 1.0  # no single wait longer than this, however many retries


def sqlstate_of(error: BaseException) -> str | None:
    """The PostgreSQL SQLSTATE behind a SQLAlchemy error (or an asyncpg one), if any."""
    candidates: list[BaseException | None] = [error]
    if isinstance(error, DBAPIError):
        candidates += [error.orig, error.orig.__cause__ if error.orig is not None else None]
    for candidate in candidates:
        code = getattr(candidate, "sqlstate", None)
        if isinstance(code, str):
            return code
    return None


def _isolation(level: str | None) -> str | None:
    if level is None:
        return None
    normalised = level.strip().upper().replace("_", " ")
    if normalised not in _ISOLATION_LEVELS:
        choices = ", ".join(repr(name) for name in _ISOLATION_LEVELS)
        raise ValueError(f"isolation_level={level!r} is not a transaction isolation level; use one of {choices}.")
    return normalised


def _delay(retry: int) -> float:
    """Jittered exponential backoff: between half and all of 25 ms × 2^(retry-1), at most 1 s."""
    ceiling = min(_MAX_DELAY, _FIRST_DELAY * 2 ** (retry - 1))
    return random.uniform(ceiling / 2, ceiling)


def _watch_commits(session: AsyncSession) -> list[bool]:
    """A list that becomes non-empty (true) once `session` commits its outermost transaction."""
    committed: list[bool] = []

    def after_commit(sync_session: Session) -> None:
        if sync_session.get_nested_transaction() is None:  # not a savepoint release
            committed.append(True)

    event.listen(session.sync_session, "after_commit", after_commit)
    return committed


async def run_in_transaction(
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    retries: int = 3,
    isolation_level: str | None = None,
    config: DatabaseConfig | None = None,
    tenant: Tenant | None = None,
) -> T:
    """`await work(session)` in a fresh session, commit, and run it again on a serialization failure or deadlock.

    ```python
    async def transfer(session: AsyncSession) -> int:
        source = await session.get(Account, 1, with_for_update=True)
        target = await session.get(Account, 2, with_for_update=True)
        source.balance -= 10
        target.balance += 10
        return source.balance

    balance = await run_in_transaction(transfer, isolation_level="SERIALIZABLE")
    ```

    Each attempt gets a new session with the guarantees of `database_session()` (`config`
    defaults to the registered app config); `work` may commit itself, and whatever it leaves
    uncommitted is committed after it returns. On SQLSTATE 40001 or 40P01 (raised by a
    statement or by the COMMIT) the attempt is rolled back and, up to `retries` more times,
    run again after a jittered exponential backoff (25 ms doubling, at most 1 s per wait);
    each retry is logged as a WARNING without parameters. Every other error propagates at
    once, as does the last one when the retries are used up, and so does any error once the
    attempt has committed something (if `work` commits part-way, or a hook's own transaction
    fails): running it again would apply that twice. Returns what `work` returned.

    `isolation_level`: "SERIALIZABLE", "REPEATABLE READ", "READ COMMITTED" or "READ UNCOMMITTED"
    for these transactions (default: the server's, normally READ COMMITTED). `tenant`: as in
    `database_session(tenant=...)`, for every attempt and each of its transactions. `work` must be
    safe to run more than once: keep side effects outside the database in `on_commit` hooks,
    which run only for the attempt that commits.
    """
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries={retries!r}: give the number of retries after the first attempt, 0 or more.")
    level = _isolation(isolation_level)
    options = {"isolation_level": level} if level is not None else None
    config = config or registered_config()
    if tenant is not None:
        require_tenant(tenant, config)  # before any I/O
    engine = engine_for(config)
    name = describe_callback(work)
    attempt = 0
    while True:
        attempt += 1
        retryable: DBAPIError | None = None
        # Every transaction of the attempt begins at the level (`work` may commit part-way, and
        # each connection the session takes has it), not only the first.
        async with session_scope(engine, execution_options=options) as session:
            committed = _watch_commits(session)
            if tenant is not None:
                bind_tenant(session, tenant, config)
            try:
                result = await work(session)
                await session.commit()
            except DBAPIError as error:
                if sqlstate_of(error) not in RETRYABLE_SQLSTATES:
                    raise
                if committed:
                    # Raised after something was committed (by `work` itself, or by an on_commit
                    # hook's own transaction): running `work` again would apply it twice.
                    error.add_note(f"run_in_transaction: not retried, {name} had already committed.")
                    raise
                if attempt > retries:
                    error.add_note(f"run_in_transaction: gave up on {name} after {attempt} attempts.")
                    raise
                # Left without raising: database_session rolls the attempt back and releases
                # the connection, without logging it as a failed transaction.
                retryable = error
        if retryable is None:
            return result
        code = sqlstate_of(retryable) or ""
        delay = _delay(attempt)
        logger.warning(
            "%s hit %s (SQLSTATE %s); rolled back, retrying in %d ms (retry %d of %d).",
            name,
            RETRYABLE_SQLSTATES[code],
            code,
            round(delay * 1000),
            attempt,
            retries,
        )
        await asyncio.sleep(delay)
