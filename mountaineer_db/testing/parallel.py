"""Parallel test databases under pytest-xdist: one server, tables built once, a clone per worker.

With `pytest -n N`, each worker is a process with its own session fixtures. Without help,
each would start its own PostgreSQL and build the tables (run every migration) itself. Here:

- the first worker that asks for `mdb_server` starts the throwaway PostgreSQL and writes where
  it is into a folder the run's workers share (`shared_run_dir`, named after xdist's run id);
  the others use that server. The controller process stops it when the run ends;
- the first worker that asks for `mdb_database` builds a template database with the tables
  (`create_all`, or the migrations of `apply_migrations`) and marks it a template; every
  worker then gets its own database as a copy of it (`CREATE DATABASE ... TEMPLATE`), which
  takes a fraction of a second whatever the migrations cost.

A file lock in the shared folder makes the first worker build while the others wait. Schemas
are told apart by a key (`template_key`): the DDL of a `MetaData`, the app config class and
revision of `apply_migrations`, or a `mdb_template_key` attribute a hook of your own sets.
A hook without a key is run in each worker's database, as without xdist.

Without xdist, or with `-n 0`, nothing here is used.
"""

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import MetaData

from mountaineer_db.servers._blocking import run_coroutine
from mountaineer_db.servers._processes import private_directory, run_user, write_private
from mountaineer_db.servers.cluster import ExternalServer, PostgresCluster

__all__ = [
    "SHARED_DIR_KEY",
    "SharedRun",
    "shared_run_dir",
    "stop_shared_run",
    "template_key",
]

logger = logging.getLogger("mountaineer_db")

_detached: "list[subprocess.Popen[bytes]]" = []

SHARED_DIR_KEY = "mountaineer_db_shared_dir"
"""The key of xdist's `workerinput` that carries the shared folder to each worker."""

TEMPLATE_KEY_ATTRIBUTE = "mdb_template_key"
"""A schema hook with this attribute (a string) gets a template, like `apply_migrations`'s."""


def shared_run_dir(testrunuid: str) -> Path:
    """The folder an xdist run's workers share (made 0700 by the controller)."""
    return Path(tempfile.gettempdir()) / f"mountaineer-db-xdist-{testrunuid}"


def template_key(schema: Any) -> str | None:
    """What identifies `schema`'s tables across worker processes, or None (no template).

    A `MetaData`: its DDL as PostgreSQL would get it. A hook: its `mdb_template_key`
    attribute (`apply_migrations` sets one: the config class, revision and settings).
    """
    if isinstance(schema, MetaData):
        from sqlalchemy.dialects import postgresql
        from sqlalchemy.schema import CreateIndex, CreateTable

        dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
        try:
            statements = [str(CreateTable(table).compile(dialect=dialect)) for table in schema.sorted_tables]
            statements += [
                str(CreateIndex(index).compile(dialect=dialect))
                for table in schema.sorted_tables
                for index in sorted(table.indexes, key=lambda index: str(index.name))
            ]
        except Exception:  # noqa: BLE001 - a type that does not compile here: no template, each worker builds
            return None
        return "metadata:" + "\n".join(statements)
    key = getattr(schema, TEMPLATE_KEY_ATTRIBUTE, None)
    return key if isinstance(key, str) and key else None


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    descriptor = os.open(directory / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


async def _admin(server: Any, *statements: str) -> None:
    url = server.url("postgres")
    connection = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, database="postgres"
    )
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


class SharedRun:
    """A worker's view of what the run's workers share (see the module docstring)."""

    def __init__(self, directory: Path, testrunuid: str) -> None:
        self.directory = directory
        self.testrunuid = testrunuid

    @property
    def _server_file(self) -> Path:
        return self.directory / "server.json"

    def server(self, external_url: str | None) -> Any:
        """The run's server: `external_url`'s, else the throwaway one, started by the first worker."""
        if external_url:
            return ExternalServer(external_url)
        with _locked(self.directory):
            if self._server_file.exists():
                state = json.loads(self._server_file.read_text())
                # Started by another worker: the same cluster, which this process will not stop.
                return PostgresCluster(Path(state["data_dir"]), port=state["port"], password=state["password"])
            root = Path(tempfile.mkdtemp(prefix="mountaineer-db-pg-"))
            private_directory(root, run_user())  # as PostgresCluster.temporary() makes it
            cluster = PostgresCluster(root / "data")
            cluster.start()
            assert cluster.process is not None
            state = {
                "root": str(root),
                "data_dir": str(cluster.data_dir),
                "port": cluster.port,
                "password": cluster.password,
                "pid": cluster.process.pid,
            }
            write_private(self._server_file, json.dumps(state))
            # The controller stops it when the run ends, not this worker: the handle is kept
            # (a dropped handle of a running child is a ResourceWarning) but never used to stop it.
            _detached.append(cluster.process)
            cluster.process = None
            return cluster

    def template(self, server: Any, key: str, build: Any) -> str:
        """The name of the template database for `key`, built by `build(name)` if this run has none yet."""
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        name = f"mdb_template_{self.testrunuid[:8]}_{digest}"
        marker = self.directory / f"template-{digest}"
        with _locked(self.directory):
            if marker.exists():
                return name
            started = time.monotonic()
            build(name)
            # No one may connect to it any more (a copy needs it idle); then it is a template.
            run_coroutine(
                lambda: _admin(
                    server,
                    f"ALTER DATABASE {_quote(name)} WITH ALLOW_CONNECTIONS false",
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    f"WHERE datname = '{name}' AND pid <> pg_backend_pid()",
                    f"ALTER DATABASE {_quote(name)} WITH IS_TEMPLATE true",
                ),
                thread_name="mountaineer-db-testing",
            )
            marker.write_text(name)
            logger.info("Built the template database %s in %.1fs.", name, time.monotonic() - started)
            return name


def stop_shared_run(directory: Path, external_url: str | None) -> None:
    """The controller's cleanup after the workers: drop the templates, stop the server, remove `directory`."""
    if not directory.exists():
        return
    try:
        names = [marker.read_text() for marker in directory.glob("template-*")]
        if external_url and names:  # a server we did not start keeps running: drop what we made on it
            statements = []
            for name in names:
                statements += [
                    f"ALTER DATABASE {_quote(name)} WITH IS_TEMPLATE false",
                    f"DROP DATABASE IF EXISTS {_quote(name)} WITH (FORCE)",
                ]
            run_coroutine(
                lambda: _admin(ExternalServer(external_url), *statements), thread_name="mountaineer-db-testing"
            )
        server_file = directory / "server.json"
        if server_file.exists():
            state = json.loads(server_file.read_text())
            _stop_postmaster(Path(state["data_dir"]), int(state["pid"]))
            shutil.rmtree(state["root"], ignore_errors=True)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _stop_postmaster(data_dir: Path, pid: int, timeout: float = 30.0) -> None:
    """Stop the postmaster a worker started (fast shutdown), by the PID it recorded."""
    try:
        recorded = int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return  # not running
    if recorded != pid:
        return  # not the process we started: leave it alone
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout / 3
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie that no init reaps, as in some containers, has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return state not in ("Z", "X")
