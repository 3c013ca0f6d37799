"""Per request: round trips, statements, SSL, and how long connections and transactions are held.

A counting proxy (wire.py) sits in front of PgBouncer (or PostgreSQL) and reads the wire
protocol; requests run one at a time after a warm-up. For each setup it prints, per request:
connections opened, SSL requests, client round trips (connect and authentication included),
the SQL sent (simple-query and parse messages, with their text: asyncpg parses an unnamed
statement twice, once to prepare it and again when it executes it), and medians of:
the handler's run time, the transaction span (behind PgBouncer in transaction mode that is
the time a server connection is held) and when the transaction and the client connection
ended relative to the end of the handler (and, over HTTP, to the response being sent).

Setups: ours and raw for the three in-process comparisons of bench_sessions.py, a read-only
handler (no commit), and over HTTP (in-process ASGI) the Mountaineer render and action of
bench_app.py with the default config via PgBouncer, and with FIXED_PROCESS direct (where
it also reports when the request's pooled connection goes back to the pool). [6]: a handler
of two transactions with DATABASE_TENANT_SETTING off, on with a tenant bound, and on without
one (default config via PgBouncer, and FIXED_PROCESS direct): the same round trips.

Run:  .venv/bin/python bench/bench_roundtrips.py [--requests 200]
"""

import argparse
import asyncio
import os
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
from _harness import (
    POOL_SIZE,
    SELECT_1,
    Stack,
    add_pgbouncer_argument,
    config_for,
    named_statements_supported,
    raw_pool,
    run_script,
)
from _harness import raw_connect as connect
from sqlalchemy import event
from sqlalchemy.engine import URL
from wire import CountingProxy

from mountaineer_db import DatabaseConfig, DatabaseDependencies, dispose_engines
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.engines.tenants import bind_tenant

# A request returns its timeline: {"begin", "start", "end", "done"} and, over HTTP, "sent".
Timeline = dict[str, float]
Request = Callable[[], Awaitable[Timeline]]
now = time.perf_counter
CHECKINS: list[float] = []  # when a pooled connection went back to the pool (FIXED_PROCESS over HTTP)


def through(proxy: CountingProxy, url: URL) -> URL:
    return url.set(host="127.0.0.1", port=proxy.port)


def ours(config: DatabaseConfig, *, commit: bool = True, tenant: str | None = None, twice: bool = False) -> Request:
    """`get_db_session` as FastAPI calls it (no HTTP request), like bench_sessions.py.

    `tenant`: bound to the session as `DatabaseDependencies.for_tenant` does (DATABASE_TENANT_SETTING
    on); `twice`: the handler runs two transactions (SELECT 1, commit, SELECT 1, commit).
    """
    dependency = asynccontextmanager(DatabaseDependencies.get_db_session)

    async def request() -> Timeline:
        t = {"begin": now()}
        async with dependency(engine=await DatabaseDependencies.get_db(config=config)) as session:
            if tenant is not None:
                bind_tenant(session, tenant, config)
            t["start"] = now()
            for _ in range(2 if twice else 1):
                await session.exec(SELECT_1)
                if commit:
                    await session.commit()
            t["end"] = now()
        t["done"] = now()
        return t

    return request


def raw_connect(url: URL) -> Request:
    async def request() -> Timeline:
        t = {"begin": now()}
        t["start"] = t["begin"]
        connection = await connect(url)
        try:
            async with connection.transaction():
                await connection.fetchval("SELECT 1")
            t["end"] = now()
        finally:
            await connection.close()
        t["done"] = now()
        return t

    return request


def raw_pooled(pool: "asyncpg.Pool[Any]") -> Request:
    async def request() -> Timeline:
        t = {"begin": now()}
        async with pool.acquire() as connection:
            t["start"] = now()
            async with connection.transaction():
                await connection.fetchval("SELECT 1")
            t["end"] = now()
        t["done"] = now()
        return t

    return request


async def report(label: str, proxy: CountingProxy, request: Request, n: int) -> float:
    """Print what `request` costs on the wire (measured over `n` requests); return its round trips per request."""
    for _ in range(10):
        await request()
    await asyncio.sleep(0.05)
    proxy.reset()
    timelines = [await request() for _ in range(n)]
    await asyncio.sleep(0.05)
    connections = proxy.connections
    new = [c for c in connections if c.opened >= timelines[0]["begin"]]
    statements = Counter(sql for c in connections for sql in c.sql)
    round_trips = sum(c.round_trips for c in connections)
    spans = sorted((start, end) for c in connections for start, end in c.transactions)

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:6.2f} ms" if values else "     n/a"

    txn_for: list[tuple[float, float]] = []
    conn_for: list[tuple[float, float | None]] = []
    for t in timelines:
        txn_for += [s for s in spans if t["begin"] <= s[0] <= t["done"]]
        conn_for += [(c.opened, c.closed) for c in new if t["begin"] <= c.opened <= t["done"]]
    handler = [t["end"] - t["start"] for t in timelines]
    tails_txn = [
        next((s[1] for s in txn_for if t["begin"] <= s[0] <= t["done"]), float("nan")) - t["end"] for t in timelines
    ]
    print(label, flush=True)
    print(
        f"    per request: {len(new) / n:.2f} connections opened, "
        f"{sum(c.ssl_requests for c in connections) / n:.2f} SSL requests, "
        f"{round_trips / n:.2f} round trips, {sum(statements.values()) / n:.2f} SQL messages (Query/Parse):",
        flush=True,
    )
    for sql, count in statements.most_common(6):
        print(f"        {count / n:5.2f} × {sql[:90]!r}")
    print(f"    handler run time            {ms(handler)}")
    print(f"    transaction open            {ms([e - s for s, e in txn_for])}   ({len(txn_for) / n:.2f} per request)")
    print(f"    transaction ended after the handler's end   {ms([x for x in tails_txn if x == x])}")
    if conn_for:
        closed = [c for c in conn_for if c[1] is not None]
        print(f"    client connection open      {ms([e - s for s, e in closed])}")  # type: ignore[operator]
        tails_conn = []
        for t in timelines:
            for opened, closed_at in conn_for:
                if closed_at is not None and t["begin"] <= opened <= t["done"]:
                    tails_conn.append(closed_at - t["end"])
        print(f"    client connection closed after the handler's end   {ms(tails_conn)}")
    if all("checkin" in t for t in timelines):
        after_end = ms([t["checkin"] - t["end"] for t in timelines])
        after_sent = ms([t["checkin"] - t["sent"] for t in timelines])
        print(f"    pool connection checked in after the handler's end     {after_end}")
        print(f"    pool connection checked in after the response was sent {after_sent}")
    if all("sent" in t for t in timelines):
        sent_txn = [
            next((s[1] for s in txn_for if t["begin"] <= s[0] <= t["done"]), float("nan")) - t["sent"]
            for t in timelines
        ]
        print(f"    transaction ended after the response was sent   {ms([x for x in sent_txn if x == x])}")
        print(f"    response sent after the handler's end           {ms([t['sent'] - t['end'] for t in timelines])}")
    return round_trips / n


def http_request(app: Any, path: str, *, post: bool) -> Request:
    import bench_app

    sent: list[float] = []

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        async def send_wrapper(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                sent.append(now())

        await app(scope, receive, send_wrapper)

    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://bench")

    async def request() -> Timeline:
        assert bench_app.HANDLER_TIMES is not None
        bench_app.HANDLER_TIMES.clear()
        sent.clear()
        t = {"begin": now()}
        response = await (client.post(path, json={}) if post else client.get(path))
        assert response.status_code == 200, response.text
        t["done"] = now()
        t["start"], t["end"] = bench_app.HANDLER_TIMES[-1]
        t["sent"] = sent[-1]
        if CHECKINS and CHECKINS[-1] >= t["begin"]:
            t["checkin"] = CHECKINS[-1]
        return t

    return request


async def report_http(app: Any, proxy: CountingProxy, n: int, render_label: str, action_label: str) -> None:
    """Report bench_app's page render (GET /), then its @passthrough action (POST, commits)."""
    await report(render_label, proxy, http_request(app, "/", post=False), n)
    await report(action_label, proxy, http_request(app, "/internal/api/bench_controller/ping", post=True), n)


async def main(args: argparse.Namespace, stack: Stack) -> None:
    n = args.requests
    async with (
        CountingProxy("127.0.0.1", stack.bouncer.port) as via_bouncer,
        CountingProxy("127.0.0.1", stack.cluster.port) as direct,
    ):
        bouncer_url, direct_url = through(via_bouncer, stack.bouncer_url()), through(direct, stack.direct_url())
        default = config_for("default", bouncer_url)
        await report("[5a] ours: default config (NULL pool) via PgBouncer, commits", via_bouncer, ours(default), n)
        await report(
            "[5b] ours: default config via PgBouncer, read-only handler (no commit)",
            via_bouncer,
            ours(default, commit=False),
            n,
        )
        await report("[5c] raw: asyncpg connect-per-request via PgBouncer", via_bouncer, raw_connect(bouncer_url), n)
        fixed = config_for("fixed-direct", direct_url)
        await report("[5d] ours: FIXED_PROCESS direct, commits", direct, ours(fixed), n)
        pool = await raw_pool(direct_url, via_bouncer=False)
        await report(f"[5e] raw: asyncpg.create_pool({POOL_SIZE}) direct", direct, raw_pooled(pool), n)
        await pool.close()
        fixed_bouncer = config_for("fixed-bouncer", bouncer_url)
        unnamed = await report("[5f] ours: FIXED_PROCESS via PgBouncer, commits", via_bouncer, ours(fixed_bouncer), n)
        pool = await raw_pool(bouncer_url, via_bouncer=True)
        await report(f"[5g] raw: asyncpg.create_pool({POOL_SIZE}) via PgBouncer", via_bouncer, raw_pooled(pool), n)
        await pool.close()
        await dispose_engines()
        if named_statements_supported():  # --pgbouncer 1.24: DATABASE_POOLER_PREPARED_STATEMENTS
            named_fixed = config_for("fixed-bouncer-named", bouncer_url)
            label = "[5l] ours: FIXED_PROCESS via PgBouncer, DATABASE_POOLER_PREPARED_STATEMENTS, commits"
            named = await report(label, via_bouncer, ours(named_fixed), n)
            print(
                f"    round trips per request, named vs unnamed statements (FIXED_PROCESS via PgBouncer): "
                f"{named:.2f} vs {unnamed:.2f} ({unnamed - named:+.2f} saved; target: one fewer per repeated "
                f"statement: {'MET' if unnamed - named >= 0.99 else 'MISSED'})",
                flush=True,
            )
            default_named = config_for("default-named", bouncer_url)
            label = "[5m] ours: default config (NULL pool) via PgBouncer, DATABASE_POOLER_PREPARED_STATEMENTS, commits"
            await report(label, via_bouncer, ours(default_named), n)
            await dispose_engines()

        # DATABASE_TENANT_SETTING: the same round trips with tenancy on as off (SET LOCAL rides on BEGIN).
        tenancy = {"DATABASE_TENANT_SETTING": "app.tenant_id"}
        for label, config in (
            ("default config via PgBouncer", default),
            ("FIXED_PROCESS direct", fixed),
        ):
            proxy = direct if config is fixed else via_bouncer
            tenanted = config.model_copy(update=tenancy)
            await report(f"[6a] ours: {label}, two transactions, tenancy off", proxy, ours(config, twice=True), n)
            await report(
                f"[6b] ours: {label}, two transactions, tenancy on, a tenant bound",
                proxy,
                ours(tenanted, tenant="tenant-a", twice=True),
                n,
            )
            await report(
                f"[6c] ours: {label}, two transactions, tenancy on, no tenant", proxy, ours(tenanted, twice=True), n
            )
            await dispose_engines()

        import bench_app
        from mountaineer.config import unregister_config

        bench_app.HANDLER_TIMES = []
        os.environ["SQLALCHEMY_DATABASE_URI"] = bouncer_url.render_as_string(hide_password=False)
        unregister_config()
        app = bench_app._build_ours()
        await report_http(
            app,
            via_bouncer,
            n,
            "[5h] HTTP: Mountaineer render (GET /, reads, no commit), default config via PgBouncer",
            "[5i] HTTP: Mountaineer @passthrough action (reads, commits), default config via PgBouncer",
        )
        await dispose_engines()
        unregister_config()

        # FIXED_PROCESS direct: when does the request's pooled connection go back to the pool?
        fixed_env = {
            "SQLALCHEMY_DATABASE_URI": direct_url.render_as_string(hide_password=False),
            "DATABASE_POOL_TYPE": "FIXED_PROCESS",
            "DATABASE_POOL_SIZE": str(POOL_SIZE),
            "DATABASE_MAX_OVERFLOW": "0",
        }
        os.environ.update(fixed_env)
        try:
            app = bench_app._build_ours()
            from mountaineer_db.settings.appconfig import registered_config

            engine = engine_for(registered_config())
            event.listen(engine.sync_engine.pool, "checkin", lambda *_: CHECKINS.append(now()))
            await report_http(
                app,
                direct,
                n,
                "[5j] HTTP: Mountaineer render (reads, no commit), FIXED_PROCESS direct",
                "[5k] HTTP: Mountaineer @passthrough action (reads, commits), FIXED_PROCESS direct",
            )
        finally:
            for name in fixed_env:
                os.environ.pop(name, None)
            await dispose_engines()
            unregister_config()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    add_pgbouncer_argument(parser)
    run_script(parser, "Round trips, statements and hold times per request (concurrency 1)", main)
