"""The example app under real servers, through PgBouncer: requests, connections, worker restarts.

`uvicorn --workers 4` and `gunicorn -k uvicorn.workers.UvicornWorker -w 4 --preload`, each with
`DATABASE_POOL_TYPE=NULL` and with `FIXED_PROCESS` (2 pooled + 2 overflow connections per worker,
no statement cache, as the README prescribes behind PgBouncer). The server is a subprocess on a
free port, pointed at the suite's PgBouncer (transaction mode, `default_pool_size=4`) and a
fresh database. Two bursts of 200 concurrent `add_todo` actions, all workers restarted with
SIGHUP in between, then a graceful stop (SIGTERM to the master).

Connections are counted three ways, before, during and after each burst:
- PgBouncer's clients (`SHOW CLIENTS` for our database and application_name);
- the server processes' ESTABLISHED TCP sockets to PgBouncer, per PID (from /proc);
- `pg_stat_activity` rows of the database: PgBouncer's server connections, bounded by its pool.

What fails when connections leak or outlive their owner:
- NULL: a connection kept after its request leaves clients behind after a burst (expected 0);
- FIXED_PROCESS: a pool per event loop or per request, or overflow kept after load, gives a
  worker more than 2 idle connections;
- a worker that exits without disposing its engines drops its sockets instead of closing them:
  PgBouncer then logs "client unexpected eof" instead of "client close request";
- connections of replaced workers that survive the restart, or a (preloaded) master holding
  one, show as clients once the new workers are up and idle (expected 0: engines are lazy),
  or as PgBouncer's count disagreeing with the live processes' sockets.

Both servers stop a worker with SIGTERM, and uvicorn re-raises that signal once its own shutdown
is done, so the worker dies before `asyncio.Runner` shuts its loop down: the library's
loop-shutdown disposal never runs there. What closes the connections is the example app's
lifespan calling `dispose_engines()`, as the README asks; without it this test fails
("client unexpected eof").
"""

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from mountaineer_db.exceptions import ResourceNotFoundError
from mountaineer_db.servers.cluster import find_postgres_bindir, free_port
from mountaineer_db.servers.pgbouncer import PgBouncer
from mountaineer_db.testing import create_schema, throwaway_database
from tests.example_app._require import require_example_app
from tests.sample_apps import superuser_connect

require_example_app()

from todo_app.models import Todo  # noqa: E402 - after the installed check

pytestmark = [pytest.mark.slow, pytest.mark.pgbouncer]

WORKERS = 4
POOL_SIZE = 2
MAX_OVERFLOW = 2
BURST = 200
CONCURRENCY = 16
ACTION = "/internal/api/home_controller/add_todo"
STARTED = "Application startup complete."
# Settings a developer's shell could hold that would send the app elsewhere.
SCRUBBED_PREFIXES = ("POSTGRES_", "DATABASE_", "SQLALCHEMY_", "MIGRATIONS_", "MOUNTAINEER_DB_")


# -- What we count -------------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{name}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(name))
    return children


def _descendants(pid: int) -> list[int]:
    children, found, todo = _children_map(), [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


def _sockets_to(port: int, pids: list[int]) -> dict[int, int]:
    """ESTABLISHED TCP connections from each of `pids` to 127.0.0.1:`port`."""
    target = f"0100007F:{port:04X}"
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[2] == target and fields[3] == "01":  # remote address, state ESTABLISHED
            inodes.add(f"socket:[{fields[9]}]")
    counts = {}
    for pid in pids:
        count = 0
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    count += os.readlink(f"/proc/{pid}/fd/{fd}") in inodes
        counts[pid] = count
    return counts


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat), to recognise a reused PID."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    return None


@dataclass
class Counts:
    """One look at the connections of our app."""

    bouncer: int  # PgBouncer's client connections of our database and application_name
    bouncer_linked: int  # of which hold a server connection right now (in a transaction)
    sockets: dict[int, int]  # per server process (master included): ESTABLISHED sockets to PgBouncer
    postgres: int  # pg_stat_activity rows of our database (PgBouncer's server connections)
    postgres_busy: int  # of which not idle (active, idle in transaction, ...)

    @property
    def socket_total(self) -> int:
        return sum(self.sockets.values())

    def brief(self) -> str:
        return f"pgbouncer clients {self.bouncer}, sockets {self.socket_total}, pg_stat_activity {self.postgres}"

    def brief_peak(self) -> str:
        """For the peaks of a burst: each number is a maximum over the samples, per process for sockets."""
        return f"pgbouncer clients {self.bouncer}, pg_stat_activity {self.postgres}, sockets per process {self.sockets}"


@dataclass
class Probe:
    """Counts the connections of one app: its database, its application_name, its processes."""

    bouncer: PgBouncer
    server: Any
    database: str
    app_name: str
    psql: str

    async def bouncer_clients(self) -> list[dict[str, str]]:
        """`SHOW CLIENTS` on PgBouncer's admin console (simple protocol only: psql, not asyncpg)."""
        process = await asyncio.create_subprocess_exec(
            self.psql, "-X", "-A", "-F", "\t", "-h", "127.0.0.1", "-p", str(self.bouncer.port),
            "-U", self.server.user, "-d", "pgbouncer", "-c", "SHOW CLIENTS",
            env={**os.environ, "PGPASSWORD": self.server.password, "PGCONNECT_TIMEOUT": "5"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 0, err.decode()
        header, *rows = out.decode().splitlines()[:-1]  # the last line is "(N rows)"
        names = header.split("\t")
        return [dict(zip(names, row.split("\t"), strict=True)) for row in rows]

    async def postgres_rows(self) -> list[Any]:
        connection = await superuser_connect(self.server, "postgres")
        try:
            return list(
                # Client backends only: an autovacuum worker on our database is not a connection.
                await connection.fetch("SELECT state, application_name FROM pg_stat_activity "
                                       "WHERE datname = $1 AND backend_type = 'client backend'", self.database)
            )  # fmt: skip
        finally:
            await connection.close()

    async def look(self, pids: list[int]) -> Counts:
        clients, rows = await asyncio.gather(self.bouncer_clients(), self.postgres_rows())
        ours = [c for c in clients if c["database"] == self.database]
        strangers = [c for c in ours if c.get("application_name", self.app_name) != self.app_name]
        assert not strangers, f"clients of our database from elsewhere: {strangers}"
        return Counts(
            bouncer=len(ours),
            bouncer_linked=sum(1 for client in ours if client["link"]),
            sockets=_sockets_to(self.bouncer.port, pids),
            postgres=len(rows),
            postgres_busy=sum(1 for row in rows if row["state"] != "idle"),
        )

    async def rows(self) -> int:
        connection = await superuser_connect(self.server, self.database)
        try:
            return int(await connection.fetchval("SELECT count(*) FROM todo"))
        finally:
            await connection.close()

    def closes(self) -> dict[str, int]:
        """How PgBouncer saw our database's clients go: "client close request", "client unexpected eof", ..."""
        reasons: dict[str, int] = {}
        pattern = re.compile(rf": {re.escape(self.database)}/\S+ closing because: ([^(]+?) \(age=")
        for line in self.bouncer.log_path.read_text(errors="replace").splitlines():
            match = pattern.search(line)
            if match:
                reasons[match.group(1)] = reasons.get(match.group(1), 0) + 1
        return reasons


# -- The server ----------------------------------------------------------------------------


def _uvicorn_healthcheck() -> list[str]:
    """uvicorn's supervisor gives a new worker 5 s (its default) to start and answer pings, then
    aborts the restart ("New child process ... was not ready in time; keeping worker ...") or
    replaces the worker. Importing the app alone took longer on a loaded 2-core machine: give
    it what a deployment on a slow host would (older uvicorn releases lack the option)."""
    import inspect

    import uvicorn

    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.Config).parameters:
        return ["--timeout-worker-healthcheck", "60"]
    return []


def _command(kind: str, port: int) -> list[str]:
    if kind == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "todo_app.main:app", "--host", "127.0.0.1", "--port", str(port),
                "--workers", str(WORKERS), *_uvicorn_healthcheck()]  # fmt: skip
    return [sys.executable, "-m", "gunicorn", "todo_app.main:app", "-k", "uvicorn.workers.UvicornWorker",
            "-w", str(WORKERS), "--preload", "-b", f"127.0.0.1:{port}", "--graceful-timeout", "20"]  # fmt: skip


@dataclass
class AppServer:
    """The example app served by `kind` in a subprocess; signals go to its master, by PID."""

    kind: str
    env: dict[str, str]
    cwd: Path
    port: int = field(default_factory=free_port)
    process: "subprocess.Popen[bytes] | None" = None
    seen: dict[int, str | None] = field(default_factory=dict)  # every worker we saw: PID -> start time

    @property
    def log_path(self) -> Path:
        return self.cwd / f"{self.kind}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-tail:]

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                _command(self.kind, self.port), cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip

    @property
    def master(self) -> int:
        assert self.process is not None
        return self.process.pid

    def workers(self) -> list[int]:
        """The serving worker processes (not multiprocessing's helper processes)."""
        pids = [p for p in _descendants(self.master) if "multiprocessing.resource_tracker" not in _cmdline(p)]
        for pid in pids:
            self.seen.setdefault(pid, _start_time(pid))
        return sorted(pids)

    def processes(self) -> list[int]:
        return [self.master, *self.workers()]

    def wait_ready(self, started: int, exclude: set[int] | None = None, timeout: float = 60.0) -> list[int]:
        """Wait for `started` "startup complete" lines in all, and exactly WORKERS workers, none in `exclude`.

        Fails when nothing moves for `timeout` seconds: no worker started or ended, no startup
        line written. A restart that progresses slowly (workers importing the app on a loaded
        machine, one after the other) is waited for; one that hangs is not.
        """
        assert self.process is not None
        exclude = exclude or set()
        progress: tuple[int, tuple[int, ...]] | None = None
        stalled_since = time.monotonic()
        while True:
            assert self.process.poll() is None, f"{self.kind} exited ({self.process.returncode}):\n{self.log()}"
            workers = self.workers()
            lines = self.log_path.read_text(errors="replace").count(STARTED)
            if lines >= started and len(workers) == WORKERS and not exclude & set(workers):
                return workers
            if (lines, tuple(workers)) != progress:
                progress, stalled_since = (lines, tuple(workers)), time.monotonic()
            assert time.monotonic() - stalled_since < timeout, (
                f"{self.kind} not ready, and nothing moved for {timeout}s: {lines} of {started} startup lines, "
                f"workers {workers}\n{self.log()}"
            )
            time.sleep(0.1)

    def signal(self, sig: int) -> None:
        assert self.process is not None and self.process.poll() is None
        os.kill(self.master, sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM to the master (graceful for both servers); its exit code."""
        assert self.process is not None
        self.signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill_leftovers(self) -> None:
        """After a failure: our master and the workers we saw, by PID, nothing else."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.master, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.master, signal.SIGKILL)
                self.process.wait(10)
        for pid, start_time in self.seen.items():
            if start_time is not None and _start_time(pid) == start_time:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# -- Load ----------------------------------------------------------------------------------


@dataclass
class Burst:
    statuses: dict[int, int]
    errors: list[str]
    peak: Counts
    seconds: float


async def _burst(app: AppServer, probe: Probe, label: str) -> Burst:
    """BURST concurrent add_todo actions; connections sampled while they run (peaks kept)."""
    semaphore = asyncio.Semaphore(CONCURRENCY)
    statuses: dict[int, int] = {}
    errors: list[str] = []
    # A new HTTP connection per request: kept-alive ones stay with the worker that accepted them,
    # which often leaves the other workers (and their pools) without any request at all.
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=0)

    async with httpx.AsyncClient(base_url=app.url, timeout=60, limits=limits) as client:

        async def one(n: int) -> None:
            async with semaphore:
                try:
                    response = await client.post(ACTION, json={"description": f"{label} #{n}"})
                except httpx.HTTPError as error:
                    statuses[0] = statuses.get(0, 0) + 1
                    errors.append(f"{type(error).__name__}: {error}")
                    return
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                if response.status_code != 200 or "sideeffect" not in response.json():
                    errors.append(f"{response.status_code}: {response.text[:300]}")

        peak = Counts(0, 0, {}, 0, 0)
        done = asyncio.Event()

        async def sample() -> None:
            nonlocal peak
            while not done.is_set():
                counts = await probe.look(app.processes())
                peak = Counts(
                    bouncer=max(peak.bouncer, counts.bouncer),
                    bouncer_linked=max(peak.bouncer_linked, counts.bouncer_linked),
                    sockets={pid: max(peak.sockets.get(pid, 0), n) for pid, n in counts.sockets.items()},
                    postgres=max(peak.postgres, counts.postgres),
                    postgres_busy=max(peak.postgres_busy, counts.postgres_busy),
                )
                await asyncio.sleep(0.1)

        sampler = asyncio.ensure_future(sample())
        began = time.monotonic()
        try:
            await asyncio.gather(*(one(n) for n in range(BURST)))
        finally:
            seconds = time.monotonic() - began
            done.set()
            await sampler
    return Burst(statuses, errors, peak, seconds)


async def _settled(probe: Probe, app: AppServer, expect: Any, timeout: float = 10.0) -> Counts:
    """The counts once `expect(counts)` holds (connections close asynchronously), else the last."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await probe.look(app.processes())
        if expect(counts) or time.monotonic() > deadline:
            return counts
        await asyncio.sleep(0.1)


# -- Fixtures ------------------------------------------------------------------------------


@pytest.fixture
def database(pg_server: Any) -> Iterator[str]:
    """A fresh database with the example app's tables."""
    with throwaway_database(pg_server, name=f"mdb_servers_{secrets.token_hex(4)}") as db:
        create_schema(db.config(), Todo.metadata)
        yield db.name


def _psql() -> str:
    """psql, for PgBouncer's admin console: next to the server binaries, else on PATH."""
    with contextlib.suppress(ResourceNotFoundError):
        beside = find_postgres_bindir() / "psql"
        if beside.exists():
            return str(beside)
    found = shutil.which("psql")
    if found is None:
        pytest.fail("psql not found: install PostgreSQL's client tools (apt-get install postgresql-client)")
    return found


def _env(pool: str, bouncer: PgBouncer, server: Any, database: str, app_name: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(SCRUBBED_PREFIXES)}
    env.update(
        ENVIRONMENT="production",
        DATABASE_EMBEDDED="false",
        POSTGRES_HOST="127.0.0.1",
        POSTGRES_PORT=str(bouncer.port),
        POSTGRES_USER=server.user,
        POSTGRES_PASSWORD=server.password,
        POSTGRES_DB=database,
        DATABASE_POOL_TYPE=pool,
        DATABASE_APPLICATION_NAME=app_name,
        PYTHONDONTWRITEBYTECODE="1",
    )
    if pool == "FIXED_PROCESS":
        # README: behind PgBouncer in transaction mode, FIXED_PROCESS needs the statement cache off.
        env.update(
            DATABASE_POOL_SIZE=str(POOL_SIZE),
            DATABASE_MAX_OVERFLOW=str(MAX_OVERFLOW),
            DATABASE_STATEMENT_CACHE_SIZE="0",
        )
    return env


# -- The test ------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["NULL", "FIXED_PROCESS"])
@pytest.mark.parametrize("kind", ["uvicorn", "gunicorn"])
async def test_connections_stay_bounded_across_load_worker_restart_and_stop(
    kind: str, pool: str, pgbouncer: PgBouncer, pg_server: Any, database: str, tmp_path: Path
) -> None:
    """Every request succeeds; connections are none before load, bounded during it, none (NULL)
    or within the pools (FIXED_PROCESS) after it, gone and closed properly after a restart of
    all workers and after the server stops."""
    app_name = f"mdb_{kind}_{pool.lower()}_{secrets.token_hex(3)}"
    probe = Probe(pgbouncer, pg_server, database, app_name, _psql())
    app = AppServer(kind, _env(pool, pgbouncer, pg_server, database, app_name), tmp_path)
    server_pool = int(pgbouncer.settings["default_pool_size"])
    fixed = pool == "FIXED_PROCESS"
    # Idle client connections a burst may leave: none without a client pool, the pool otherwise.
    idle_bound = WORKERS * POOL_SIZE if fixed else 0
    # In flight: the pool and its overflow. Without a pool, a request's action and its re-render
    # each open one connection, one after the other; PgBouncer may still list the first while
    # the second logs in, so up to two per request in flight.
    peak_bound = WORKERS * (POOL_SIZE + MAX_OVERFLOW) if fixed else 2 * CONCURRENCY
    report: list[str] = []
    started = time.monotonic()

    def settled_idle(counts: Counts) -> bool:
        return counts.socket_total <= idle_bound and counts.bouncer == counts.socket_total

    def check_burst(burst: Burst, after: Counts, label: str) -> None:
        context = f"{kind}/{pool} {label}"
        assert burst.statuses == {200: BURST}, f"{context}: {burst.statuses} {burst.errors[:5]}\n{app.log()}"
        assert 1 <= burst.peak.bouncer <= peak_bound, f"{context}: peak {burst.peak}"
        assert burst.peak.sockets.get(app.master, 0) == 0, f"{context}: the master holds connections: {burst.peak}"
        if fixed:
            per_worker = POOL_SIZE + MAX_OVERFLOW
            assert max(burst.peak.sockets.values()) <= per_worker, f"{context}: a worker beyond its pool: {burst.peak}"
        assert burst.peak.postgres <= server_pool, f"{context}: more server connections than PgBouncer's pool"
        # After the burst: what is left is idle, per worker within its pool, and PgBouncer
        # sees exactly the sockets the live processes hold (no client of a dead process).
        assert after.bouncer == after.socket_total, f"{context}: PgBouncer and the processes disagree: {after}"
        assert after.socket_total <= idle_bound, f"{context}: connections left after the burst: {after}"
        if fixed:
            assert after.socket_total >= 1, f"{context}: the pool kept nothing: {after}"
            assert max(after.sockets.values()) <= POOL_SIZE, f"{context}: a worker kept overflow: {after}"
        assert after.bouncer_linked == 0, f"{context}: a client still holds a server connection: {after}"
        assert after.postgres <= server_pool and after.postgres_busy == 0, f"{context}: {after}"

    try:
        app.start()
        first_workers = app.wait_ready(WORKERS)
        async with httpx.AsyncClient(base_url=app.url, timeout=10) as client:
            assert (await client.get("/no-such-page")).status_code == 404  # answers, without the database
        before = await probe.look(app.processes())
        report.append(f"before load: {before.brief()}")
        # Engines are lazy: a started server holds no connection (and a preloaded master none).
        assert before.bouncer == 0 and before.socket_total == 0, before

        burst = await _burst(app, probe, "first")
        after = await _settled(probe, app, settled_idle)
        report.append(f"during load (peak): {burst.peak.brief_peak()}; {burst.seconds:.1f}s")
        report.append(f"after load: {after.brief()}; per process {after.sockets}")
        check_burst(burst, after, "first burst")
        assert await probe.rows() == BURST, "the ledger: one row per successful request"

        # Restart every worker; the replaced ones take their connections with them.
        app.signal(signal.SIGHUP)
        second_workers = app.wait_ready(2 * WORKERS, exclude=set(first_workers))
        assert not any(Path(f"/proc/{pid}").exists() for pid in first_workers), "old workers still running"
        restarted = await _settled(probe, app, lambda c: c.bouncer == 0 and c.socket_total == 0)
        report.append(f"after restart: {restarted.brief()}")
        assert restarted.bouncer == 0 and restarted.socket_total == 0, f"connections survived the restart: {restarted}"
        # The replaced workers closed their connections (a Terminate each), rather than exiting
        # with them open: their engines were disposed on the way out.
        dropped = probe.closes().get("client unexpected eof", 0)
        assert dropped == 0, f"{dropped} connections dropped, not closed, by the replaced workers:\n{app.log()}"

        burst = await _burst(app, probe, "second")
        after = await _settled(probe, app, settled_idle)
        report.append(f"second burst (peak): {burst.peak.brief_peak()}; {burst.seconds:.1f}s")
        report.append(f"after it: {after.brief()}; per process {after.sockets}")
        check_burst(burst, after, "after the restart")
        assert set(after.sockets) <= {app.master, *second_workers}
        assert await probe.rows() == 2 * BURST, "the ledger: one row per successful request"

        code = app.stop()
        assert code == 0, f"{kind} exited with {code}:\n{app.log()}"
        stopped = await _settled(probe, app, lambda c: c.bouncer == 0)
        report.append(f"after stop: {stopped.brief()}")
        assert stopped.bouncer == 0, f"clients left after the server stopped: {stopped}"
        # Every client of ours said goodbye: engines were disposed on worker shutdown,
        # not dropped by the process exiting.
        closes = probe.closes()
        report.append(f"PgBouncer saw clients close: {closes}")
        assert set(closes) == {"client close request"}, closes
        assert "Traceback" not in app.log(10**7), app.log()
    finally:
        app.kill_leftovers()
        print(f"\nmeasured {kind} {pool} ({time.monotonic() - started:.1f}s):\n  " + "\n  ".join(report))
