"""Request sessions side by side with raw asyncpg, in one process (no HTTP).

Each request is `SELECT 1` in a transaction, committed:

- ours: `DatabaseDependencies.get_db_session` called as FastAPI calls it (wrapped in
  `asynccontextmanager`, the engine from `get_db(config)`, no HTTP request), then
  `await session.exec(text("SELECT 1"))`, `await session.commit()`;
- raw: asyncpg, `async with connection.transaction(): await connection.fetchval("SELECT 1")`.

Comparisons, each at concurrency 1 and 16:

1. default config (NULL pool) via PgBouncer  vs  raw connect-per-request via PgBouncer
   (ssl=False, statement_cache_size=0: the best raw settings for a pooler); [1u] the same
   through PgBouncer's Unix-domain socket (`postgresql://user@:PORT/db?host=/socket/dir`);
2. FIXED_PROCESS direct (pool 10, no overflow)  vs  raw `asyncpg.create_pool` of 10, direct;
3. FIXED_PROCESS via PgBouncer (DATABASE_STATEMENT_CACHE_SIZE=0)  vs  raw pool of 10 via
   PgBouncer (statement_cache_size=0).

[7] the lazy-load and N+1 checks (docs/loading.md): ours with DATABASE_LAZY_LOADS=allow and no
N+1 threshold (off: nothing installed) vs the default (raise) vs raise with
DATABASE_N_PLUS_ONE_THRESHOLD=10, FIXED_PROCESS direct, concurrency 1; each request an ORM
`select()` of one row of a mapped table (what the checks look at), committed. `--checks-only`
runs only this.

The peers of `peers.py` (what a user would pick instead: a plain SQLModel session as the docs
show it, the old `mountaineer.database`, advanced-alchemy) run in the same rotation, each at
the same URL with the same pool size; each line gives ours ÷ peer, or the peer's error rate
where it fails (behind PgBouncer, named prepared statements do).

Run:  .venv/bin/python bench/bench_sessions.py [--rounds 9] [--requests 400] [--loop asyncio] [--peers none]
"""

import argparse
import statistics
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager

from _harness import (
    POOL_SIZE,
    SETUPS,
    Comparison,
    Stack,
    Timing,
    ours_request,
    raw_connect_request,
    raw_pool,
    raw_pool_request,
    rotating_rounds,
    run_concurrent,
    run_script,
)
from peers import PEERS, Peer, build_peer
from sqlalchemy import text
from sqlmodel import Field, SQLModel, select

from mountaineer_db import DatabaseConfig, DatabaseDependencies, LazyLoads, dispose_engines
from mountaineer_db.engines.engine import engine_for


class BenchItem(SQLModel, table=True):
    __tablename__ = "bench_item"

    id: int | None = Field(default=None, primary_key=True)
    name: str


def orm_request(config: DatabaseConfig) -> Callable[[], Awaitable[None]]:
    """`get_db_session` as FastAPI calls it; an ORM select of one row, committed."""
    dependency = asynccontextmanager(DatabaseDependencies.get_db_session)
    query = select(BenchItem).where(BenchItem.id == 1)

    async def request() -> None:
        async with dependency(engine=await DatabaseDependencies.get_db(config=config)) as session:
            (await session.exec(query)).one()
            await session.commit()

    return request


async def checks_comparison(stack: Stack, args: argparse.Namespace) -> None:
    """[7]: the checks off, on by default, and on with an N+1 threshold; ratios to off."""
    base = stack.config("fixed-direct")
    async with engine_for(base).begin() as connection:
        await connection.run_sync(lambda sync: SQLModel.metadata.create_all(sync, [BenchItem.__table__]))  # type: ignore[attr-defined]
        await connection.execute(text("INSERT INTO bench_item (id, name) VALUES (1, 'one') ON CONFLICT DO NOTHING"))
    variants = {
        "off: DATABASE_LAZY_LOADS=allow, no threshold": base.model_copy(
            update={"DATABASE_LAZY_LOADS": LazyLoads.ALLOW}
        ),
        "default: DATABASE_LAZY_LOADS=raise": base,
        "raise + DATABASE_N_PLUS_ONE_THRESHOLD=10": base.model_copy(update={"DATABASE_N_PLUS_ONE_THRESHOLD": 10}),
    }
    requests = [orm_request(config) for config in variants.values()]
    measured = await rotating_rounds(
        [(lambda request=request: run_concurrent(request, args.requests, 1)) for request in requests], args.rounds
    )
    off = measured[0]
    print("[7] lazy-load and N+1 checks, FIXED_PROCESS direct, ORM select, concurrency 1", flush=True)
    for (label, _), values in zip(variants.items(), measured, strict=True):
        ratio = statistics.median(a / b for a, b in zip(values, off, strict=True))
        cpu = statistics.median(a.cpu / b.cpu for a, b in zip(values, off, strict=True))  # type: ignore[attr-defined]
        print(
            f"    {label:<48} {statistics.median(values):>8.0f} µs/req"
            f"   (client CPU {statistics.median(v.cpu for v in values):>5.0f} µs)"  # type: ignore[attr-defined]
            f"  ratio to off = {ratio:.3f}×; client CPU ratio {cpu:.3f}×",
            flush=True,
        )
    await dispose_engines()

# setup: (title, ours label, raw label, target ratio); run in this order at each concurrency.
COMPARISONS = {
    "default": (
        "[1] default config (NULL pool) via PgBouncer",
        "get_db_session, NULL pool, via PgBouncer",
        "asyncpg connect-per-request, via PgBouncer",
        1.0,
    ),
    "default-socket": (
        "[1u] default config (NULL pool) via PgBouncer's Unix socket",
        "get_db_session, NULL pool, PgBouncer Unix socket",
        "asyncpg connect-per-request, PgBouncer Unix socket",
        1.0,
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


def peer_lines(ours: list[float], peers: list[tuple[Peer, list[float]]], raw: float) -> list[str]:
    """One line per peer: its median, ours ÷ peer (median of per-round ratios), or its error rate."""
    lines = []
    for peer, values in peers:
        if peer.errors:
            lines.append(
                f"    peer  {peer.name:<48}   errors {peer.errors}/{peer.attempts} requests "
                f"({peer.error_rate:.0%}): {peer.samples[0] if peer.samples else ''}"
            )
            continue
        ratio = statistics.median(a / b for a, b in zip(ours, values, strict=True))
        cpu = statistics.median(getattr(v, "cpu", float("nan")) for v in values)
        verdict = "MET" if ratio <= 1.0 else "MISSED"
        lines.append(
            f"    peer  {peer.name:<48} {statistics.median(values):>8.0f} µs/req   (client CPU {cpu:>5.0f} µs)"
            f"  ours/peer = {ratio:.2f}×  (peer/raw {statistics.median(values) / raw:.2f}×)  target ≤ 1.00× {verdict}"
        )
    return lines


async def main(args: argparse.Namespace, stack: Stack) -> list[Comparison]:
    results: list[Comparison] = []
    if args.checks_only:
        await checks_comparison(stack, args)
        return results

    def measure(request: Callable[[], Awaitable[None]], concurrency: int) -> Callable[[], Awaitable[Timing]]:
        requests = args.requests if concurrency == 1 else args.requests * 2
        return lambda: run_concurrent(request, requests, concurrency)

    configs = {setup: stack.config(setup) for setup in SETUPS}
    selected = set(args.only.split(",")) if args.only else set(SETUPS)
    peer_names = [name for name in args.peers.split(",") if name] if args.peers != "none" else []
    for concurrency in (1, 16):
        for setup, (title, ours_label, raw_label, target) in COMPARISONS.items():
            if setup not in selected:
                continue
            pool = None
            if setup in ("default", "default-socket"):
                raw = raw_connect_request(stack, socket=setup == "default-socket")
            else:
                pool = await raw_pool(stack.url_for(setup), via_bouncer=setup == "fixed-bouncer")
                raw = raw_pool_request(pool)
            peers = [
                build_peer(
                    name, stack.url_for(setup), connect_per_request=setup.startswith("default"), pool_size=POOL_SIZE
                )
                for name in peer_names
            ]
            try:
                measured = await rotating_rounds(
                    [
                        measure(ours_request(configs[setup]), concurrency),
                        measure(raw, concurrency),
                        *(measure(peer.counted, concurrency) for peer in peers),
                    ],
                    args.rounds,
                )
                result = Comparison(
                    f"{title}, concurrency {concurrency}",
                    ours_label,
                    raw_label,
                    measured[0],
                    measured[1],
                    target=target,
                )
                lines = result.lines()
                if peers:
                    raw_median = statistics.median(measured[1])
                    lines += peer_lines(measured[0], list(zip(peers, measured[2:], strict=True)), raw_median)
                print("\n".join(lines), flush=True)
                results.append(result)
            finally:
                if pool is not None:
                    await pool.close()
                for peer in peers:
                    await peer.close()
        await dispose_engines()
    await checks_comparison(stack, args)
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="alternating rounds per comparison (default 9)")
    parser.add_argument("--requests", type=int, default=400, help="requests per round at concurrency 1 (x2 at 16)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--checks-only", action="store_true", help="run only [7], the lazy-load and N+1 checks")
    parser.add_argument("--only", default="", help="comma list of: " + ", ".join(SETUPS))
    parser.add_argument(
        "--peers", default=",".join(PEERS), help=f"comma list of: {', '.join(PEERS)}; or none (default: all)"
    )
    return parser


if __name__ == "__main__":
    run_script(build_parser(), "Request sessions vs raw asyncpg (SELECT 1 in a transaction, committed)", main)
