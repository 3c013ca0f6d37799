"""Where an HTTP render's or action's CPU goes: bench_app's ASGI app driven in-process, no sockets.

Each request is one ASGI call of the app uvicorn serves in bench_http.py (the same FastAPI
app, middleware, Mountaineer controller, dependencies), with a minimal scope and no server
in between, so the client CPU per request is measured without the load generator, uvicorn's
HTTP parsing or the other processes of the machine in the figure. Side by side, in rotating
rounds, at `--concurrency` requests in flight:

- `render`: `GET /` through `get_db_session` vs the same controller on a raw asyncpg pool
  (`GET /rawpool`): what mountaineer_db adds to Mountaineer's own cost;
- `action`: the `@passthrough` action (commits), both ways;
- and each with the peers' session dependencies (bench_app.py: a plain SQLModel session as
  the docs show, the old `mountaineer.database`), same URL and pool settings.

`--layers` builds the render up layer by layer instead: the raw pool, + a yield dependency
handing out its connection (FastAPI), + a plain SQLModel session on our engine (SQLAlchemy),
+ ours. `--profile NAME` prints a cProfile of one variant instead (its CPU time, by function);
`--spin NAME` just runs it, for a sampling profiler:
`py-spy record -f raw -o out.txt -- .venv/bin/python bench/profile_http.py --spin ours-render`.

Run:  .venv/bin/python bench/profile_http.py --setup fixed-bouncer [--requests 2000] [--concurrency 16]
      .venv/bin/python bench/profile_http.py --setup fixed-bouncer --profile ours-render [--sort tottime]
"""

import argparse
import asyncio
import cProfile
import os
import pstats
import time
from collections.abc import Awaitable, Callable
from typing import Any

from _harness import (
    NAMED_SETUPS,
    POOL_SIZE,
    SETUPS,
    Stack,
    add_pgbouncer_argument,
    measure_many,
    run_concurrent,
    run_script,
)

from mountaineer_db import dispose_engines

ACTION = "/internal/api/bench_controller/ping"
RAW_ACTION = "/internal/api/raw_pool_controller/ping"
VARIANTS = {
    "ours-render": ("GET", "/"),
    "rawpool-render": ("GET", "/rawpool"),
    "sqlmodel-docs-render": ("GET", "/peer/sqlmodel-docs"),
    "mountaineer-database-render": ("GET", "/peer/mountaineer-database"),
    "layer-raw-dependency-render": ("GET", "/layer/raw-dependency"),
    "layer-plain-session-render": ("GET", "/layer/plain-session"),
    "ours-action": ("POST", ACTION),
    "rawpool-action": ("POST", RAW_ACTION),
    "sqlmodel-docs-action": ("POST", "/internal/api/peer_docs_controller/ping"),
    "mountaineer-database-action": ("POST", "/internal/api/peer_old_controller/ping"),
}


def asgi_request(app: Any, method: str, path: str) -> Callable[[], Awaitable[None]]:
    """One request through `app`, as uvicorn would call it; fails unless the answer is 200."""
    body = b"{}" if method == "POST" else b""
    headers = [(b"host", b"bench"), (b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]

    async def request() -> None:
        done = asyncio.Event()
        sent_body = False
        status = 0
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        await app(scope, receive, send)
        done.set()
        if status != 200:
            raise RuntimeError(f"{method} {path} answered {status}")

    return request


def configure(stack: Stack, setup: str) -> None:
    """bench_app reads its settings from the environment, as under uvicorn in bench_http.py."""
    url = stack.url_for(setup)
    os.environ["SQLALCHEMY_DATABASE_URI"] = url.render_as_string(hide_password=False)
    raw = stack.url_for(setup) if setup != "default" else stack.bouncer_url()
    os.environ["RAW_DSN"] = raw.set(drivername="postgresql").render_as_string(hide_password=False)
    os.environ["RAW_POOL_SIZE"] = str(POOL_SIZE)
    if not setup.startswith("default"):
        os.environ.update(
            {"DATABASE_POOL_TYPE": "FIXED_PROCESS", "DATABASE_POOL_SIZE": str(POOL_SIZE), "DATABASE_MAX_OVERFLOW": "0"}
        )
        if setup == "fixed-bouncer":
            os.environ["DATABASE_STATEMENT_CACHE_SIZE"] = "0"
    if setup in NAMED_SETUPS:  # --pgbouncer 1.24
        os.environ["DATABASE_POOLER_PREPARED_STATEMENTS"] = "true"



_PACKAGES = ("mountaineer_db", "sqlalchemy", "sqlmodel", "asyncpg", "fastapi", "starlette", "mountaineer", "pydantic")


def _package_of(path: str) -> str:
    """Which package a profiled function belongs to (what a `--profile` line's CPU is charged to)."""
    if "/mountaineer_db/" in path:
        return "mountaineer_db (ours)"
    if "/bench/" in path:
        return "the benchmark's own code"
    for package in _PACKAGES:
        if f"site-packages/{package}/" in path:
            return package
    if "site-packages/" in path:
        return "other libraries"
    return "Python itself (stdlib, builtins)"


def _print_by_package(stats: pstats.Stats, requests: int) -> None:
    """CPU per request by package, own time (tottime) of each function: what is ours to cut."""
    totals: dict[str, float] = {}
    for (path, _line, _name), value in stats.stats.items():  # type: ignore[attr-defined]
        package = _package_of(path)
        totals[package] = totals.get(package, 0.0) + value[2]
    whole = sum(totals.values())
    print(f"client CPU per request by package (own time, under the profiler: {whole * 1e6 / requests:.0f} µs in all)")
    for package, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"    {package:<34} {seconds * 1e6 / requests:7.0f} µs  {seconds / whole:6.1%}")

async def main(args: argparse.Namespace, stack: Stack) -> None:
    import bench_app
    from mountaineer.config import unregister_config

    configure(stack, args.setup)
    unregister_config()
    app = bench_app._build_ours()
    requests = {name: asgi_request(app, method, path) for name, (method, path) in VARIANTS.items()}
    failures: dict[str, list[str]] = {name: [] for name in requests}
    attempts: dict[str, int] = dict.fromkeys(requests, 0)

    def counted(name: str, request: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """A peer's request with its failures counted (peers fail behind PgBouncer), ours and raw's raised."""
        if name.startswith(("ours", "rawpool", "layer")):
            return request

        async def attempt() -> None:
            attempts[name] += 1
            try:
                await request()
            except Exception as error:  # noqa: BLE001 - a failing peer is reported as an error rate
                failures[name].append(f"{type(error).__name__}: {str(error).splitlines()[0][:120]}")

        return attempt

    requests = {name: counted(name, request) for name, request in requests.items()}
    for request in requests.values():  # warm up (engines, pools, first-use imports) and find failing peers
        await run_concurrent(request, args.probe, args.concurrency)
    failing = {
        name: f"errors {len(found)}/{attempts[name]} requests ({len(found) / attempts[name]:.0%}): {found[0]}"
        for name, found in failures.items()
        if found
    }
    if args.spin:
        started, cpu = time.perf_counter(), time.process_time()
        await run_concurrent(requests[args.spin], args.requests, args.concurrency)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        per = 1e6 / args.requests
        print(f"{args.spin}: {wall * per:.0f} µs/request, client CPU {cpu * per:.0f} µs")
    elif args.profile:
        request = requests[args.profile]
        profiler = cProfile.Profile(time.process_time)
        started = time.perf_counter()
        profiler.enable()
        await run_concurrent(request, args.requests, args.concurrency)
        profiler.disable()
        elapsed = time.perf_counter() - started
        print(f"{args.profile}: {elapsed * 1e6 / args.requests:.0f} µs/request under the profiler")
        stats = pstats.Stats(profiler)
        stats.sort_stats(args.sort).print_stats(args.limit)
        if args.callers:
            stats.print_callers(args.callers)
        _print_by_package(stats, args.requests)
    elif args.layers:
        layers = [
            ("Mountaineer render on a raw asyncpg pool (no dependency)", "rawpool-render"),
            ("+ the raw pool's connection from a yield dependency", "layer-raw-dependency-render"),
            ("+ a plain SQLModel session on our engine instead (SQLAlchemy)", "layer-plain-session-render"),
            ("+ ours: get_db_session", "ours-render"),
        ]
        await measure_many(
            f"[http-layers] render, {args.setup}, concurrency {args.concurrency}",
            [
                (label, lambda r=requests[name]: run_concurrent(r, args.requests, args.concurrency))
                for label, name in layers
            ],
            rounds=args.rounds,
        )
    else:
        for kind in ("render", "action"):
            names = [f"rawpool-{kind}", f"ours-{kind}"]
            if not args.no_peers:
                names += [f"{peer}-{kind}" for peer in ("sqlmodel-docs", "mountaineer-database")]
            for name in [name for name in names if name in failing]:
                names.remove(name)
            await measure_many(
                f"[http-cpu] {kind}, {args.setup}, concurrency {args.concurrency} (first line: Mountaineer on a "
                "raw asyncpg pool, no mountaineer_db)",
                [(name, lambda r=requests[name]: run_concurrent(r, args.requests, args.concurrency)) for name in names],
                rounds=args.rounds,
            )
            for name, failure in failing.items():
                if name.endswith(kind):
                    print(f"    {name:<58} {failure}", flush=True)
    await bench_app._close_pools()
    await dispose_engines()
    unregister_config()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=SETUPS + NAMED_SETUPS, default="fixed-bouncer")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--profile", choices=list(VARIANTS), default=None)
    parser.add_argument("--spin", choices=list(VARIANTS), default=None, help="run one variant (for py-spy)")
    parser.add_argument("--no-peers", action="store_true", help="leave out the peers' routes")
    parser.add_argument("--layers", action="store_true", help="the render built up layer by layer instead")
    parser.add_argument("--probe", type=int, default=100, help="warm-up requests per variant (failures counted)")
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--callers", default=None, help="with --profile: who calls the functions matching this regex")
    parser.add_argument("--limit", type=int, default=45)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    add_pgbouncer_argument(parser)
    run_script(parser, "HTTP request CPU, in-process ASGI: {setup}", main)
