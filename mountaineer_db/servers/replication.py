"""Streaming replicas of a local `PostgresCluster`: for the test kit and the suite.

A `StreamingReplica` is a hot standby made with `pg_basebackup -R` from a running
`PostgresCluster` we started, streaming the primary's WAL over a replication connection.
It runs like its primary: on a free loopback port, as the unprivileged server user when we
are root, stopped by its own PID only.

```python
with PostgresCluster.temporary() as primary, streaming_replicas(primary, count=2) as replicas:
    print([replica.url("postgres") for replica in replicas])
```

The primary needs nothing special: PostgreSQL's defaults (`wal_level = replica`, ten WAL
senders, and the `host replication all 127.0.0.1/32` line initdb writes) allow it. The
replica's `max_connections` and friends must be at least the primary's, so it starts with
the primary's settings.
"""

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mountaineer_db.servers._processes import ClusterError, as_user, chown_tree, private_directory, run_user
from mountaineer_db.servers.cluster import PostgresCluster

__all__ = ["StreamingReplica", "streaming_replicas"]


class StreamingReplica(PostgresCluster):
    """A hot standby of `primary`, cloned with `pg_basebackup -R` the first time it starts."""

    def __init__(
        self,
        primary: PostgresCluster,
        data_dir: Path,
        *,
        port: int | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            data_dir,
            port=port,
            password=primary.password,
            settings={**primary.settings, **(settings or {})},
            bindir=primary.bindir,
        )
        self.primary = primary

    def __repr__(self) -> str:
        return f"StreamingReplica(127.0.0.1:{self.port} <- 127.0.0.1:{self.primary.port})"

    def init(self) -> None:
        """Clone the running primary (`pg_basebackup -R`: standby.signal and primary_conninfo)."""
        if not _running(self.primary):
            raise ClusterError(f"{self!r}: the primary is not running; start it before its replicas.")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        chown_tree(self.data_dir, self._run_as)
        argv = [
            str(self.bindir / "pg_basebackup"),
            "--host=127.0.0.1",
            f"--port={self.primary.port}",
            f"--username={self.primary.user}",
            f"--pgdata={self.data_dir}",
            "--write-recovery-conf",
            "--wal-method=stream",
            "--checkpoint=fast",
            "--no-sync",
            "--no-password",
        ]
        arguments: dict[str, Any] = as_user(self._run_as)
        # The password reaches pg_basebackup through its environment, never its command line;
        # -R writes it into primary_conninfo inside the (0700) data directory.
        arguments["env"] = {**arguments.get("env", os.environ), "PGPASSWORD": self.primary.password}
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, **arguments)
        if result.returncode != 0:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            detail = (result.stderr.strip() or result.stdout.strip()).replace(self.primary.password, "***")
            raise ClusterError(f"pg_basebackup from {self.primary!r} failed: {detail}")
        if not (self.data_dir / "standby.signal").exists():
            raise ClusterError(f"pg_basebackup -R wrote no standby.signal into {self.data_dir}.")

    def wait_streaming(self, timeout: float = 30.0) -> None:
        """Block until the primary reports this replica as streaming (pg_stat_replication)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._is_streaming():
                return
            time.sleep(0.05)
        raise ClusterError(f"{self!r} did not start streaming within {timeout}s; see {self.log_path}")

    def _is_streaming(self) -> bool:
        """True once the WAL receiver of this replica reports `streaming` (asked on the replica)."""
        psql = self.bindir / "psql"
        if not psql.exists():
            psql = Path(shutil.which("psql") or "psql")
        result = subprocess.run(
            [
                str(psql),
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                "postgres",
                "-At",
                "-c",
                "SELECT status FROM pg_stat_wal_receiver",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            **as_user(self._run_as),
        )
        return result.returncode == 0 and result.stdout.strip() == "streaming"


@contextlib.contextmanager
def streaming_replicas(
    primary: PostgresCluster, *, count: int = 2, settings: dict[str, str] | None = None
) -> Iterator[list[StreamingReplica]]:
    """`count` hot standbys of the running `primary`, streaming, stopped and deleted on exit."""
    root = Path(tempfile.mkdtemp(prefix="mountaineer-db-replicas-"))
    # 0700, and the server's own when we are root (it must reach the data directories).
    private_directory(root, run_user())
    replicas: list[StreamingReplica] = []
    try:
        for number in range(count):
            replica = StreamingReplica(primary, root / f"replica{number + 1}", settings=settings)
            replicas.append(replica)
            replica.start()
        for replica in replicas:
            replica.wait_streaming()
        yield replicas
    finally:
        for replica in replicas:
            replica.stop()
        shutil.rmtree(root, ignore_errors=True)


def _running(primary: PostgresCluster) -> bool:
    """Whether `primary` serves: our child process, or (started by another process, such as the
    pytest-xdist worker that started the run's shared server) a postmaster.pid that says "ready"."""
    if primary.process is not None:
        return primary.process.poll() is None
    try:
        lines = (primary.data_dir / "postmaster.pid").read_text().splitlines()
    except OSError:
        return False
    return len(lines) >= 8 and lines[7].strip() == "ready"
