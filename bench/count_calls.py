"""Python calls per request: ours vs a peer, and which functions make the difference.

Counting calls (cProfile's `ncalls`) is exact and immune to a busy machine, unlike time: it
shows what each layer of ours adds to the plain session a peer hands out. One request is
`SELECT 1` in a transaction, committed, at concurrency 1 (`--concurrency 16`: sixteen in flight
on a pool of ten, so the pool's waits are counted too).

Run:  .venv/bin/python bench/count_calls.py [--setup fixed-direct] [--peer sqlmodel-docs] [--requests 2000]
      [--concurrency 1]
      [--set DATABASE_LAZY_LOADS=allow] (a setting of ours' config, repeatable)
      [--checkout DIR] (repeatable: also count ours as another checkout of this repository has it,
      for example `git worktree add /tmp/before 9254a46`, the commit before the operations
      features: same interpreter, same libraries, same server; only the package is that checkout's)
"""

import argparse
import cProfile
import os
import pstats
import subprocess
import sys
from pathlib import Path

from _harness import POOL_SIZE, SETUPS, Stack, ours_request, run_concurrent, run_script
from peers import PEERS, build_peer
from pydantic import TypeAdapter

from mountaineer_db import DatabaseConfig, dispose_engines


def _calls(stats: pstats.Stats, requests: int) -> dict[str, float]:
    counts: dict[str, float] = {}
    for (path, line, name), value in stats.stats.items():  # type: ignore[attr-defined]
        short = path.split("site-packages/")[-1].split("/lib/python3")[-1]
        counts[f"{short}:{line}({name})"] = value[1] / requests
    return counts


def _with_settings(config: DatabaseConfig, settings: list[str]) -> DatabaseConfig:
    """`config` with NAME=VALUE settings applied (each value validated as its field's type)."""
    update = {}
    for item in settings:
        name, value = item.split("=", 1)
        update[name] = TypeAdapter(DatabaseConfig.model_fields[name].annotation).validate_python(value)
    return config.model_copy(update=update)


# Counts `get_db_session` as `_harness.ours_request` does, with only the names every version of
# the package has exported (run in a subprocess with another checkout first on the path).
_CHECKOUT_COUNT = """
import asyncio, cProfile, pstats, sys
from contextlib import asynccontextmanager
from sqlalchemy import text
import mountaineer_db
from mountaineer_db import DatabaseConfig, DatabaseDependencies, PoolType

url, requests, direct = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "direct"
pooled = {"DATABASE_POOL_TYPE": PoolType.FIXED_PROCESS, "DATABASE_POOL_SIZE": 10, "DATABASE_MAX_OVERFLOW": 0}
config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=url, **(pooled if direct else {}))
dependency = asynccontextmanager(DatabaseDependencies.get_db_session)
statement = text("SELECT 1")

async def request():
    async with dependency(engine=await DatabaseDependencies.get_db(config=config)) as session:
        await session.exec(statement)
        await session.commit()

async def main():
    for _ in range(200):
        await request()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(requests):
        await request()
    profiler.disable()
    calls = sum(value[1] for value in pstats.Stats(profiler).stats.values()) / requests
    print(f"{calls:.1f} {mountaineer_db.__file__}")

if sys.argv[4] == "uvloop":
    import uvloop
    uvloop.run(main())
else:
    asyncio.run(main())
"""


def _count_checkout(checkout: Path, url: str, args: argparse.Namespace) -> None:
    """Print the calls per request of the package in `checkout` (same interpreter, server and workload)."""
    if args.setup not in ("fixed-direct", "default"):
        raise SystemExit("--checkout counts the fixed-direct and default setups only")
    env = {**os.environ, "PYTHONPATH": str(checkout.resolve())}
    shape = "direct" if args.setup == "fixed-direct" else "default"
    result = subprocess.run(
        [sys.executable, "-c", _CHECKOUT_COUNT, url, str(args.requests), shape, args.loop],
        env=env, cwd=checkout, capture_output=True, text=True, check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"counting {checkout} failed:\n{result.stderr[-2000:]}")
    calls, where = result.stdout.split()
    assert Path(where).resolve().is_relative_to(checkout.resolve()), f"imported {where}, not {checkout}'s package"
    print(f"{'ours at ' + str(checkout):<24} {float(calls):7.1f} Python calls per request", flush=True)


async def main(args: argparse.Namespace, stack: Stack) -> None:
    url = stack.url_for(args.setup)
    peer = build_peer(args.peer, url, connect_per_request=args.setup.startswith("default"), pool_size=POOL_SIZE)
    measured: dict[str, dict[str, float]] = {}
    ours = ours_request(_with_settings(stack.config(args.setup), args.set))
    for label, request in (("ours", ours), (args.peer, peer.request)):
        await run_concurrent(request, 200, args.concurrency)
        profiler = cProfile.Profile()
        profiler.enable()
        await run_concurrent(request, args.requests, args.concurrency)
        profiler.disable()
        measured[label] = _calls(pstats.Stats(profiler), args.requests)
        print(f"{label:<24} {sum(measured[label].values()):7.1f} Python calls per request", flush=True)
    for checkout in args.checkout:
        _count_checkout(checkout, url.render_as_string(hide_password=False), args)
    ours, theirs = measured["ours"], measured[args.peer]
    difference = {key: ours.get(key, 0) - theirs.get(key, 0) for key in {*ours, *theirs}}
    print(f"functions called more often per request by ours than by {args.peer}:")
    for key, extra in sorted(difference.items(), key=lambda item: -item[1])[: args.limit]:
        if extra > 0:
            print(f"    {extra:+6.1f}  {key}")
    print("and less often:")
    for key, extra in sorted(difference.items(), key=lambda item: item[1])[: args.limit // 2]:
        if extra < 0:
            print(f"    {extra:+6.1f}  {key}")
    await peer.close()
    await dispose_engines()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=SETUPS, default="fixed-direct")
    parser.add_argument("--peer", choices=PEERS, default="sqlmodel-docs")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight (--checkout counts 1 only)")
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a setting of ours' config")
    parser.add_argument("--checkout", type=Path, action="append", default=[], metavar="DIR",
                        help="also count ours as the checkout DIR has it (e.g. a git worktree of an older commit)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    run_script(parser, "Python calls per request: ours vs {peer} ({setup})", main)
