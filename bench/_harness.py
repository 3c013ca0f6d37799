"""Shared pieces of the benchmark scripts: servers, request workloads, side-by-side rounds, medians, output.

Every comparison runs its two sides in the same process and event loop, in alternating
rounds (A B, then B A, ...), and reports the median time per request of each side and the
median of the per-round ratios (ours ÷ raw). Pairing adjacent rounds is what keeps the
ratios meaningful on a shared, noisy machine: a burst of load from elsewhere hits both sides
of a round, and the median discards the rounds it hit unevenly.
"""

import argparse
import asyncio
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import URL

from mountaineer_db import DatabaseConfig, DatabaseDependencies, PoolType
from mountaineer_db.servers.cluster import PostgresCluster
from mountaineer_db.servers.pgbouncer import PgBouncer

BENCH_DATABASE = "bench"
SELECT_1 = text("SELECT 1")
POOL_SIZE = 10
SETUPS = ("default", "default-socket", "fixed-direct", "fixed-bouncer")
NAMED_SETUPS = ("default-named", "fixed-bouncer-named")
"""Via PgBouncer with DATABASE_POOLER_PREPARED_STATEMENTS: only with `--pgbouncer 1.24` (PgBouncer >= 1.21)."""

_pgbouncer: Path | None = None  # the PgBouncer the scripts start (`--pgbouncer`); None: the system's


def add_pgbouncer_argument(parser: argparse.ArgumentParser) -> None:
    """`--pgbouncer system|1.24|PATH`: which PgBouncer the stack runs (1.24: scripts/build_pgbouncer.sh's build)."""
    parser.add_argument(
        "--pgbouncer",
        default="system",
        help="system (Debian 12: 1.18), 1.24 (PgBouncer >= 1.21 from scripts/build_pgbouncer.sh, with "
        "max_prepared_statements = 200; enables the named-statement setups), or the path of a pgbouncer binary",
    )


def use_pgbouncer(choice: str) -> None:
    """Select the PgBouncer for `servers()` (see `add_pgbouncer_argument`); exit with a clear line if missing."""
    global _pgbouncer
    if choice == "system":
        _pgbouncer = None
        return
    if choice == "1.24":
        from mountaineer_db.servers.pgbouncer_versions import BUILD_HINT, find_pgbouncer_at_least

        found = find_pgbouncer_at_least((1, 21))
        if found is None:
            raise SystemExit(f"--pgbouncer 1.24: no PgBouncer 1.21 or newer was found; {BUILD_HINT}.")
        _pgbouncer = found
        return
    if not Path(choice).is_file():
        raise SystemExit(f"--pgbouncer {choice}: not a file; use system, 1.24 or the path of a pgbouncer binary.")
    _pgbouncer = Path(choice)


def named_statements_supported() -> bool:
    """Whether the selected PgBouncer handles protocol-level prepared statements (>= 1.21)."""
    from mountaineer_db.servers.pgbouncer import find_pgbouncer
    from mountaineer_db.servers.pgbouncer_versions import pgbouncer_version

    binary = _pgbouncer or find_pgbouncer()
    version = pgbouncer_version(binary) if binary is not None else None
    return version is not None and version[:2] >= (1, 21)


@dataclass
class Stack:
    """A throwaway PostgreSQL, a PgBouncer in transaction mode in front of it, and a database."""

    cluster: PostgresCluster
    bouncer: PgBouncer

    def direct_url(self, database: str = BENCH_DATABASE) -> URL:
        return self.cluster.url(database)

    def bouncer_url(self, database: str = BENCH_DATABASE) -> URL:
        return self.bouncer.url(database, user=self.cluster.user, password=self.cluster.password)

    def socket_url(self, database: str = BENCH_DATABASE) -> URL:
        """PgBouncer's Unix-domain socket: `postgresql+asyncpg://user:pw@:PORT/bench?host=DIR`."""
        return self.bouncer.socket_url(database, user=self.cluster.user, password=self.cluster.password)

    def url_for(self, setup: str) -> URL:
        """PostgreSQL itself for `fixed-direct`, PgBouncer's Unix socket for `default-socket`, else PgBouncer."""
        if setup == "fixed-direct":
            return self.direct_url()
        return self.socket_url() if setup == "default-socket" else self.bouncer_url()

    def config(self, setup: str) -> DatabaseConfig:
        """The config of one of SETUPS for this stack."""
        return config_for(setup, self.url_for(setup))


def config_for(setup: str, url: URL) -> DatabaseConfig:
    """The config each script measures for a setup, at `url` (which may be a proxy in front of the server).

    `default` and `default-socket`: the NULL pool; `fixed-direct`: FIXED_PROCESS, POOL_SIZE, no overflow, asyncpg's
    statement cache; `fixed-bouncer`: the same with the statement cache off (for PgBouncer). `default-named` and
    `fixed-bouncer-named`: via PgBouncer >= 1.21 with DATABASE_POOLER_PREPARED_STATEMENTS (statement cache on).
    """
    if setup not in SETUPS + NAMED_SETUPS:
        raise ValueError(f"unknown setup {setup!r}: use one of {', '.join(SETUPS + NAMED_SETUPS)}")
    if setup == "default-named":
        return DatabaseConfig(SQLALCHEMY_DATABASE_URI=url, DATABASE_POOLER_PREPARED_STATEMENTS=True)
    if setup in ("default", "default-socket"):
        return DatabaseConfig(SQLALCHEMY_DATABASE_URI=url)
    if setup == "fixed-bouncer-named":
        return DatabaseConfig(
            SQLALCHEMY_DATABASE_URI=url,
            DATABASE_POOL_TYPE=PoolType.FIXED_PROCESS,
            DATABASE_POOL_SIZE=POOL_SIZE,
            DATABASE_MAX_OVERFLOW=0,
            DATABASE_POOLER_PREPARED_STATEMENTS=True,
        )
    return DatabaseConfig(
        SQLALCHEMY_DATABASE_URI=url,
        DATABASE_POOL_TYPE=PoolType.FIXED_PROCESS,
        DATABASE_POOL_SIZE=POOL_SIZE,
        DATABASE_MAX_OVERFLOW=0,
        DATABASE_STATEMENT_CACHE_SIZE=0 if setup == "fixed-bouncer" else None,
    )


@contextlib.contextmanager
def servers(
    *,
    pg_settings: dict[str, str] | None = None,
    bouncer_settings: dict[str, str] | None = None,
    plaintext_userlist: bool = False,
) -> Iterator[Stack]:
    """Start PostgreSQL and PgBouncer (pool of 20 by default), create the bench database.

    PgBouncer's auth_file holds the role's SCRAM secret, as PgBouncer's documentation
    recommends for production, rather than the password: then PgBouncer checks a client's
    SCRAM proof without deriving the key itself (with a plaintext password in the file it runs
    4096 PBKDF2 rounds per connection, ~3 ms of connect time here). The client side still
    derives its key on every connection (~1 ms of CPU in asyncpg).
    """
    settings = {"max_connections": "100", **(pg_settings or {})}
    with PostgresCluster.temporary(settings=settings) as cluster:
        work_dir = Path(tempfile.mkdtemp(prefix="mountaineer-db-bench-bouncer-"))
        os.chmod(work_dir, 0o755)
        secret = cluster.password if plaintext_userlist else asyncio.run(_setup(cluster))
        if plaintext_userlist:
            asyncio.run(_setup(cluster))
        named = {"max_prepared_statements": "200"} if named_statements_supported() else {}
        bouncer = PgBouncer(
            "127.0.0.1",
            cluster.port,
            {cluster.user: secret},
            work_dir=work_dir,
            settings={"default_pool_size": "20", "max_client_conn": "5000", **named, **(bouncer_settings or {})},
            unix_socket=True,
            binary=_pgbouncer,
        )
        try:
            bouncer.start()
            yield Stack(cluster, bouncer)
        finally:
            bouncer.stop()
            shutil.rmtree(work_dir, ignore_errors=True)


async def _setup(cluster: PostgresCluster) -> str:
    """Create the bench database; return the superuser's SCRAM secret (for PgBouncer's auth_file)."""
    connection = await raw_connect(cluster.url("postgres"))
    try:
        await connection.execute(f'CREATE DATABASE "{BENCH_DATABASE}"')
        secret: str = await connection.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = current_user")
        return secret
    finally:
        await connection.close()


def _asyncpg_args(url: URL) -> dict[str, Any]:
    """asyncpg's connection arguments for `url` (a TCP host, or `?host=/socket/dir`), without an SSL attempt."""
    socket_dir = url.query.get("host")
    return {
        "host": socket_dir if isinstance(socket_dir, str) else url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "database": url.database,
        "ssl": False,
    }


async def raw_connect(url: URL, **kwargs: Any) -> asyncpg.Connection:
    """asyncpg with the best settings for a pooler: no SSL attempt, unnamed statements."""
    return await asyncpg.connect(**_asyncpg_args(url), statement_cache_size=0, **kwargs)


async def raw_pool(url: URL, *, via_bouncer: bool) -> "asyncpg.Pool[Any]":
    """asyncpg's own pool of POOL_SIZE connections at `url` (no SSL attempt)."""
    return await asyncpg.create_pool(
        **_asyncpg_args(url),
        # Direct: asyncpg's default named-statement cache; via PgBouncer it must be off.
        statement_cache_size=0 if via_bouncer else 100,
        min_size=POOL_SIZE,
        max_size=POOL_SIZE,
    )


# -- the request workloads: `SELECT 1` in a transaction, committed ---------------------


def ours_request(config: DatabaseConfig) -> Callable[[], Awaitable[None]]:
    """`get_db_session` as FastAPI calls it (no HTTP request), with the engine from `get_db(config)`."""
    dependency = asynccontextmanager(DatabaseDependencies.get_db_session)

    async def request() -> None:
        async with dependency(engine=await DatabaseDependencies.get_db(config=config)) as session:
            await session.exec(SELECT_1)
            await session.commit()

    return request


def raw_connect_request(
    stack: Stack, *, terminate: bool = False, socket: bool = False
) -> Callable[[], Awaitable[None]]:
    """asyncpg connect-per-request via PgBouncer (TCP, or its Unix socket); closed (or terminated) after it."""
    url = stack.socket_url() if socket else stack.bouncer_url()

    async def request() -> None:
        connection = await raw_connect(url)
        try:
            async with connection.transaction():
                await connection.fetchval("SELECT 1")
        finally:
            if terminate:
                connection.terminate()
            else:
                await connection.close()

    return request


def raw_pool_request(pool: "asyncpg.Pool[Any]") -> Callable[[], Awaitable[None]]:
    """A connection from asyncpg's pool for the request."""

    async def request() -> None:
        async with pool.acquire() as connection, connection.transaction():
            await connection.fetchval("SELECT 1")

    return request


# -- measuring ------------------------------------------------------------------------


class Timing(float):
    """Wall-clock µs per request (the float value), with the client's CPU µs per request in `.cpu`.

    The CPU figure is this process's own time (all threads): it is what the client library
    spends per request, and it is far less disturbed by other load on the machine than wall time.
    """

    cpu: float

    def __new__(cls, wall: float, cpu: float) -> "Timing":
        timing = super().__new__(cls, wall)
        timing.cpu = cpu
        return timing


async def run_concurrent(request: Callable[[], Awaitable[Any]], total: int, concurrency: int) -> Timing:
    """Run `total` requests with `concurrency` in flight; return µs per request (wall, and CPU)."""
    remaining = total

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await request()

    started, cpu_started = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return Timing(wall * 1e6 / total, cpu * 1e6 / total)


@dataclass
class Comparison:
    """The result of one side-by-side comparison."""

    label: str
    ours_label: str
    raw_label: str
    ours: list[float]
    raw: list[float]
    unit: str = "µs/req"
    target: float | None = None

    @property
    def ratios(self) -> list[float]:
        return [a / b for a, b in zip(self.ours, self.raw, strict=True)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def cpu_ratio(self) -> float | None:
        if not all(isinstance(v, Timing) for v in (*self.ours, *self.raw)):
            return None
        return statistics.median([a.cpu / b.cpu for a, b in zip(self.ours, self.raw, strict=True)])  # type: ignore[attr-defined]

    def lines(self) -> list[str]:
        ours, raw = statistics.median(self.ours), statistics.median(self.raw)
        cpu = ["", ""]
        if self.cpu_ratio is not None:
            cpu = [
                f"   (client CPU {statistics.median(v.cpu for v in self.ours):>5.0f} µs)",  # type: ignore[attr-defined]
                f"   (client CPU {statistics.median(v.cpu for v in self.raw):>5.0f} µs)",  # type: ignore[attr-defined]
            ]
        verdict = ""
        if self.target is not None:
            verdict = f"  target ≤ {self.target:.2f}× {'MET' if self.ratio <= self.target else 'MISSED'}"
        spread = f"rounds {min(self.ratios):.2f}–{max(self.ratios):.2f}"
        return [
            f"{self.label}",
            f"    ours  {self.ours_label:<48} {ours:>8.0f} {self.unit}{cpu[0]}",
            f"    raw   {self.raw_label:<48} {raw:>8.0f} {self.unit}{cpu[1]}",
            f"    ratio ours/raw = {self.ratio:.2f}× ({spread}, {len(self.ours)} rounds){verdict}"
            + ("" if self.cpu_ratio is None else f"; client CPU ratio {self.cpu_ratio:.2f}×"),
        ]


async def rotating_rounds(measures: list[Callable[[], Awaitable[float]]], rounds: int) -> list[list[float]]:
    """One warm-up run of each measurement, then `rounds` rounds, each starting one further along
    (A B C, B C A, C A B, ...; with two: A B, B A); return each measurement's values in order."""
    for measure in measures:
        await measure()
    values: list[list[float]] = [[] for _ in measures]
    for index in range(rounds):
        shift = index % len(measures)
        for position in [*range(shift, len(measures)), *range(shift)]:
            values[position].append(await measures[position]())
    return values


async def compare(
    label: str,
    ours: tuple[str, Callable[[], Awaitable[float]]],
    raw: tuple[str, Callable[[], Awaitable[float]]],
    *,
    rounds: int,
    target: float | None = None,
) -> Comparison:
    """Alternate the two measurements for `rounds` rounds (after one warm-up each); print the result."""
    (ours_label, measure_ours), (raw_label, measure_raw) = ours, raw
    ours_values, raw_values = await rotating_rounds([measure_ours, measure_raw], rounds)
    result = Comparison(label, ours_label, raw_label, ours_values, raw_values, target=target)
    print("\n".join(result.lines()), flush=True)
    return result


def machine(loop: str | None = None) -> str:
    """One line naming the machine and the versions the figures were measured with."""
    import sqlalchemy

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    pg_version = "?"
    with contextlib.suppress(Exception):
        from mountaineer_db.servers.cluster import find_postgres_bindir

        out = subprocess.run([str(find_postgres_bindir() / "postgres"), "--version"], capture_output=True, text=True)
        pg_version = out.stdout.split()[2]
    bouncer_version = "?"
    with contextlib.suppress(Exception):
        from mountaineer_db.servers.pgbouncer import find_pgbouncer

        out = subprocess.run([str(_pgbouncer or find_pgbouncer()), "--version"], capture_output=True, text=True)
        bouncer_version = out.stdout.splitlines()[0].split()[-1]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores, load {load}; Python {platform.python_version()}, "
        f"PostgreSQL {pg_version}, PgBouncer {bouncer_version}, asyncpg {asyncpg.__version__}, "
        f"SQLAlchemy {sqlalchemy.__version__}; loop {loop or loop_name()}"
    )


def loop_name() -> str:
    policy = asyncio.get_event_loop_policy()
    return "uvloop" if "uvloop" in type(policy).__module__ else "asyncio"


def install_loop(choice: str) -> None:
    """Use uvloop (what uvicorn picks when it is installed) unless asked for plain asyncio."""
    if choice == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def header(title: str, *, loop: str | None = None) -> None:
    print(f"== {title}", flush=True)
    print(f"   command: {' '.join(['python', *sys.argv])}", flush=True)
    print(f"   machine: {machine(loop)}", flush=True)


def run_script(
    parser: argparse.ArgumentParser,
    title: str,
    main: Callable[[argparse.Namespace, Stack], Awaitable[Any]],
) -> None:
    """A script's entry point: parse the command line (it must have `--loop`), install that event
    loop, print the header (`title` may name options, as in "{setup}"), then run `main` against
    a fresh PostgreSQL + PgBouncer stack, stopped afterwards."""
    arguments = parser.parse_args(sys.argv[1:])
    install_loop(arguments.loop)
    use_pgbouncer(getattr(arguments, "pgbouncer", "system"))
    header(title.format(**vars(arguments)))
    with servers() as stack:
        asyncio.run(main(arguments, stack))


async def measure_many(
    title: str, variants: list[tuple[str, Callable[[], Awaitable[float]]]], *, rounds: int
) -> dict[str, float]:
    """Rotate through several variants for `rounds` rounds; print each median and its ratio to the first."""
    measured = await rotating_rounds([measure for _, measure in variants], rounds)
    values = {label: v for (label, _), v in zip(variants, measured, strict=True)}
    medians = {label: statistics.median(v) for label, v in values.items()}
    cpus = {label: statistics.median(getattr(x, "cpu", float("nan")) for x in v) for label, v in values.items()}
    base_label = variants[0][0]
    base_values = values[base_label]
    print(title, flush=True)
    previous: float | None = None
    for label, _ in variants:
        ratio = statistics.median([a / b for a, b in zip(values[label], base_values, strict=True)])
        step = "" if previous is None else f" ({cpus[label] - previous:+.0f} CPU µs vs the line above)"
        print(
            f"    {label:<58} {medians[label]:>7.0f} µs/req {ratio:.2f}×  client CPU {cpus[label]:>5.0f} µs{step}",
            flush=True,
        )
        previous = cpus[label]
    return medians
