"""Request sessions side by side with raw asyncpg, in one process (no HTTP).

Each request is `SELECT 1` in a transaction, committed:

- ours: `DatabaseDependencies.get_db_session` called as FastAPI calls it (wrapped in
  `asynccontextmanager`, the engine from `get_db(config)`, no HTTP request), then
  `await session.exec(text("SELECT 1"))`, `await session.commit()`;
- raw: asyncpg, `async with connection.transaction(): await connection.fetchval("SELECT 1")`.

Comparisons, each at concurrency 1 and 16:

1. default config (NULL pool) via PgBouncer  vs  raw connect-per-request via PgBouncer
   (ssl=False, statement_cache_size=0: the best raw settings for a pooler);
2. FIXED_PROCESS direct (pool 10, no overflow)  vs  raw `asyncpg.create_pool` of 10, direct;
3. FIXED_PROCESS via PgBouncer (DATABASE_STATEMENT_CACHE_SIZE=0)  vs  raw pool of 10 via
   PgBouncer (statement_cache_size=0).

Run:  .venv/bin/python bench/bench_sessions.py [--rounds 9] [--requests 400] [--loop asyncio]
"""

import argparse
from collections.abc import Awaitable, Callable

from _harness import (
    POOL_SIZE,
    SETUPS,
    Comparison,
    Stack,
    compare,
    ours_request,
    raw_connect_request,
    raw_pool,
    raw_pool_request,
    run_concurrent,
    run_script,
)

from mountaineer_db import dispose_engines


async def main(args: argparse.Namespace, stack: Stack) -> list[Comparison]:
    results: list[Comparison] = []

    def measure(request: Callable[[], Awaitable[None]], concurrency: int) -> Callable[[], Awaitable[float]]:
        requests = args.requests if concurrency == 1 else args.requests * 2
        return lambda: run_concurrent(request, requests, concurrency)

    default, fixed_direct, fixed_bouncer = (stack.config(setup) for setup in SETUPS)
    selected = set(args.only.split(",")) if args.only else {"default", "fixed-direct", "fixed-bouncer"}
    for concurrency in (1, 16):
        if "default" in selected:
            results.append(
                await compare(
                    f"[1] default config (NULL pool) via PgBouncer, concurrency {concurrency}",
                    ("get_db_session, NULL pool, via PgBouncer", measure(ours_request(default), concurrency)),
                    ("asyncpg connect-per-request, via PgBouncer", measure(raw_connect_request(stack), concurrency)),
                    rounds=args.rounds,
                    target=1.25,
                )
            )
        if "fixed-direct" in selected:
            pool = await raw_pool(stack.direct_url(), via_bouncer=False)
            try:
                results.append(
                    await compare(
                        f"[2] FIXED_PROCESS direct, pool {POOL_SIZE}, concurrency {concurrency}",
                        ("get_db_session, FIXED_PROCESS, direct", measure(ours_request(fixed_direct), concurrency)),
                        (f"asyncpg.create_pool({POOL_SIZE}), direct", measure(raw_pool_request(pool), concurrency)),
                        rounds=args.rounds,
                        target=1.3,
                    )
                )
            finally:
                await pool.close()
        if "fixed-bouncer" in selected:
            pool = await raw_pool(stack.bouncer_url(), via_bouncer=True)
            try:
                results.append(
                    await compare(
                        f"[3] FIXED_PROCESS via PgBouncer, pool {POOL_SIZE}, concurrency {concurrency}",
                        (
                            "get_db_session, FIXED_PROCESS, cache 0, PgBouncer",
                            measure(ours_request(fixed_bouncer), concurrency),
                        ),
                        (
                            f"asyncpg.create_pool({POOL_SIZE}), via PgBouncer",
                            measure(raw_pool_request(pool), concurrency),
                        ),
                        rounds=args.rounds,
                        target=1.3,
                    )
                )
            finally:
                await pool.close()
        await dispose_engines()
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds per comparison (default 9)")
    parser.add_argument("--requests", type=int, default=400, help="requests per round at concurrency 1 (x2 at 16)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--only", default="", help="comma list of: default, fixed-direct, fixed-bouncer")
    return parser


if __name__ == "__main__":
    run_script(build_parser(), "Request sessions vs raw asyncpg (SELECT 1 in a transaction, committed)", main)
