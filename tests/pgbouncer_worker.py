"""One worker process of the PgBouncer test: runs requests, prints a JSON summary.

Usage: python -m tests.pgbouncer_worker MODE REQUESTS CONCURRENCY, with the database URL in
the environment variable WORKER_DATABASE_URL. MODE is `ours` (mountaineer_db defaults),
`naive-null` (create_async_engine with NullPool) or `naive-default` (create_async_engine
with SQLAlchemy's defaults); `ours-prepared` and `ours-prepared-fixed` are `ours` with
DATABASE_POOLER_PREPARED_STATEMENTS (NULL and FIXED_PROCESS pools).
"""

import asyncio
import json
import os
import sys
from collections import Counter
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

REQUEST_BOUND = 5.0
"""Seconds one request may take before it counts as failed (TimeoutError)."""
RUN_BOUND = 90.0
"""Seconds the whole run may take; what is left is reported as not finished."""


def _error_key(error: BaseException) -> str:
    message = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {message}"[:200]


async def run(mode: str, requests: int, concurrency: int) -> dict[str, Any]:
    url = os.environ["WORKER_DATABASE_URL"]
    errors: Counter[str] = Counter()
    leftovers: list[int] = []
    ok = 0

    ours = mode.startswith("ours")
    if ours:
        from mountaineer_db import DatabaseConfig, database_session, dispose_engines

        settings: dict[str, Any] = {}
        if mode.startswith("ours-prepared"):
            settings["DATABASE_POOLER_PREPARED_STATEMENTS"] = True
        if mode.endswith("-fixed"):
            settings.update(DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_POOL_SIZE=concurrency)
        config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=url, **settings)

        def open_session() -> Any:
            return database_session(config)

    else:
        from contextlib import asynccontextmanager

        engine = create_async_engine(url, poolclass=NullPool) if mode == "naive-null" else create_async_engine(url)

        @asynccontextmanager
        async def open_session() -> Any:
            async with AsyncSession(engine, expire_on_commit=False) as session, session.begin():
                yield session

    async def one(n: int) -> None:
        nonlocal ok
        try:
            # Bounded: a connection stuck on a statement another client prepared (named statements
            # through PgBouncer) must show up as an error here, not hang the whole test.
            async with asyncio.timeout(REQUEST_BOUND), open_session() as session:
                # SQLModel's session warns on execute(); it runs the same statements with exec().
                execute = session.exec if ours else session.execute
                value = (await execute(text("SELECT CAST(:n AS integer) + 1").bindparams(n=n))).scalar_one()
                prepared = (await execute(text("SELECT count(*) FROM pg_prepared_statements"))).scalar_one()
                if ours:
                    await session.commit()
            assert value == n + 1
            leftovers.append(int(prepared))
            ok += 1
        except Exception as error:  # noqa: BLE001 - counted and reported
            errors[_error_key(error)] += 1

    queue = list(range(requests))

    async def lane() -> None:
        while queue:
            await one(queue.pop())

    try:
        async with asyncio.timeout(RUN_BOUND):
            await asyncio.gather(*(lane() for _ in range(concurrency)))
    except TimeoutError:
        errors[f"not finished within {RUN_BOUND:g}s"] += len(queue)
    if ours:
        await dispose_engines()
    else:
        await engine.dispose()
    return {"ok": ok, "errors": dict(errors), "max_prepared_statements_seen": max(leftovers, default=0)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))))
