"""Fixtures for the fault-injection suite: every test owns its PostgreSQL and its PgBouncer.

A data directory is initialised once per test session (initdb, a `faults` database and the
`fault_rows` table) and copied for each test, so a test gets a fresh, running server of its
own in well under a second, and may stop, restart or starve it without touching any other test.
"""

import asyncio
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mountaineer.config import unregister_config

from mountaineer_db import dispose_engines
from mountaineer_db.servers._processes import chown_tree, run_user
from mountaineer_db.servers.cluster import PostgresCluster
from mountaineer_db.servers.pgbouncer import PgBouncer, find_pgbouncer

from .app import TABLE
from .helpers import DATABASE, admin_execute

IN_CI = bool(os.environ.get("CI"))


def require_pgbouncer() -> None:
    """Skip loudly when PgBouncer is missing; in CI a missing PgBouncer is a failure."""
    if find_pgbouncer() is None:
        message = "PgBouncer is not installed (apt-get install -y pgbouncer); PgBouncer fault tests cannot run"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@dataclass
class Template:
    data_dir: Path
    password: str


@pytest.fixture(scope="session")
def pg_template() -> Iterator[Template]:
    """An initialised data directory with the `faults` database and table, copied per test."""
    root = Path(tempfile.mkdtemp(prefix="mdb-faults-template-"))
    os.chmod(root, 0o755)
    cluster = PostgresCluster(root / "data")
    cluster.start()
    try:

        async def setup() -> None:
            await admin_execute(cluster, f'CREATE DATABASE "{DATABASE}"')
            await admin_execute(cluster, f"CREATE TABLE {TABLE} (id bigint PRIMARY KEY)", database=DATABASE)

        asyncio.run(setup())
    finally:
        cluster.stop()
    (root / "data" / "postmaster.pid").unlink(missing_ok=True)
    yield Template(root / "data", cluster.password)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_cluster(pg_template: Template) -> Iterator[Callable[..., PostgresCluster]]:
    """Start a cluster of this test's own (a copy of the template); `settings` are `-c` options."""
    roots: list[Path] = []
    clusters: list[PostgresCluster] = []

    def start(**settings: str) -> PostgresCluster:
        root = Path(tempfile.mkdtemp(prefix="mdb-faults-pg-"))
        os.chmod(root, 0o755)
        roots.append(root)
        shutil.copytree(pg_template.data_dir, root / "data", symlinks=True)
        chown_tree(root / "data", run_user())  # the server runs as this user when we are root
        cluster = PostgresCluster(root / "data", password=pg_template.password, settings=settings)
        clusters.append(cluster)
        cluster.start()
        return cluster

    yield start
    for cluster in clusters:
        cluster.stop("immediate")
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cluster(make_cluster: Callable[..., PostgresCluster]) -> PostgresCluster:
    """This test's own PostgreSQL, default settings."""
    return make_cluster()


@pytest.fixture
def make_bouncer() -> Iterator[Callable[..., PgBouncer]]:
    """Start a PgBouncer of this test's own in front of a cluster, with our shipped defaults."""
    require_pgbouncer()
    bouncers: list[PgBouncer] = []
    root = Path(tempfile.mkdtemp(prefix="mdb-faults-bouncer-"))
    os.chmod(root, 0o755)  # PgBouncer runs unprivileged and must reach its files

    def start(cluster: PostgresCluster, **settings: str) -> PgBouncer:
        users = {cluster.user: cluster.password}
        work_dir = root / f"bouncer{len(bouncers)}"
        bouncer = PgBouncer("127.0.0.1", cluster.port, users, work_dir=work_dir, settings=settings)
        bouncers.append(bouncer)
        bouncer.start()
        return bouncer

    yield start
    for bouncer in bouncers:
        bouncer.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
async def _fresh_engines() -> AsyncIterator[None]:
    yield
    await dispose_engines()
    unregister_config()


@pytest.fixture
def db_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="mountaineer_db")
    return caplog
