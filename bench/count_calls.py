"""Python calls per request: ours vs a peer, and which functions make the difference.

Counting calls (cProfile's `ncalls`) is exact and immune to a busy machine, unlike time: it
shows what each layer of ours adds to the plain session a peer hands out. One request is
`SELECT 1` in a transaction, committed, concurrency 1.

Run:  .venv/bin/python bench/count_calls.py [--setup fixed-direct] [--peer sqlmodel-docs] [--requests 2000]
      [--set DATABASE_LAZY_LOADS=allow] (a setting of ours' config, repeatable)
"""

import argparse
import cProfile
import pstats

from _harness import POOL_SIZE, SETUPS, Stack, ours_request, run_script
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


async def main(args: argparse.Namespace, stack: Stack) -> None:
    url = stack.url_for(args.setup)
    peer = build_peer(args.peer, url, connect_per_request=args.setup.startswith("default"), pool_size=POOL_SIZE)
    measured: dict[str, dict[str, float]] = {}
    ours = ours_request(_with_settings(stack.config(args.setup), args.set))
    for label, request in (("ours", ours), (args.peer, peer.request)):
        for _ in range(200):
            await request()
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(args.requests):
            await request()
        profiler.disable()
        measured[label] = _calls(pstats.Stats(profiler), args.requests)
        print(f"{label:<24} {sum(measured[label].values()):7.1f} Python calls per request", flush=True)
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
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="a setting of ours' config")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    run_script(parser, "Python calls per request: ours vs {peer} ({setup})", main)
