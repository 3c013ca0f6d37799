"""Helpers for the fault tests: app clients, load, and the checks every scenario makes."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from mountaineer.config import unregister_config

from mountaineer_db import DatabaseConfig
from mountaineer_db.engines.engine import engines_on_this_loop
from mountaineer_db.servers.cluster import PostgresCluster
from mountaineer_db.servers.pgbouncer import PgBouncer
from tests.sample_apps import superuser_connect

from .app import APP_NAME, INSERT_PATH, TABLE, FaultsConfig, build_app

DATABASE = "faults"


async def admin_execute(server: PostgresCluster, *statements: str, database: str = "postgres") -> None:
    """Run statements as the superuser, directly on the server."""
    connection = await admin_connect(server, database)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def admin_connect(server: PostgresCluster, database: str = DATABASE) -> asyncpg.Connection:
    """A plain asyncpg superuser connection, to the `faults` database unless told otherwise."""
    return await superuser_connect(server, database)


async def admin_fetch(server: PostgresCluster, query: str, *args: Any, database: str = DATABASE) -> list[Any]:
    connection = await admin_connect(server, database)
    try:
        return list(await connection.fetch(query, *args))
    finally:
        await connection.close()


def faults_config(url: Any, **overrides: Any) -> FaultsConfig:
    """The app config for `url` (registers it with Mountaineer, as an app's config does)."""
    unregister_config()
    values: dict[str, Any] = {"SQLALCHEMY_DATABASE_URI": url, "DATABASE_APPLICATION_NAME": APP_NAME}
    values.update(overrides)
    return FaultsConfig(**values)


def direct_url(cluster: PostgresCluster) -> Any:
    return cluster.url(DATABASE)


def bouncer_url(bouncer: PgBouncer, cluster: PostgresCluster) -> Any:
    return bouncer.url(DATABASE, user=cluster.user, password=cluster.password)


def url_via(via: str, cluster: PostgresCluster, make_bouncer: Callable[..., PgBouncer]) -> Any:
    """The app's URL for a test parametrized over `via`: "direct", or through a new PgBouncer."""
    return direct_url(cluster) if via == "direct" else bouncer_url(make_bouncer(cluster), cluster)


@contextlib.asynccontextmanager
async def app_client(config: DatabaseConfig, timeout: float = 30.0) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client talking to a fresh Mountaineer app (in process, over ASGI)."""
    app = build_app(config)  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://faults", timeout=timeout) as client:
        yield client


@dataclass
class Outcome:
    """What one request got: the id it asked for, status, body, when it started and finished."""

    id: int
    status: int
    body: str
    finished: float
    started: float = 0.0


@dataclass
class Ledger:
    """Every request's outcome, to compare against the table afterwards."""

    outcomes: list[Outcome] = field(default_factory=list)
    next_id: int = 1

    def take_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    @property
    def ok_ids(self) -> set[int]:
        return {o.id for o in self.outcomes if o.status == 200}

    def statuses(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for outcome in self.outcomes:
            counts[outcome.status] = counts.get(outcome.status, 0) + 1
        return counts

    def bodies(self, status: int) -> set[str]:
        return {o.body for o in self.outcomes if o.status == status}


def clock() -> float:
    """Seconds, like `time.monotonic()`, except that time this thread spent waiting for a CPU
    (kept off it by other processes on a shared machine) does not count.

    Recovery bounds ("back within 2 s of PostgreSQL being ready") are promises about our
    code and the servers, not about the machine's load; measured on this clock, the event
    loop being starved for a second does not eat the budget. Outcomes and the scenario's
    moments (stopped, ready, resumed) are all taken on it, from the event loop's thread.
    """
    return time.monotonic() - _runqueue_wait()


async def sleep_on_clock(seconds: float) -> None:
    """Sleep until `seconds` have passed on `clock()` (longer in wall time on a busy machine)."""
    until = clock() + seconds
    while (left := until - clock()) > 0:
        await asyncio.sleep(min(left, 0.05))


async def post_insert(client: httpx.AsyncClient, ledger: Ledger, *, sleep: float = 0.0) -> Outcome:
    """One insert action; records its outcome in `ledger` (status 0 = transport error), timed on `clock()`."""
    row_id = ledger.take_id()
    started = clock()
    try:
        response = await client.post(INSERT_PATH, json={"id": row_id, "sleep_before_commit": sleep})
        outcome = Outcome(row_id, response.status_code, response.text, clock(), started)
    except httpx.HTTPError as error:
        outcome = Outcome(row_id, 0, f"{type(error).__name__}: {error}", clock(), started)
    ledger.outcomes.append(outcome)
    return outcome


@contextlib.asynccontextmanager
async def steady_load(
    client: httpx.AsyncClient,
    ledger: Ledger,
    *,
    concurrency: int = 4,
    sleep: float = 0.0,
    pause: float = 0.01,
    cancel_on_exit: bool = False,
) -> AsyncIterator[None]:
    """Keep `concurrency` insert requests going until the block exits (then let them finish,
    or cancel them with `cancel_on_exit`)."""
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            await post_insert(client, ledger, sleep=sleep)
            await asyncio.sleep(pause)

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        yield
    finally:
        stop.set()
        if cancel_on_exit:
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=cancel_on_exit)


async def table_ids(cluster: PostgresCluster) -> set[int]:
    return {row["id"] for row in await admin_fetch(cluster, f"SELECT id FROM {TABLE}")}


async def assert_rows_match(cluster: PostgresCluster, ledger: Ledger, *, unknown_ok: bool = False) -> None:
    """Every id that got a 200 is in the table exactly once, and no row exists that nobody got a 200 for.

    `unknown_ok`: a request that failed while its COMMIT was in flight may have committed
    (the outcome is genuinely unknown to the client); such rows are allowed, but only for
    requests that did get an error response, never silently for a request never made.
    """
    rows = await table_ids(cluster)
    ok = ledger.ok_ids
    lost = ok - rows
    assert not lost, f"rows lost: {sorted(lost)[:20]} got 200 but are not in the table"
    extra = rows - ok
    made = {o.id for o in ledger.outcomes}
    assert extra <= made, f"rows nobody asked for: {sorted(extra - made)[:20]}"
    if not unknown_ok:
        assert not extra, f"rows committed for requests that got an error: {sorted(extra)[:20]}"


async def server_sessions(cluster: PostgresCluster) -> list[Any]:
    """Backends of our app (by application_name) or any left idle in transaction, on the server."""
    return await admin_fetch(
        cluster,
        "SELECT pid, state, application_name, query FROM pg_stat_activity "
        "WHERE pid <> pg_backend_pid() AND backend_type = 'client backend' "
        "AND (application_name = $1 OR state LIKE 'idle in transaction%')",
        APP_NAME,
    )


async def assert_no_leaks(cluster: PostgresCluster, *, within: float = 3.0, allow_idle: int = 0) -> None:
    """Once load has stopped: nothing idle in transaction or active, no connection checked out.

    `allow_idle`: idle backends a pool (ours, or PgBouncer's) legitimately keeps. Backends of
    closed connections exit asynchronously, hence the short wait.
    """
    for engine in engines_on_this_loop():
        checked_out = getattr(engine.pool, "checkedout", None)
        if checked_out is not None:
            assert checked_out() == 0, f"{checked_out()} connections still checked out of the pool"
    deadline = time.monotonic() + within
    while True:
        sessions = await server_sessions(cluster)
        bad = [s for s in sessions if s["state"] != "idle"]
        idle = [s for s in sessions if s["state"] == "idle"]
        if not bad and len(idle) <= allow_idle:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"left on the server after load stopped: {[dict(s) for s in sessions]}")
        await asyncio.sleep(0.05)


async def sleeping_pids(cluster: PostgresCluster, like: str = "%pg_sleep%") -> list[int]:
    """Backends on the server actively running a statement whose text matches `like`."""
    rows = await admin_fetch(
        cluster,
        "SELECT pid FROM pg_stat_activity WHERE query LIKE $1 AND state = 'active' AND pid <> pg_backend_pid()",
        like,
    )
    return [r["pid"] for r in rows]


async def wait_for(predicate: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.02) -> float:
    """Poll until `predicate()` is true; returns the seconds it took, fails after `timeout`."""
    start = time.monotonic()
    while not await predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
    return time.monotonic() - start


def _runqueue_wait() -> float:
    """Seconds this thread has spent runnable but not running (Linux schedstat), 0 where unknown."""
    try:
        with open("/proc/thread-self/schedstat") as stats:
            return int(stats.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


@dataclass
class Stopwatch:
    """Wall time of a block, and the part of it this thread was kept off the CPU by other processes.

    On a machine shared with other work a wall-clock bound measures the load as much as the
    code: `unstarved` is the wall time minus the time the event loop's thread waited for a
    CPU, i.e. what the block takes on an idle machine (the servers' own waits still count).
    """

    started: float = field(default_factory=time.monotonic)
    waited_at_start: float = field(default_factory=_runqueue_wait)
    elapsed: float = 0.0
    starved: float = 0.0

    def stop(self) -> "Stopwatch":
        self.elapsed = time.monotonic() - self.started
        self.starved = _runqueue_wait() - self.waited_at_start
        return self

    @property
    def unstarved(self) -> float:
        return self.elapsed - self.starved
