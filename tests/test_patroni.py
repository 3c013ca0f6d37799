"""Failover on a real high-availability cluster: etcd, three Patroni-managed PostgreSQL nodes,
HAProxy and PgBouncer on loopback (mountaineer_db.servers.patroni), started by each test for itself
(a test that switches the primary over owns its cluster).

- Multi-host URLs find the primary and the standbys, and follow a switchover.
- A demoted primary (a real switchover, an address that still leads to the old primary) is a
  503 with Retry-After; once the address follows, the next requests write on the new primary.
- Under load through PgBouncer and HAProxy, a switchover and a killed postmaster fail requests
  only with 503, and no write acknowledged to a client is missing afterwards (synchronous mode).

Marked `ha`: skipped when Patroni, etcd or HAProxy is missing (a failure in CI, where
scripts/test.sh installs them).
"""

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mountaineer.config import unregister_config
from sqlalchemy import text

from mountaineer_db import DatabaseConfig, dispose_engines
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.servers.patroni import PatroniCluster, missing_ha_tools
from tests.conftest import IN_CI
from tests.failover_app import ADD, SCHEMA, FailoverConfig, failover_client

pytestmark = [pytest.mark.ha, pytest.mark.slow]

DEMOTED = {"detail": "The database primary changed while this request ran. Try again."}


@pytest.fixture
def ha() -> Iterator[PatroniCluster]:
    """A cluster of our own (synchronous mode), with the failover app's tables."""
    missing = missing_ha_tools()
    if missing:
        message = f"{', '.join(missing)} not installed (apt-get install {' '.join(missing)}); HA tests cannot run"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    with PatroniCluster.temporary() as cluster:
        for statement in SCHEMA:
            cluster.psql(f"SET ROLE {cluster.APP_USER}; {statement}", database=cluster.APP_DATABASE)
        yield cluster


@pytest.fixture(autouse=True)
async def _dispose() -> AsyncIterator[None]:
    yield
    await dispose_engines()


def _config(url: Any, **settings: Any) -> FailoverConfig:
    rendered = url if isinstance(url, str) else url.render_as_string(hide_password=False)
    return FailoverConfig(SQLALCHEMY_DATABASE_URI=rendered, **settings)


async def _where(config: DatabaseConfig, url: Any = None) -> tuple[int, bool]:
    async with engine_for(config, url=url).connect() as connection:
        row = (await connection.execute(text("SELECT inet_server_port(), pg_is_in_recovery()"))).one()
    return int(row[0]), bool(row[1])


async def test_multi_host_urls_find_the_primary_and_the_standbys_and_follow_a_switchover(
    ha: PatroniCluster, tmp_path: Path
) -> None:
    primary = ha.primary()
    hosts = ",".join(f"127.0.0.1:{node.port}" for node in ha.nodes)
    config = FailoverConfig(
        POSTGRES_HOST=hosts,
        POSTGRES_USER=ha.APP_USER,
        POSTGRES_PASSWORD=ha.app_password,
        POSTGRES_DB=ha.APP_DATABASE,
        DATABASE_POOL_TYPE="FIXED_PROCESS",
        DATABASE_REPLICA_URLS=ha.multi_host_url("prefer-standby"),
    )
    assert await _where(config) == (primary.port, False), "read-write: the primary, wherever it is in the list"
    port, standby = await _where(config, config.DATABASE_REPLICA_URLS[0])
    assert standby and port != primary.port, "prefer-standby: a standby"

    # A URL listing only today's replicas: a connection asked for meanwhile waits (within
    # DATABASE_CONNECT_TIMEOUT) for one of them to become the primary.
    candidate = ha.sync_standby()  # in synchronous mode, Patroni switches over to it only
    replicas_only = ",".join(f"127.0.0.1:{node.port}" for node in ha.nodes if node is not primary)
    waiting_config = DatabaseConfig(  # not the app's config: no registration
        POSTGRES_HOST=replicas_only,
        POSTGRES_USER=ha.APP_USER,
        POSTGRES_PASSWORD=ha.app_password,
        POSTGRES_DB=ha.APP_DATABASE,
        DATABASE_CONNECT_TIMEOUT=45,
    )
    waiting = asyncio.ensure_future(_where(waiting_config))
    new = await asyncio.to_thread(ha.switchover, candidate.name)
    assert new.name == candidate.name
    assert await waiting == (new.port, False)

    async with failover_client(config, tmp_path / "views") as client:
        response = await client.post(ADD, json={"note": "after the switchover"})
        assert response.status_code == 200, response.text
        assert response.json()["sideeffect"] == {"count": 1, "port": new.port, "standby": False}


async def test_a_demoted_primary_is_a_503_and_the_next_requests_reach_the_new_primary(
    ha: PatroniCluster, tmp_path: Path
) -> None:
    """The app reaches the primary through an address that follows a switchover late (a DNS name,
    a virtual IP: HAProxy's `pinned` listener). After a real `patronictl switchover` the old
    primary is a replica: reads still work, a write is the documented 503, and once the address
    follows, the next writes land on the new primary. No 500 at any point."""
    old = ha.primary()
    ha.pin(old)
    config = _config(ha.pinned_url(), DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_POOL_SIZE=2)
    statuses: list[int] = []
    async with failover_client(config, tmp_path / "views") as client:
        response = await client.post(ADD, json={"note": "before"})
        statuses.append(response.status_code)
        assert response.json()["sideeffect"]["port"] == old.port
        new = await asyncio.to_thread(ha.switchover)
        read = await client.get("/ledger")
        statuses.append(read.status_code)
        assert read.json() == {"count": 1, "port": old.port, "standby": True}, "the address still leads to the old one"
        demoted = await client.post(ADD, json={"note": "during"})
        statuses.append(demoted.status_code)
        assert demoted.status_code == 503 and demoted.json() == DEMOTED
        assert demoted.headers["retry-after"] == "1"
        ha.pin(new)  # the address follows the new primary
        for number in range(3):
            response = await client.post(ADD, json={"note": f"after {number}"})
            statuses.append(response.status_code)
            assert response.json()["sideeffect"]["port"] == new.port
    assert statuses == [200, 200, 503, 200, 200, 200]


@dataclass
class Outcome:
    note: str
    status: int
    started: float
    ended: float


async def _write_load(client: Any, stop: asyncio.Event, outcomes: list[Outcome], phase: str, writers: int = 6) -> None:
    numbers = itertools.count()

    async def writer(name: int) -> None:
        while not stop.is_set():
            note = f"{phase}-w{name}-{next(numbers)}"
            started = time.monotonic()
            response = await client.post(ADD, json={"note": note})
            outcomes.append(Outcome(note, response.status_code, started, time.monotonic()))
            if response.status_code != 200:
                await asyncio.sleep(0.05)  # what Retry-After asks of a client, shortened

    await asyncio.gather(*(writer(name) for name in range(writers)))


async def _until_written(outcomes: list[Outcome], count: int, *, since: float = 0.0, timeout: float = 60) -> None:
    """Wait until `count` writes started after `since` were acknowledged."""
    deadline = time.monotonic() + timeout
    while sum(outcome.status == 200 and outcome.started > since for outcome in outcomes) < count:
        assert time.monotonic() < deadline, f"fewer than {count} writes acknowledged within {timeout} s"
        await asyncio.sleep(0.02)


async def _under_load(config: FailoverConfig, tmp_path: Path, fault: Any) -> list[Outcome]:
    """Writes from six clients: 30 acknowledged, then `fault` (in a thread), then 30 more after it."""
    stop = asyncio.Event()
    outcomes: list[Outcome] = []
    async with failover_client(config, tmp_path / "views", timeout=60) as client:
        load = asyncio.ensure_future(_write_load(client, stop, outcomes, fault.__name__))
        await _until_written(outcomes, 30)
        await asyncio.to_thread(fault)
        done_at = time.monotonic()
        await _until_written(outcomes, 30, since=done_at)
        stop.set()
        await load
    unregister_config()  # the next phase registers its own app config
    # Back by itself: the last writes all succeeded (PgBouncer may still wait out its
    # server_login_retry, 1 s, when the cluster is already back).
    last = sorted(outcomes, key=lambda outcome: outcome.ended)[-20:]
    assert all(outcome.status == 200 for outcome in last), (
        f"the app did not come back by itself: {[(round(o.ended - done_at, 2), o.status) for o in last]}"
    )
    return outcomes


def _missing_acknowledged(ha: PatroniCluster, outcomes: list[Outcome]) -> list[str]:
    stored = set(ha.psql("SELECT note FROM ledger", database=ha.APP_DATABASE).splitlines())
    return [outcome.note for outcome in outcomes if outcome.status == 200 and outcome.note not in stored]


async def test_a_switchover_and_a_killed_postmaster_under_load_fail_only_with_503_and_lose_no_write(
    ha: PatroniCluster, tmp_path: Path
) -> None:
    """Six clients write through PgBouncer and HAProxy (NULL pool, the recommended deploy) during a
    `patronictl switchover`, then straight through HAProxy on a FIXED_PROCESS pool during a SIGKILL
    of the primary's postmaster. Failed requests are 503s (never a 500), the app serves again on
    its own, and every write acknowledged with a 200 is on the primary afterwards (synchronous
    replication: a commit is acknowledged once a replica has it)."""
    through_pgbouncer = await _under_load(_config(ha.pgbouncer_url()), tmp_path, ha.switchover)
    fixed_pool = _config(ha.proxy_url(), DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_POOL_SIZE=6)
    killed = await _under_load(fixed_pool, tmp_path, ha.kill_postmaster)
    for outcomes in (through_pgbouncer, killed):
        statuses = {outcome.status for outcome in outcomes}
        assert statuses <= {200, 503}, sorted(statuses)
        assert sum(outcome.status == 200 for outcome in outcomes) >= 60
    assert _missing_acknowledged(ha, through_pgbouncer + killed) == []
