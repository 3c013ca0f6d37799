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

# setup: (title, ours label, raw label, target ratio); run in this order at each concurrency.
COMPARISONS = {
    "default": (
        "[1] default config (NULL pool) via PgBouncer",
        "get_db_session, NULL pool, via PgBouncer",
        "asyncpg connect-per-request, via PgBouncer",
        1.25,
    ),
    "fixed-direct": (
        f"[2] FIXED_PROCESS direct, pool {POOL_SIZE}",
        "get_db_session, FIXED_PROCESS, direct",
        f"asyncpg.create_pool({POOL_SIZE}), direct",
        1.3,
    ),
    "fixed-bouncer": (
        f"[3] FIXED_PROCESS via PgBouncer, pool {POOL_SIZE}",
        "get_db_session, FIXED_PROCESS, cache 0, PgBouncer",
        f"asyncpg.create_pool({POOL_SIZE}), via PgBouncer",
        1.3,
    ),
}


async def main(args: argparse.Namespace, stack: Stack) -> list[Comparison]:
    results: list[Comparison] = []

    def measure(request: Callable[[], Awaitable[None]], concurrency: int) -> Callable[[], Awaitable[float]]:
        requests = args.requests if concurrency == 1 else args.requests * 2
        return lambda: run_concurrent(request, requests, concurrency)

    configs = {setup: stack.config(setup) for setup in SETUPS}
    selected = set(args.only.split(",")) if args.only else set(SETUPS)
    for concurrency in (1, 16):
        for setup, (title, ours_label, raw_label, target) in COMPARISONS.items():
            if setup not in selected:
                continue
            pool = None
            if setup == "default":
                raw = raw_connect_request(stack)
            else:
                pool = await raw_pool(stack.url_for(setup), via_bouncer=setup == "fixed-bouncer")
                raw = raw_pool_request(pool)
            try:
                results.append(
                    await compare(
                        f"{title}, concurrency {concurrency}",
                        (ours_label, measure(ours_request(configs[setup]), concurrency)),
                        (raw_label, measure(raw, concurrency)),
                        rounds=args.rounds,
                        target=target,
                    )
                )
            finally:
                if pool is not None:
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
