"""HTTP side by side: a Mountaineer app on mountaineer_db vs bare FastAPI on a raw asyncpg pool.

Both apps (see bench_app.py) are served by uvicorn (2 workers each, uvloop, httptools)
behind the same PgBouncer (transaction mode, pool 20); the load comes from loadgen.py in a
separate process (keep-alive connections). Rounds alternate between the two servers;
figures are medians over rounds:

- render: `GET /` (a Mountaineer render reading `SELECT 1` through `get_db_session`, no commit)
  vs the raw endpoint running the same query in a transaction;
- action: a `@passthrough` action running the same query and committing vs the same raw endpoint.

A third variant, the same Mountaineer render and action on a raw asyncpg pool (no
mountaineer_db), separates what Mountaineer itself costs from what mountaineer_db costs. The
peers (bench_app.py: a plain SQLModel session dependency as the docs show, the old
`mountaineer.database`) serve the same render and action from the same workers, same URL and
pool settings; where one fails behind PgBouncer its error rate is printed instead of a ratio.

Ours runs twice: with the default config (NULL pool via PgBouncer) and with FIXED_PROCESS
via PgBouncer (pool 10 per worker, DATABASE_STATEMENT_CACHE_SIZE=0); raw uses an asyncpg
pool of 10 per worker (ssl=False, statement_cache_size=0). With `--pgbouncer 1.24` (PgBouncer
>= 1.21, scripts/build_pgbouncer.sh) a third time, [4e]/[4f]: FIXED_PROCESS via PgBouncer with
DATABASE_POOLER_PREPARED_STATEMENTS (named statements, statement cache 100).

`--scale` runs the load test instead: PostgreSQL max_connections 50, PgBouncer pool 20,
4 uvicorn workers, 500 concurrent clients on the render, for the default config, for
FIXED_PROCESS via PgBouncer with pool 5 per worker (20 client connections: waiters queue in
SQLAlchemy's pool) and 25 per worker (100 client connections on PgBouncer's 20 server
connections: waiters queue in PgBouncer), and for the raw app (pool 5 per worker).

Run:  .venv/bin/python bench/bench_http.py [--rounds 5] [--duration 3] [--concurrency 16] [--pgbouncer 1.24]
      .venv/bin/python bench/bench_http.py --scale [--duration 15]
"""

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _harness import Stack, add_pgbouncer_argument, header, named_statements_supported, servers, use_pgbouncer

from mountaineer_db.servers.cluster import free_port

HERE = Path(__file__).resolve().parent
ACTION_PATH = "/internal/api/bench_controller/ping"


@contextlib.contextmanager
def uvicorn(target: str, env: dict[str, str], *, workers: int, log_dir: Path) -> Iterator[str]:
    """Serve `bench_app:<target>` with uvicorn; yield its base URL; stop it by its PID."""
    port = free_port()
    log = open(log_dir / f"uvicorn-{target}-{port}.log", "wb")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            f"bench_app:{target}",
            "--app-dir",
            str(HERE),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env={**os.environ, **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(process, port, log_dir / f"uvicorn-{target}-{port}.log")
        yield base
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _wait_ready(process: "subprocess.Popen[bytes]", port: int, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"uvicorn exited during start-up:\n{log.read_text(errors='replace')[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
            if sock.recv(64).startswith(b"HTTP/1.1 200"):
                return
        time.sleep(0.2)
    raise RuntimeError(f"uvicorn did not answer within {timeout}s; see {log}")


def load(url: str, *, concurrency: int, duration: float, post: bool = False, warmup: float = 0.5) -> dict[str, Any]:
    """Run loadgen.py in its own process; return its JSON summary."""
    argv = [sys.executable, str(HERE / "loadgen.py"), url, "--concurrency", str(concurrency)]
    argv += ["--duration", str(duration), "--warmup", str(warmup)]
    if post:
        argv.append("--post")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + warmup + 180, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def ours_env(stack: Stack, **settings: str) -> dict[str, str]:
    url = stack.bouncer_url().render_as_string(hide_password=False)
    return {"SQLALCHEMY_DATABASE_URI": url, **settings}


def raw_env(stack: Stack, pool_size: int) -> dict[str, str]:
    dsn = stack.bouncer_url().set(drivername="postgresql").render_as_string(hide_password=False)
    return {"RAW_DSN": dsn, "RAW_POOL_SIZE": str(pool_size)}


RAW_ACTION_PATH = "/internal/api/raw_pool_controller/ping"
PEER_PAGES = ("sqlmodel-docs", "mountaineer-database")  # bench_app.py serves them at /peer/<name>
PEER_ACTIONS = {"sqlmodel-docs": "peer_docs_controller", "mountaineer-database": "peer_old_controller"}


def compare_http(
    label: str,
    variants: list[tuple[str, str]],
    args: argparse.Namespace,
    *,
    post: bool,
    target: float | None = None,
    peers: int = 0,
) -> None:
    """Rotate load runs over `variants` (label, url): ours first, then Mountaineer on a raw pool,
    then `peers` peers, then raw FastAPI last. `target`: the least ours/(Mountaineer + raw pool)
    throughput ratio wanted."""
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    if not args.quick:
        for _, url in variants:
            load(url, concurrency=args.concurrency, duration=1, post=post)
    warmup = 0.1 if args.quick else 0.5
    for index in range(args.rounds):
        shift = index % len(variants)
        for name, url in variants[shift:] + variants[:shift]:
            rows[name].append(load(url, concurrency=args.concurrency, duration=args.duration, post=post, warmup=warmup))

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in rows[name])

    def ratio(a: str, b: str, key: str) -> float:
        return statistics.median(x[key] / y[key] for x, y in zip(rows[a], rows[b], strict=True))

    def errors(name: str) -> tuple[int, int]:
        failed = sum(r["errors"] for r in rows[name])
        return failed, failed + sum(r["requests"] for r in rows[name])

    print(label, flush=True)
    for name, _ in variants:
        failed, total = errors(name)
        rps = med(name, "rps") if any(r["requests"] for r in rows[name]) else 0.0
        shown = f"{rps:>6.0f} req/s  p99 {med(name, 'p99_ms'):>6.1f} ms" if rps else "     — (no request succeeded)"
        print(f"    {name:<52} {shown}  errors {failed}" + (f" of {total} ({failed / total:.0%})" if failed else ""))
    ours, raw = variants[0][0], variants[-1][0]
    rps = ratio(ours, raw, "rps")
    print(
        f"    ratio ours/raw: throughput {rps:.2f}×, time per request {1 / rps:.2f}×, "
        f"p99 {ratio(ours, raw, 'p99_ms'):.2f}× "
        f"({args.rounds} rounds of {args.duration:g} s, {args.concurrency} clients)",
        flush=True,
    )
    if len(variants) >= 3:
        middle = variants[1][0]
        rps = ratio(ours, middle, "rps")
        verdict = "" if target is None else f"  target ≥ {target:.2f}× {'MET' if rps >= target else 'MISSED'}"
        print(
            f"    ratio ours/(Mountaineer + raw pool): throughput {rps:.2f}×, time per request {1 / rps:.2f}×, "
            f"p99 {ratio(ours, middle, 'p99_ms'):.2f}×{verdict}",
            flush=True,
        )
    for name, _ in variants[2 : 2 + peers]:
        failed, total = errors(name)
        if failed:
            print(f"    ratio ours/{name}: the peer failed {failed} of {total} requests ({failed / total:.0%})")
            continue
        per_request = ratio(name, ours, "rps")  # ours' time per request ÷ the peer's
        verdict = "MET" if per_request <= 1.0 else "MISSED"
        print(
            f"    ratio ours/{name}: time per request {per_request:.2f}×, p99 {ratio(ours, name, 'p99_ms'):.2f}×"
            f"  target ≤ 1.00× {verdict}",
            flush=True,
        )
    for name, _ in variants:
        for row in rows[name]:
            for sample in row.get("error_samples", [])[:1]:
                print(f"    error sample ({name}): {sample}")


def side_by_side(args: argparse.Namespace, log_dir: Path) -> None:
    with servers() as stack:
        fixed = {
            "DATABASE_POOL_TYPE": "FIXED_PROCESS",
            "DATABASE_POOL_SIZE": "10",
            "DATABASE_MAX_OVERFLOW": "0",
            "DATABASE_STATEMENT_CACHE_SIZE": "0",
        }
        setups = [("default config (NULL pool) via PgBouncer", {}, "a", 0.38)]
        if not args.quick:
            setups.append(("FIXED_PROCESS (10/worker) via PgBouncer", fixed, "c", 0.8))
        if not args.quick and named_statements_supported():  # --pgbouncer 1.24
            named = {**fixed, "DATABASE_POOLER_PREPARED_STATEMENTS": "true"}
            del named["DATABASE_STATEMENT_CACHE_SIZE"]
            description = "FIXED_PROCESS (10/worker) via PgBouncer, DATABASE_POOLER_PREPARED_STATEMENTS"
            setups.append((description, named, "e", 0.8))
        for description, settings, letter, target in setups:
            with (
                uvicorn("raw", raw_env(stack, 10), workers=2, log_dir=log_dir) as raw_url,
                uvicorn(
                    "ours", {**ours_env(stack, **settings), **raw_env(stack, 10)}, workers=2, log_dir=log_dir
                ) as url,
            ):
                mountaineer_raw = "Mountaineer + asyncpg pool(10), no mountaineer_db"
                peers = [] if args.no_peers else list(PEER_PAGES)
                compare_http(
                    f"[4{letter}] render GET /: ours = Mountaineer + mountaineer_db, {description}",
                    [
                        ("ours (render through get_db_session)", url + "/"),
                        (mountaineer_raw, url + "/rawpool"),
                        *((f"peer {peer}", f"{url}/peer/{peer}") for peer in peers),
                        ("raw FastAPI + asyncpg pool(10)", raw_url + "/"),
                    ],
                    args,
                    post=False,
                    target=target,
                    peers=len(peers),
                )
                compare_http(
                    f"[4{chr(ord(letter) + 1)}] @passthrough action (commits): ours = Mountaineer + mountaineer_db, "
                    f"{description}",
                    [
                        ("ours (action through get_db_session)", url + ACTION_PATH),
                        (mountaineer_raw, url + RAW_ACTION_PATH),
                        *((f"peer {peer}", f"{url}/internal/api/{PEER_ACTIONS[peer]}/ping") for peer in peers),
                        ("raw FastAPI + asyncpg pool(10)", raw_url + ACTION_PATH),
                    ],
                    args,
                    post=True,
                    peers=len(peers),
                )


def scale(args: argparse.Namespace, log_dir: Path) -> None:
    clients, workers = args.clients, 4
    print(
        f"[6] scale: {workers} uvicorn workers, {clients} concurrent clients, GET / (render), "
        f"PgBouncer pool 20, PostgreSQL max_connections 50, {args.duration:g} s per run, "
        f"{args.scale_rounds} rotating rounds (medians; max over all)",
        flush=True,
    )
    per_worker = "5"
    runs = [
        ("ours, default config (NULL pool) via PgBouncer", "ours", {}),
        (
            f"ours, FIXED_PROCESS via PgBouncer (pool {per_worker}/worker)",
            "ours",
            {
                "DATABASE_POOL_TYPE": "FIXED_PROCESS",
                "DATABASE_POOL_SIZE": per_worker,
                "DATABASE_MAX_OVERFLOW": "0",
                "DATABASE_STATEMENT_CACHE_SIZE": "0",
            },
        ),
        (
            "ours, FIXED_PROCESS via PgBouncer (pool 25/worker)",
            "ours",
            {
                "DATABASE_POOL_TYPE": "FIXED_PROCESS",
                "DATABASE_POOL_SIZE": "25",
                "DATABASE_MAX_OVERFLOW": "0",
                "DATABASE_STATEMENT_CACHE_SIZE": "0",
            },
        ),
        (f"raw FastAPI + asyncpg pool ({per_worker}/worker) via PgBouncer", "raw", None),
    ]
    results: dict[str, list[dict[str, Any]]] = {label: [] for label, _, _ in runs}
    with servers(pg_settings={"max_connections": "50"}, bouncer_settings={"default_pool_size": "20"}) as stack:
        for index in range(args.scale_rounds):
            shift = index % len(runs)
            for label, target, settings in runs[shift:] + runs[:shift]:
                env = raw_env(stack, int(per_worker)) if settings is None else ours_env(stack, **settings)
                with uvicorn(target, env, workers=workers, log_dir=log_dir) as base:
                    results[label].append(load(base + "/", concurrency=clients, duration=args.duration, warmup=2.0))
    for label, _, _ in runs:
        rows = results[label]

        def med(key: str, rows: list[dict[str, Any]] = rows) -> float:
            return statistics.median(r[key] for r in rows)

        print(
            f"    {label:<58} {med('rps'):>6.0f} req/s  p50 {med('p50_ms'):>6.1f} ms  "
            f"p99 {med('p99_ms'):>7.1f} ms  max {max(r['max_ms'] for r in rows):>7.1f} ms  "
            f"requests {sum(r['requests'] for r in rows)}  errors {sum(r['errors'] for r in rows)}",
            flush=True,
        )
        for row in rows:
            for sample in row.get("error_samples", [])[:1]:
                print(f"        error sample: {sample}")
    raw_rows = results[runs[-1][0]]
    for label, _, _ in runs[:-1]:
        p99 = statistics.median(a["p99_ms"] / b["p99_ms"] for a, b in zip(results[label], raw_rows, strict=True))
        verdict = "MET" if p99 <= 1.5 and not sum(r["errors"] for r in results[label]) else "MISSED"
        print(f"    p99 ratio ({label}) / raw: {p99:.2f}×  (target ≤ 1.50× with zero errors: {verdict})", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=None, help="seconds per load run (3; 15 with --scale)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--scale", action="store_true", help="run the 4-worker, 500-client load test instead")
    parser.add_argument("--clients", type=int, default=500, help="concurrent clients for --scale")
    parser.add_argument("--scale-rounds", type=int, default=2, help="rotating rounds of the --scale runs")
    parser.add_argument("--quick", action="store_true", help="smoke run: default config only, no warm-up loads")
    parser.add_argument("--no-peers", action="store_true", help="leave out the peers' routes")
    add_pgbouncer_argument(parser)
    arguments = parser.parse_args()
    use_pgbouncer(arguments.pgbouncer)
    if arguments.duration is None:
        arguments.duration = 15.0 if arguments.scale else 3.0
    header(
        "HTTP: Mountaineer + mountaineer_db vs FastAPI + raw asyncpg pool" + (" (scale)" if arguments.scale else ""),
        loop="uvloop",
    )
    with tempfile.TemporaryDirectory(prefix="mountaineer-db-bench-http-") as logs:
        (scale if arguments.scale else side_by_side)(arguments, Path(logs))
