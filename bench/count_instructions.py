"""Client CPU instructions per request, ours vs the peers, counted by valgrind (callgrind).

Time on a shared 2-core virtual machine moves ±5% from one run to the next; the instructions
the client process executes per request hardly move (valgrind counts them; the machine's load
does not change them, except through the event loop's polling: within ~1% here). At
concurrency 16 on a pool of 10 the client is what limits throughput, so this ratio is the one
a time ratio tends to as the noise goes; at concurrency 1 the server's share dilutes it.

One request is the same as in `bench_sessions.py` [2] and `count_calls.py`: `SELECT 1` in a
transaction, committed (ours through `get_db_session` as FastAPI enters it). Each party runs
in a process of its own under `valgrind --tool=callgrind --instr-atstart=no`: warmed up
uninstrumented, then instrumented (`callgrind_control -i on`) for N requests; run once with N
and once with 3N, the difference divided by 2N is the cost per request (start-up, warm-up and
the instrumentation toggles cancel out). All processes use the same PostgreSQL, started here.

Run:  .venv/bin/python bench/count_instructions.py [--setup fixed-direct] [--requests 300]
      [--concurrency 1,16] [--peers sqlmodel-docs,sqlmodel-docs-dependency] [--warmup 200]
"""

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys

from _harness import POOL_SIZE, SETUPS, Stack, config_for, install_loop, ours_request, run_concurrent, run_script
from peers import PEERS, build_peer
from sqlalchemy.engine import make_url

_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def _toggle(state: str) -> None:
    """Switch callgrind's instrumentation of this process on or off (waits until it is done)."""
    subprocess.run(["callgrind_control", "-i", state, str(os.getpid())], capture_output=True, check=True)


async def _child(party: str, setup: str, url: str, requests: int, concurrency: int, warmup: int) -> None:
    """In the process valgrind runs: warm up, then count `requests` requests."""
    if party == "ours":
        request = ours_request(config_for(setup, make_url(url)))
        close = None
    else:
        peer = build_peer(party, make_url(url), connect_per_request=setup.startswith("default"), pool_size=POOL_SIZE)
        request, close = peer.request, peer.close
    await run_concurrent(request, warmup, concurrency)
    _toggle("on")
    await run_concurrent(request, requests, concurrency)
    _toggle("off")
    if close is not None:
        await close()


def _count(party: str, setup: str, url: str, requests: int, args: argparse.Namespace, concurrency: int) -> int:
    """Instructions the client executed over `requests` requests (and the toggles around them)."""
    command = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", "--callgrind-out-file=/dev/null",
        sys.executable, __file__, "--child", party, "--setup", setup, "--url", url,
        "--requests", str(requests), "--concurrency", str(concurrency), "--loop", args.loop,
        "--warmup", str(args.warmup),
    ]  # fmt: skip
    # The same hash seed in every process: dict layouts, hence their probes, alike in all runs.
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    found = _COLLECTED.findall(result.stderr)
    if result.returncode != 0 or not found:
        raise SystemExit(f"counting {party} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    return int(found[-1])


async def main(args: argparse.Namespace, stack: Stack) -> None:
    url = stack.url_for(args.setup).render_as_string(hide_password=False)
    parties = ["ours", *[peer for peer in args.peers.split(",") if peer]]
    for concurrency in [int(c) for c in args.concurrency.split(",")]:
        per_request: dict[str, float] = {}
        for party in parties:
            # Both sizes at once: each process is one core's work (the server gets little to do).
            runs = [
                asyncio.to_thread(_count, party, args.setup, url, n, args, concurrency)
                for n in (args.requests, 3 * args.requests)
            ]
            small, large = await asyncio.gather(*runs)
            per_request[party] = (large - small) / (2 * args.requests)
        print(f"[instructions] {args.setup}, concurrency {concurrency}", flush=True)
        for party in parties:
            line = f"    {party:<26} {per_request[party] / 1000:8.1f}k instructions/request"
            if party != "ours":
                line += f"   ours/peer = {per_request['ours'] / per_request[party]:.3f}×"
            print(line, flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=SETUPS, default="fixed-direct")
    parser.add_argument("--requests", type=int, default=300, help="N: each party runs N and 3N requests")
    parser.add_argument("--concurrency", default="1,16", help="comma-separated, e.g. 1,16")
    parser.add_argument("--peers", default="sqlmodel-docs,sqlmodel-docs-dependency", help=f"of {', '.join(PEERS)}")
    parser.add_argument("--warmup", type=int, default=200, help="requests before counting, in each process")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.child:
        install_loop(arguments.loop)
        asyncio.run(
            _child(
                arguments.child,
                arguments.setup,
                arguments.url,
                arguments.requests,
                int(arguments.concurrency),
                arguments.warmup,
            )
        )
    else:
        missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
        if missing:
            raise SystemExit(f"{' and '.join(missing)} not found: apt-get install valgrind")
        run_script(parser, "Client instructions per request (callgrind): ours vs {peers} ({setup})", main)
