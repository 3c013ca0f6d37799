"""Failover under load: the example app (uvicorn, 4 workers) writing to a Patroni cluster while
the primary is switched over, its postmaster killed, or its whole node killed.

    .venv/bin/python bench/bench_failover.py                 # the default matrix, synchronous mode
    .venv/bin/python bench/bench_failover.py --async         # also with asynchronous replication
    .venv/bin/python bench/bench_failover.py --topologies multihost --pools NULL --faults switchover

Needs `apt-get install patroni etcd-server haproxy pgbouncer postgresql` (mountaineer_db.servers.patroni
starts the cluster on loopback: etcd, three Patroni nodes, HAProxy routing to the primary by
Patroni's REST health checks, PgBouncer in front of HAProxy).

Topologies: `pgbouncer` (app -> PgBouncer, transaction mode -> HAProxy -> primary), `haproxy`
(app -> HAProxy -> primary), `multihost` (app -> postgresql://n1,n2,n3/app?target_session_attrs=
read-write, no proxy). Pools: DATABASE_POOL_TYPE=NULL and FIXED_PROCESS (4 per worker; statement
cache off through PgBouncer). Faults: `switchover` (`patronictl switchover` to the synchronous
standby), `kill_postmaster` (SIGKILL of the primary's postmaster: Patroni restarts the same node),
`kill_node` (SIGKILL of the primary's Patroni and postmaster: a replica is promoted after the
leader key expires, ttl 10 s), `stall_kill_node` (the primary's WAL senders stopped for 1 s, a
network stall, then `kill_node`: what asynchronous replication loses).

Each run: WRITERS clients post the example app's `add_todo` action (a unique description each)
in a loop; 150 writes are acknowledged, the fault happens, then 150 more. Reported per run:
requests, failed requests by status (the promise: only 503, never 500), the outage window (from
the start of the first failed request to the end of the last), and acknowledged writes (200)
missing from the new primary afterwards, and the slowest request (PgBouncer and the multi-host
connect hold requests while there is no primary, instead of failing them).
"""

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from mountaineer_db.servers.cluster import free_port
from mountaineer_db.servers.patroni import PatroniCluster

ADD_TODO = "/internal/api/home_controller/add_todo"
ACKS = 150
STALL = 1.0
"""Seconds the WAL senders stay stopped before the node is killed (`stall_kill_node`)."""


@dataclass
class Run:
    topology: str
    pool: str
    fault: str
    synchronous: bool
    outcomes: list[tuple[str, int, float, float]] = field(default_factory=list)
    missing: int = 0
    fault_seconds: float = 0.0

    def line(self) -> str:
        statuses: dict[int, int] = {}
        for _, status, _, _ in self.outcomes:
            statuses[status] = statuses.get(status, 0) + 1
        failed = [outcome for outcome in self.outcomes if outcome[1] != 200]
        window = (max(o[3] for o in failed) - min(o[2] for o in failed)) if failed else 0.0
        slowest = max(o[3] - o[2] for o in self.outcomes)
        failures = ", ".join(f"{n}×{status}" for status, n in sorted(statuses.items()) if status != 200) or "none"
        mode = "sync" if self.synchronous else "async"
        return (
            f"| {self.topology} | {self.pool} | {self.fault} | {mode} | {len(self.outcomes)} | {failures} | "
            f"{statuses.get(500, 0)} | {window:.2f} s | {slowest:.2f} s | {self.missing} |"
        )


HEADER = (
    "| topology | pool | fault | replication | requests | failed | 500s | outage window | slowest request "
    "| acknowledged writes missing |\n|---|---|---|---|---|---|---|---|---|---|"
)


def _migrate(ha: PatroniCluster) -> None:
    """The example app's migrations, applied as a deploy would (`todo-app migrate apply`)."""
    environment = {**os.environ, "SQLALCHEMY_DATABASE_URI": _url(ha, "haproxy"), "DATABASE_EMBEDDED": "false"}
    subprocess.run(
        [str(Path(sys.executable).parent / "todo-app"), "migrate", "apply"],
        env=environment, cwd=tempfile.gettempdir(), check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def _url(ha: PatroniCluster, topology: str) -> str:
    if topology == "multihost":
        return ha.multi_host_url()
    url = ha.pgbouncer_url() if topology == "pgbouncer" else ha.proxy_url()
    return url.render_as_string(hide_password=False)


def _start_app(url: str, pool: str, topology: str, workers: int) -> tuple["subprocess.Popen[bytes]", int]:
    port = free_port()
    environment = {
        **os.environ,
        "SQLALCHEMY_DATABASE_URI": url,
        "DATABASE_POOL_TYPE": pool,
        "DATABASE_EMBEDDED": "false",
    }
    if pool == "FIXED_PROCESS":
        environment["DATABASE_POOL_SIZE"] = "4"
        if topology == "pgbouncer":
            environment["DATABASE_STATEMENT_CACHE_SIZE"] = "0"
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "todo_app.main:app", "--port", str(port), "--workers", str(workers),
         "--log-level", "warning"],
        env=environment, cwd=tempfile.gettempdir(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    return process, port


async def _wait_ready(port: int, process: "subprocess.Popen[bytes]") -> None:
    deadline = time.monotonic() + 60
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError("the app exited during start-up")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/healthz/ready")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError("the app did not become ready within 60 s")


async def _load(port: int, run: Run, fault: Any, writers: int) -> None:
    stop = asyncio.Event()
    numbers = itertools.count()
    label = f"{run.topology}-{run.pool}-{run.fault}-{int(run.synchronous)}"

    async def writer(name: int) -> None:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            while not stop.is_set():
                description = f"{label}-{name}-{next(numbers)}"
                started = time.monotonic()
                try:
                    status = (await client.post(ADD_TODO, json={"description": description})).status_code
                except httpx.HTTPError:
                    status = 0  # no answer at all
                run.outcomes.append((description, status, started, time.monotonic()))
                if status != 200:
                    await asyncio.sleep(0.05)

    async def acknowledged(count: int, since: float) -> None:
        while sum(1 for _, status, started, _ in run.outcomes if status == 200 and started > since) < count:
            await asyncio.sleep(0.02)

    tasks = [asyncio.ensure_future(writer(name)) for name in range(writers)]
    await acknowledged(ACKS, 0.0)
    began = time.monotonic()
    await asyncio.to_thread(fault)
    run.fault_seconds = time.monotonic() - began
    await acknowledged(ACKS, time.monotonic())
    stop.set()
    await asyncio.gather(*tasks)


def _one(ha: PatroniCluster, run: Run, workers: int, writers: int) -> None:
    process, port = _start_app(_url(ha, run.topology), run.pool, run.topology, workers)
    restart: Any = None
    try:
        asyncio.run(_wait_ready(port, process))
        if run.fault in ("kill_node", "stall_kill_node"):

            def fault() -> None:
                nonlocal restart
                if run.fault == "stall_kill_node":
                    ha.stall_replication()
                    time.sleep(STALL)  # writes go on meanwhile (acknowledged only without synchronous mode)
                restart, _ = ha.kill_node()
        else:
            fault = getattr(ha, run.fault)
        asyncio.run(_load(port, run, fault, writers))
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    stored = set(ha.psql("SELECT description FROM todo", database=ha.APP_DATABASE).splitlines())
    run.missing = sum(1 for description, status, _, _ in run.outcomes if status == 200 and description not in stored)
    if restart is not None:
        ha.restart_node(restart)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--topologies", default="pgbouncer,multihost")
    parser.add_argument("--pools", default="NULL,FIXED_PROCESS")
    parser.add_argument("--faults", default="switchover,kill_postmaster,kill_node,stall_kill_node")
    parser.add_argument("--async", dest="asynchronous", action="store_true", help="also asynchronous replication")
    parser.add_argument(
        "--async-faults", default="kill_node,stall_kill_node", help="the faults run with asynchronous replication"
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--writers", type=int, default=8)
    args = parser.parse_args()
    modes = [True, False] if args.asynchronous else [True]
    print(f"# failover under load: example app, {args.workers} uvicorn workers, {args.writers} writers, {ACKS} "
          "acknowledged writes before and after each fault", flush=True)  # fmt: skip
    print(HEADER, flush=True)
    for synchronous in modes:
        with PatroniCluster.temporary(synchronous_mode=synchronous) as ha:
            _migrate(ha)
            faults = args.faults if synchronous else args.async_faults
            for topology, pool, fault in itertools.product(
                args.topologies.split(","), args.pools.split(","), faults.split(",")
            ):
                run = Run(topology, pool, fault, synchronous)
                ha.psql("TRUNCATE todo", database=ha.APP_DATABASE)
                _one(ha, run, args.workers, args.writers)
                print(run.line(), flush=True)


if __name__ == "__main__":
    main()
