"""The harness that starts throwaway servers: binary discovery, the pip fallback, clean stops."""

import asyncio
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import asyncpg
import pytest

from mountaineer_db.exceptions import ResourceNotFoundError
from mountaineer_db.servers import cluster as cluster_module
from mountaineer_db.servers.cluster import PostgresCluster, find_postgres_bindir


async def _server_version(cluster: PostgresCluster) -> str:
    url = cluster.url()
    connection = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, database="postgres", ssl=False
    )
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()


def test_bindir_override_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    default = find_postgres_bindir()
    monkeypatch.setenv("MOUNTAINEER_DB_PG_BINDIR", str(default))
    assert find_postgres_bindir() == default
    assert (default / "initdb").exists()


def test_without_any_server_binaries_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MOUNTAINEER_DB_PG_BINDIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no pg_config, no initdb
    monkeypatch.setattr(cluster_module.glob, "glob", lambda pattern: [])  # no /usr/lib/postgresql
    monkeypatch.setattr(cluster_module.importlib.util, "find_spec", lambda name: None)  # no pgserver
    with pytest.raises(ResourceNotFoundError) as caught:
        find_postgres_bindir()
    message = str(caught.value)
    assert "apt-get install postgresql" in message and "MOUNTAINEER_DB_PG_BINDIR" in message
    # pip can install pgserver only where it publishes wheels (up to Python 3.12).
    assert ("pip install pgserver" in message) == (sys.version_info < (3, 13))


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="pgserver publishes no wheel for Python 3.13+")
def test_pip_installed_postgres_runs_when_no_system_binaries() -> None:
    """The pgserver wheel's PostgreSQL starts, answers and stops like the system one."""
    spec = importlib.util.find_spec("pgserver")
    assert spec is not None and spec.origin, "pgserver is part of the dev extra"
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    with PostgresCluster.temporary(bindir=bindir) as cluster:
        version = asyncio.run(_server_version(cluster))
        assert version.split(".")[0].isdigit()
        process = cluster.process
        assert process is not None and process.poll() is None
        if os.geteuid() == 0:
            assert (cluster.data_dir / "PG_VERSION").stat().st_uid != 0, "the server runs unprivileged"
    assert process.poll() is not None, "stopping killed exactly the process we started"
    assert not cluster.data_dir.exists(), "the throwaway data directory is removed"


def test_restart_keeps_data() -> None:
    # Not pytest's tmp_path: its root is private to root, and the server runs unprivileged.
    tmp_path = Path(tempfile.mkdtemp(prefix="mdb-restart-"))
    os.chmod(tmp_path, 0o755)
    cluster = PostgresCluster(tmp_path / "data")
    with cluster:
        first_pid = cluster.process.pid if cluster.process else None
        cluster.restart("fast")
        assert cluster.process is not None and cluster.process.pid != first_pid
        assert asyncio.run(_server_version(cluster))
    assert (tmp_path / "data" / "PG_VERSION").exists()
    shutil.rmtree(tmp_path)


def test_free_ports_are_reserved_across_processes() -> None:
    """Issue 25: a port found free was a guess; two suites (or xdist workers) could pick the same
    one, and an outgoing connection could take it before the server bound it. Now a port is
    below the ephemeral range and reserved for the life of the process that got it."""
    import subprocess

    from mountaineer_db.servers._processes import free_port

    mine = {free_port() for _ in range(300)}
    assert len(mine) == 300
    ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert max(mine) < ephemeral_low
    script = "from mountaineer_db.servers._processes import free_port\nprint(*(free_port() for _ in range(300)))"
    other = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    theirs = {int(port) for port in other.stdout.split()}
    assert len(theirs) == 300 and not mine & theirs
