"""Where a request's client-side time goes: cProfile of our session path, one setup at a time.

Run:  .venv/bin/python bench/profile_session.py --setup default [--requests 2000] [--sort tottime]

Setups: `default` (NULL pool via PgBouncer), `fixed-direct`, `fixed-bouncer`, and the raw
asyncpg equivalents `raw-connect` (connect-per-request via PgBouncer) and `raw-pool`
(asyncpg pool, direct), so the two profiles can be read side by side.
"""

import argparse
import cProfile
import pstats
import time

from _harness import (
    SETUPS,
    Stack,
    ours_request,
    raw_connect_request,
    raw_pool,
    raw_pool_request,
    run_script,
)

from mountaineer_db import dispose_engines


async def main(args: argparse.Namespace, stack: Stack) -> None:
    pool = None
    if args.setup in SETUPS:
        request = ours_request(stack.config(args.setup))
    elif args.setup == "raw-connect":
        request = raw_connect_request(stack)
    else:
        pool = await raw_pool(stack.direct_url(), via_bouncer=False)
        request = raw_pool_request(pool)
    for _ in range(50):
        await request()
    # CPU time, not wall time: waits for the server are not counted. (Time spent in C code
    # while a greenlet is switched out is charged to whichever Python frame is current, so
    # read the Python-level entries, and use bench_breakdown.py for the layer totals.)
    profiler = cProfile.Profile(time.process_time)
    started = time.perf_counter()
    profiler.enable()
    for _ in range(args.requests):
        await request()
    profiler.disable()
    elapsed = time.perf_counter() - started
    print(f"{args.setup}: {elapsed * 1e6 / args.requests:.0f} µs/request under the profiler (concurrency 1)")
    stats = pstats.Stats(profiler)
    stats.sort_stats(args.sort).print_stats(args.limit)
    if pool is not None:
        await pool.close()
    await dispose_engines()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=(*SETUPS, "raw-connect", "raw-pool"), default="default")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    run_script(parser, "cProfile of one request path: {setup}", main)
