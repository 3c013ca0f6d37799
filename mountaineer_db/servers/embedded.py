"""The embedded development database: a local PostgreSQL kept under the project folder.

With `DATABASE_EMBEDDED=true` (development only), `ensure_embedded_database(config)`
starts a PostgreSQL server whose data lives in `.mountaineer_db/` in the working directory
(or `directory=`), creates the app's database, applies its migrations, and returns a copy
of the config pointing at it. A new user needs no PostgreSQL installed: the server binaries
come from the system (`/usr/lib/postgresql/*/bin`, `pg_config`) or from the `pgserver` wheel
(`pip install mountaineer-db[embedded]`).

```python
config = ensure_embedded_database(AppConfig())   # e.g. in the app's lifespan or CLI
```

- The port and the generated password are kept in `.mountaineer_db/server.json`, written
  atomically and 0600 from its first byte, in a 0700 folder (the server user's when we are
  root), so a restart reuses the same data. Add `.mountaineer_db/` to `.gitignore`.
- A server already running for that folder (another process of the app, or one left behind
  by a process that was killed) is reused rather than started twice.
- The last process using the server stops it: each user is noted in `server.json`; when the
  owner leaves (`stop_embedded_database()`, at shutdown by `database_lifespan`, or at exit,
  SIGTERM/SIGHUP included) while others remain, ownership passes to one of them. So a
  development server that restarts its app process keeps its database. A server left
  behind by a killed process is adopted.
- It refuses to run with `ENVIRONMENT=production`.
"""

import atexit
import contextlib
import fcntl
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from sqlalchemy.engine import URL

from mountaineer_db.exceptions import ConfigurationError
from mountaineer_db.servers._blocking import run_coroutine
from mountaineer_db.servers._processes import private_directory, run_user, write_private
from mountaineer_db.servers.cluster import PostgresCluster, free_port
from mountaineer_db.settings.checks import deploy_environment
from mountaineer_db.settings.config import DatabaseConfig

__all__ = [
    "DEFAULT_DIRECTORY",
    "EmbeddedDatabase",
    "ensure_embedded_database",
    "points_at_embedded_server",
    "stop_embedded_database",
]

logger = logging.getLogger("mountaineer_db")

DEFAULT_DIRECTORY = ".mountaineer_db"
"""Folder (relative to the working directory) that holds the data and `server.json`."""

ConfigT = TypeVar("ConfigT", bound=DatabaseConfig)

# The data outlives the process, so keep PostgreSQL's crash safety (the test clusters turn it off).
_DURABLE = {"fsync": "on", "full_page_writes": "on", "max_connections": "100"}
T = TypeVar("T")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_coroutine(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion, also when called from inside a running event loop."""
    return run_coroutine(make, thread_name="mountaineer-db-embedded")


class EmbeddedDatabase:
    """The server for one project folder: started here, or found already running."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory.resolve()
        self.data_dir = self.directory / "data"
        self.state_path = self.directory / "server.json"
        self.cluster: PostgresCluster | None = None
        self.port = 0
        self.password = ""
        self.owned = False
        """True when this process stops the server on exit."""
        self.owner_pid = os.getpid()

    def __repr__(self) -> str:
        return f"EmbeddedDatabase({str(self.directory)!r}, port={self.port}, owned={self.owned})"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise start-up between processes sharing the folder."""
        # 0700, and the server user's when we are root (the server must reach data/).
        private_directory(self.directory, run_user())
        with open(self.directory / "lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_state(self) -> dict[str, Any]:
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(self.state_path.read_text())
            if isinstance(state, dict):
                return state
        return {}

    def _write_state(self, **state: Any) -> None:
        write_private(self.state_path, json.dumps(state, indent=2) + "\n")  # holds the password

    def _running_postmaster(self) -> tuple[int, int] | None:
        """(pid, port) of a live, ready server on our data directory, from postmaster.pid."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
            if _pid_alive(pid) and len(lines) >= 8 and lines[7].strip() == "ready" and self._is_our_postmaster(pid):
                return pid, port
        return None

    def _is_our_postmaster(self, pid: int) -> bool:
        """Guard against a stale postmaster.pid whose PID now belongs to another process."""
        cmdline = Path(f"/proc/{pid}/cmdline")
        if not cmdline.parent.exists():
            return True  # no /proc on this system: trust postmaster.pid
        with contextlib.suppress(OSError):
            return str(self.data_dir).encode() in cmdline.read_bytes()
        return False

    def start(self) -> None:
        """Start the server, or attach to the one already running for this folder."""
        self.owner_pid = os.getpid()
        with self._locked():
            state = self._read_state()
            self.password = str(state.get("password") or secrets.token_urlsafe(24))
            users = self._live_users(state)
            running = self._running_postmaster()
            if running is not None:
                server_pid, self.port = running
                owner = int(state.get("owner_pid") or 0)
                if owner != os.getpid() and _pid_alive(owner):
                    self._write_state(**{**state, "users": [*users, os.getpid()]})
                    logger.info("Reusing the embedded PostgreSQL on port %d (started by process %d).", self.port, owner)
                    return
                # Left behind by a process that is gone: adopt it, so it is stopped when we exit.
                self.owned = True
                self._write_state(
                    port=self.port,
                    password=self.password,
                    owner_pid=os.getpid(),
                    server_pid=server_pid,
                    users=[*users, os.getpid()],
                )
                logger.info("Adopted the embedded PostgreSQL on port %d.", self.port)
                return
            port = int(state.get("port") or 0)
            if not port or not _port_free(port):
                port = free_port()
            cluster = PostgresCluster(self.data_dir, port=port, password=self.password, settings=_DURABLE)
            if not cluster.initialized and state:
                logger.warning("%s has settings but no data; initialising a new database.", self.state_path)
            cluster.start()
            self.cluster, self.port, self.owned = cluster, port, True
            pid = cluster.process.pid if cluster.process is not None else 0
            self._write_state(
                port=port, password=self.password, owner_pid=os.getpid(), server_pid=pid, users=[os.getpid()]
            )
            logger.info("Started the embedded PostgreSQL on 127.0.0.1:%d (data in %s).", port, self.data_dir)

    @staticmethod
    def _live_users(state: dict[str, Any]) -> list[int]:
        """The processes noted as using the server that are still alive, this one excluded."""
        noted = state.get("users")
        pids = [pid for pid in noted if isinstance(pid, int)] if isinstance(noted, list) else []
        return [pid for pid in dict.fromkeys(pids) if pid != os.getpid() and _pid_alive(pid)]

    def stop(self) -> None:
        """This process is done with the server: stop it if no other process still uses it.

        When this process owns the server and others still use it, ownership passes to one of
        them (the server keeps running); a process given ownership that way stops the server
        when it is the last to leave.
        """
        if os.getpid() != self.owner_pid:
            return  # a forked child of the process that started or reused it: that process decides
        with self._locked():
            state = self._read_state()
            owner = int(state.get("owner_pid") or 0)
            if not self.owned and owner != os.getpid():
                if owner:  # only note that we left; the owner stops it
                    self._write_state(**{**state, "users": self._live_users(state)})
                return
            others = self._live_users(state)
            if others:
                self._write_state(**{**state, "owner_pid": others[0], "users": others})
                self.owned = False
                logger.info(
                    "Left the embedded PostgreSQL on port %d running for process %d, which still uses it.",
                    self.port,
                    others[0],
                )
                return
            self.owned = False
            if self.cluster is not None:
                self.cluster.stop()
                self.cluster = None
            else:  # adopted, or handed over: signal the postmaster (fast shutdown) and wait for it to go
                running = self._running_postmaster()
                if running is not None:
                    _stop_adopted(running[0])
            self._write_state(port=self.port, password=self.password, owner_pid=0, server_pid=0, users=[])
        logger.info("Stopped the embedded PostgreSQL on port %d.", self.port)

    def url(self, database: str) -> URL:
        """A URL for `database` on this server, as its superuser."""
        return URL.create(
            "postgresql+asyncpg",
            username="postgres",
            password=self.password,
            host="127.0.0.1",
            port=self.port,
            database=database,
        )


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As PostgreSQL itself does: a port held only by TIME_WAIT sockets of the last run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _stop_adopted(pid: int, timeout: float = 30.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


_servers: dict[Path, EmbeddedDatabase] = {}
_exit_hooks_installed = False


def _stop_all() -> None:
    for server in list(_servers.values()):
        try:
            server.stop()
        except Exception as error:  # noqa: BLE001 - best effort at interpreter exit
            logger.warning("Could not stop the embedded PostgreSQL in %s: %s", server.directory, error)
    _servers.clear()


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_exit_hooks() -> None:
    """Stop our servers at exit; on SIGTERM/SIGHUP too, unless the app handles those itself."""
    global _exit_hooks_installed
    if _exit_hooks_installed:
        return
    _exit_hooks_installed = True
    atexit.register(_stop_all)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(signum) is signal.SIG_DFL:
                signal.signal(signum, _on_signal)


def stop_embedded_database(directory: Path | str | None = None) -> None:
    """This process is done with the embedded server of `directory` (all of them if None).

    The server stops unless another process still uses it (see the module docstring).
    """
    if directory is None:
        _stop_all()
        return
    server = _servers.pop(Path(directory).resolve(), None)
    if server is not None:
        server.stop()


# Creating the app's database and applying its migrations is the migrations package's work, and
# servers import nothing above settings: `mountaineer_db.requests.lifespan` registers it here.
Preparer = Callable[..., Coroutine[Any, Any, None]]
_preparers: list[Preparer] = []


def set_database_preparer(preparer: Preparer) -> None:
    """What `ensure_embedded_database` awaits once the server runs.

    Called as `preparer(config, create_database=..., apply_migrations=...)`.
    """
    _preparers[:] = [preparer]


async def _prepare(config: DatabaseConfig, *, create_database: bool, apply_migrations: bool) -> None:
    if not _preparers:
        raise RuntimeError("mountaineer_db: no database preparer registered (import mountaineer_db first)")
    await _preparers[0](config, create_database=create_database, apply_migrations=apply_migrations)


def ensure_embedded_database(
    config: ConfigT,
    *,
    directory: Path | str | None = None,
    apply_migrations: bool = True,
    create_database: bool = True,
) -> ConfigT:
    """Start or reuse the embedded PostgreSQL and return `config` pointed at it.

    Returns `config` itself unless DATABASE_EMBEDDED is true and it is not yet pointed at a
    server of this process. The database is POSTGRES_DB (default: PACKAGE, else "app"),
    created when missing (`create_database`; `createdb`/`dropdb` pass False). With
    `apply_migrations`, `<PACKAGE>/migrations/` (with its env.py) is applied, except to a
    database with the models' tables and no migration recorded (made by `createdb
    --create-tables` before there were migrations): that one gets a warning saying to adopt it
    with `migrate stamp`. A registered Mountaineer config is replaced by the returned copy, so
    `DatabaseDependencies` use it. Raises `ConfigurationError` with ENVIRONMENT=production, or
    when the config names another database.
    """
    if not config.DATABASE_EMBEDDED or points_at_embedded_server(config):
        return config
    if deploy_environment(config) == "production":
        raise ConfigurationError(
            "DATABASE_EMBEDDED=true is for local development only, and ENVIRONMENT is production. "
            "Unset DATABASE_EMBEDDED and set POSTGRES_HOST/POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB "
            "(or DATABASE_URL) for the production database."
        )
    if config.SQLALCHEMY_DATABASE_URI is not None:
        raise ConfigurationError(
            "DATABASE_EMBEDDED=true, but the config also names a database (SQLALCHEMY_DATABASE_URI, "
            "DATABASE_URL or POSTGRES_HOST). Use one or the other: unset DATABASE_EMBEDDED to use that database."
        )
    folder = Path(directory) if directory is not None else Path.cwd() / DEFAULT_DIRECTORY
    key = folder.resolve()
    server = _servers.get(key)
    if server is None:
        server = EmbeddedDatabase(key)
        server.start()
        _servers[key] = server
        _install_exit_hooks()  # a process that only reuses the server may be handed it later
    package = getattr(config, "PACKAGE", None)
    database = config.POSTGRES_DB or (package if isinstance(package, str) and package else "app")
    embedded = config.model_copy(update={"SQLALCHEMY_DATABASE_URI": server.url(database), "POSTGRES_DB": database})
    if create_database or apply_migrations:
        _run_coroutine(lambda: _prepare(embedded, create_database=create_database, apply_migrations=apply_migrations))
    _swap_registration(config, embedded)
    return embedded


def points_at_embedded_server(config: DatabaseConfig) -> bool:
    """True for a config `ensure_embedded_database` pointed at a server this process still uses."""
    url = config.SQLALCHEMY_DATABASE_URI
    return url is not None and any(
        url.host == "127.0.0.1" and url.port == server.port and url.username == "postgres"
        for server in _servers.values()
    )


def _swap_registration(old: DatabaseConfig, new: DatabaseConfig) -> None:
    """Replace `old` with `new` in Mountaineer's config registry when `old` is registered."""
    from mountaineer import config as mountaineer_config

    registered: object = mountaineer_config.APP_CONFIG
    if registered is old:
        mountaineer_config.unregister_config()  # type: ignore[no-untyped-call]
        mountaineer_config.register_config(new)  # type: ignore[arg-type]
