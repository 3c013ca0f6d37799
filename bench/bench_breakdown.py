"""Layer-by-layer cost of one request: where the gap to raw asyncpg comes from.

Each line adds one layer to the one above, all measured in rotating rounds in one process
(`SELECT 1` in a transaction, committed, concurrency 1 unless --concurrency):

- raw asyncpg (pool, or connect-per-request via PgBouncer);
- SQLAlchemy Core on our engine: `async with engine.begin() as c: await c.execute(...)`;
- a plain SQLModel `AsyncSession` (`async with AsyncSession(engine) as s`, execute, commit)
  on a plain `create_async_engine(url)` with SQLAlchemy's own pool of the same size (the
  `sqlmodel-docs` peer of `peers.py`), then the same session on our engine (what our engine's
  pool, events and connection class cost);
- our `session_scope(engine)` (transaction opened up front, shielded cleanup, rollback);
- our `session_scope(engine_for(config))` (engine lookup per request);
- `DatabaseDependencies.get_db_session` as FastAPI calls it (engine from `get_db`), which adds
  the request session class that keeps its connection across commits, the re-render hand-over
  and the disconnect guard (both idle without an HTTP request).

The difference between the last line and the plain AsyncSession line is what mountaineer_db
itself costs; the lines above it are the floor set by SQLAlchemy and SQLModel. Those steps
are small next to the noise of a whole request, so a last table measures them alone: a
session opened and closed with no statement (no I/O at all), plain vs ours.

Run:  .venv/bin/python bench/bench_breakdown.py [--setup fixed-direct|default|fixed-bouncer] [--rounds 9]
"""

import argparse
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
from _harness import (
    NAMED_SETUPS,
    POOL_SIZE,
    SELECT_1,
    SETUPS,
    Stack,
    add_pgbouncer_argument,
    measure_many,
    ours_request,
    raw_connect_request,
    raw_pool,
    raw_pool_request,
    run_concurrent,
    run_script,
)
from peers import peer_pool_args
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from mountaineer_db import DatabaseConfig, DatabaseDependencies, dispose_engines
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.requests.session import session_scope

Request = Callable[[], Awaitable[None]]


def core_request(engine: AsyncEngine) -> Request:
    async def request() -> None:
        async with engine.begin() as connection:
            await connection.execute(SELECT_1)

    return request


def plain_session_request(engine: AsyncEngine) -> Request:
    async def request() -> None:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            await session.exec(SELECT_1)
            await session.commit()

    return request


def scope_request(engine: AsyncEngine) -> Request:
    async def request() -> None:
        async with session_scope(engine) as session:
            await session.exec(SELECT_1)
            await session.commit()

    return request


def scoped_request(config: DatabaseConfig) -> Request:
    async def request() -> None:
        async with session_scope(engine_for(config)) as session:
            await session.exec(SELECT_1)
            await session.commit()

    return request


async def fixed_costs(rounds: int) -> None:
    """Our per-request cost with no statement at all (so no I/O): the pure CPU of each layer."""
    engine = create_async_engine("postgresql+asyncpg://nobody@127.0.0.1:9/none")  # never connects
    dependency = asynccontextmanager(DatabaseDependencies.get_db_session)
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://nobody@127.0.0.1:9/none")

    async def plain() -> None:
        async with AsyncSession(engine, expire_on_commit=False):
            pass

    async def scoped() -> None:
        async with session_scope(engine):
            pass

    async def full() -> None:
        async with dependency(engine=await DatabaseDependencies.get_db(config=config)):
            pass

    await measure_many(
        "[fixed cost, no statement, no I/O] a session opened and closed, concurrency 1",
        [
            ("plain SQLModel AsyncSession", lambda: run_concurrent(plain, 5000, 1)),
            ("+ ours: session_scope(engine)", lambda: run_concurrent(scoped, 5000, 1)),
            ("+ ours: get_db_session with get_db(config)", lambda: run_concurrent(full, 5000, 1)),
        ],
        rounds=rounds,
    )
    await engine.dispose()
    await dispose_engines()


async def main(args: argparse.Namespace, stack: Stack) -> None:
    pool: asyncpg.Pool | None = None
    config = stack.config(args.setup)
    if args.setup.startswith("default"):
        socket = args.setup == "default-socket"
        raw: list[tuple[str, Request]] = [
            ("raw asyncpg connect-per-request via PgBouncer (close)", raw_connect_request(stack, socket=socket)),
            (
                "raw asyncpg connect-per-request via PgBouncer (terminate)",
                raw_connect_request(stack, terminate=True, socket=socket),
            ),
        ]
    else:
        pool = await raw_pool(stack.url_for(args.setup), via_bouncer=args.setup == "fixed-bouncer")
        raw = [(f"raw asyncpg pool ({POOL_SIZE})", raw_pool_request(pool))]
    engine = engine_for(config)
    peer_pool = peer_pool_args(args.setup.startswith("default"), POOL_SIZE)
    plain = create_async_engine(stack.url_for(args.setup).render_as_string(hide_password=False), **peer_pool)
    layers: list[tuple[str, Request]] = [
        *raw,
        ("+ SQLAlchemy Core (engine.begin, execute)", core_request(engine)),
        ("+ ORM: plain SQLModel AsyncSession, plain engine (the peer)", plain_session_request(plain)),
        ("   the same on our engine (execute, commit)", plain_session_request(engine)),
        ("+ ours: session_scope(engine)", scope_request(engine)),
        ("+ ours: session_scope(engine_for(config))", scoped_request(config)),
        ("+ ours: get_db_session (as FastAPI calls it)", ours_request(config)),
    ]
    total = args.requests * (1 if args.concurrency == 1 else 2)
    await measure_many(
        f"[breakdown] {args.setup}, concurrency {args.concurrency}",
        [(label, lambda r=request: run_concurrent(r, total, args.concurrency)) for label, request in layers],
        rounds=args.rounds,
    )
    if pool is not None:
        await pool.close()
    await plain.dispose()
    await dispose_engines()
    await fixed_costs(args.rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=SETUPS + NAMED_SETUPS, default="fixed-direct")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    add_pgbouncer_argument(parser)
    run_script(parser, "Layer-by-layer breakdown (SELECT 1 in a transaction, committed)", main)
