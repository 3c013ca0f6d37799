"""A local PgBouncer in front of a PostgreSQL server, for the test kit and the suite.

```python
with PgBouncer("127.0.0.1", 5432, {"postgres": "secret"}, work_dir=Path("/tmp/pgb")) as bouncer:
    print(bouncer.url("app", user="postgres", password="secret"))
```
"""

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from sqlalchemy.engine import URL

from mountaineer_db.exceptions import ResourceNotFoundError
from mountaineer_db.servers._processes import (
    ClusterError,
    as_user,
    chown_tree,
    free_port,
    private_directory,
    run_user,
    stop_process,
    write_private,
)

__all__ = ["PgBouncer", "find_pgbouncer"]


def find_pgbouncer() -> Path | None:
    """The `pgbouncer` executable, or None when it is not installed."""
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
    )
    return Path(found) if found else None


def _quoted(value: str) -> str:
    """A value in PgBouncer's auth_file syntax: double quotes, inner quotes doubled."""
    return '"' + value.replace('"', '""') + '"'


def _userlist(users: dict[str, str]) -> str:
    """PgBouncer's auth_file for `users`; `ClusterError` for a name or password the file cannot hold.

    The file has one user per line, so a line break (or a NUL) in a name or a password would
    end the entry early: PgBouncer would then refuse every login of that user, or read the
    rest as another user. Double quotes are fine (doubled).
    """
    for user, password in users.items():
        for what, text in (("name", user), ("password", password)):
            if any(character in text for character in "\n\r\x00"):
                raise ClusterError(
                    f"The {what} of PgBouncer user {user!r} holds a line break or a NUL character, which "
                    f"PgBouncer's auth_file cannot hold (one user per line). Choose another {what}."
                )
    return "".join(f"{_quoted(user)} {_quoted(password)}\n" for user, password in users.items())


class PgBouncer:
    """A PgBouncer we started in front of a PostgreSQL server, transaction mode by default.

    The settings shipped here are the ones we recommend (docs/deployment.md):
    `server_login_retry = 1` (PgBouncer's 15 s default turns a 0.2 s PostgreSQL restart
    into a 15 s outage) and `query_wait_timeout` bounded so overload fails fast.
    """

    def __init__(
        self,
        server_host: str,
        server_port: int,
        users: dict[str, str],
        *,
        work_dir: Path,
        port: int | None = None,
        settings: dict[str, str] | None = None,
        binary: Path | None = None,
        unix_socket: bool = False,
    ) -> None:
        found = binary or find_pgbouncer()
        if found is None:
            raise ResourceNotFoundError("PgBouncer is not installed; install it with `apt-get install -y pgbouncer`.")
        self.binary = found
        self.server_host = server_host
        self.server_port = server_port
        self.users = users
        self.work_dir = Path(work_dir)
        self.port = port or free_port()
        self.settings = {
            "pool_mode": "transaction",
            "default_pool_size": "5",
            "max_client_conn": "2000",
            "server_login_retry": "1",
            "query_wait_timeout": "30",
            "server_reset_query": "",
            "ignore_startup_parameters": "extra_float_digits",
            **(settings or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self._run_as = run_user()
        # Also listen on a Unix-domain socket in work_dir/socket (`socket_url`), when asked.
        self.socket_dir: Path | None = self.work_dir / "socket" if unix_socket else None

    def __repr__(self) -> str:
        return f"PgBouncer(127.0.0.1:{self.port} -> {self.server_host}:{self.server_port})"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "pgbouncer.log"

    def _write_files(self) -> Path:
        """The user list and the ini file, 0600 from their first byte, in a 0700 work_dir."""
        content = _userlist(self.users)  # checked before anything is written
        private_directory(self.work_dir, self._run_as)
        if self.socket_dir is not None:
            self.socket_dir.mkdir(exist_ok=True)
        userlist = self.work_dir / "userlist.txt"
        write_private(userlist, content, owner=self._run_as)
        admins = ",".join(self.users)
        lines = [
            "[databases]",
            f"* = host={self.server_host} port={self.server_port}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {self.port}",
            f"unix_socket_dir = {self.socket_dir or ''}",
            "auth_type = scram-sha-256",
            f"auth_file = {userlist}",
            f"admin_users = {admins}",
            f"logfile = {self.log_path}",
            *(f"{k} = {v}" for k, v in self.settings.items()),
        ]
        ini = self.work_dir / "pgbouncer.ini"
        write_private(ini, "\n".join(lines) + "\n", owner=self._run_as)
        chown_tree(self.work_dir, self._run_as)
        return ini

    def start(self, timeout: float = 15.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        ini = self._write_files()
        self.process = subprocess.Popen(
            [str(self.binary), str(ini)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **as_user(self._run_as),
        )
        # Ready when this very process says so in its log ("[PID] LOG process up", after it
        # bound its port) and the port answers: a port that merely accepts could be another
        # program's, with our PgBouncer about to exit on "Address already in use".
        up = f"[{self.process.pid}] LOG process up"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ClusterError(f"PgBouncer exited during start-up; see {self.log_path}")
            if self._log_says(up):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            time.sleep(0.02)
        raise ClusterError(f"PgBouncer did not listen on port {self.port} within {timeout}s; see {self.log_path}")

    def _log_says(self, line: str) -> bool:
        try:
            with open(self.log_path, errors="replace") as log:
                return any(line in entry for entry in log)
        except OSError:
            return False

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None:
            return
        stop_process(self.process, signal.SIGINT, timeout)
        self.process = None

    def url(self, database: str, *, user: str, password: str) -> URL:
        return URL.create(
            "postgresql+asyncpg", username=user, password=password, host="127.0.0.1", port=self.port, database=database
        )

    def socket_url(self, database: str, *, user: str, password: str) -> URL:
        """The URL of this PgBouncer's Unix-domain socket (`unix_socket=True`): `...@:PORT/db?host=DIR`."""
        if self.socket_dir is None:
            raise ValueError("This PgBouncer listens on TCP only; create it with unix_socket=True.")
        return URL.create(
            "postgresql+asyncpg",
            username=user,
            password=password,
            port=self.port,
            database=database,
            query={"host": str(self.socket_dir)},
        )

    async def admin(self, command: str, *, user: str, password: str, timeout: float = 10.0) -> None:
        """Run a console command (PAUSE, RESUME, RECONNECT, KILL db, ...) on the admin database.

        Bounded by `timeout`; a refused or dropped console connection (a busy PgBouncer, right
        after a KILL) is tried again until then.
        """
        import asyncpg

        deadline = time.monotonic() + timeout
        while True:
            try:
                async with asyncio.timeout(max(deadline - time.monotonic(), 0.1)):
                    connection = await asyncpg.connect(
                        host="127.0.0.1", port=self.port, user=user, password=password, database="pgbouncer",
                        ssl=False, statement_cache_size=0,
                    )
                    try:
                        await connection.execute(command)
                    finally:
                        # Not close(): after KILL a console connection's graceful close was seen to
                        # wait for PgBouncer for seconds; there is nothing to finish on it.
                        connection.terminate()
                return
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
                if time.monotonic() > deadline - 0.2:
                    raise
                await asyncio.sleep(0.1)

    def __enter__(self) -> "PgBouncer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
