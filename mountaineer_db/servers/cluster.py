"""Local PostgreSQL servers: for the test kit and the embedded dev database (PgBouncer: `pgbouncer`).

`PostgresCluster` initialises a data directory, starts `postgres` on a free loopback port
and stops it again, by its own PID only. PostgreSQL refuses to run as root, so when we are
root the server runs as an unprivileged user (`nobody` unless told otherwise) that owns the
data directory. Binaries are found via `MOUNTAINEER_DB_PG_BINDIR`, `pg_config --bindir`,
`PATH`, `/usr/lib/postgresql/*/bin`, then the pip-installable `pgserver` wheel.

```python
with PostgresCluster.temporary() as pg:
    print(pg.url("postgres"))
```

Secrets on disk: the superuser's password reaches `initdb` through a file that never has a
name in any folder (`--pwfile=/dev/fd/N`: an anonymous file, mode 0600, handed to initdb
as an open descriptor), so even a process killed with SIGKILL leaves no password behind.
The server's log is created 0600, and `temporary()` folders are 0700.
"""

import contextlib
import glob
import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from mountaineer_db.exceptions import ResourceNotFoundError
from mountaineer_db.servers._processes import (
    ClusterError,
    as_user,
    chown_tree,
    free_port,
    open_private_log,
    private_directory,
    run_user,
    stop_process,
)

__all__ = ["ClusterError", "ExternalServer", "PostgresCluster", "find_postgres_bindir", "free_port"]

logger = logging.getLogger("mountaineer_db")



def _has_server(bindir: Path) -> bool:
    return (bindir / "initdb").exists() and (bindir / "postgres").exists()


def find_postgres_bindir() -> Path:
    """The directory holding `initdb` and `postgres`; raises `ResourceNotFoundError` if none."""
    candidates: list[Path] = []
    if os.environ.get("MOUNTAINEER_DB_PG_BINDIR"):
        candidates.append(Path(os.environ["MOUNTAINEER_DB_PG_BINDIR"]))
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=False)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name or 0))
    candidates.extend(Path(p) for p in reversed(versions))
    # The pgserver wheel ships PostgreSQL binaries; locate them without importing it
    # (its import has side effects).
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    for candidate in candidates:
        if _has_server(candidate):
            return candidate
    # pgserver publishes wheels up to Python 3.12 only: suggest it where pip can install it.
    wheel = " or `pip install pgserver`" if sys.version_info < (3, 13) else ""
    raise ResourceNotFoundError(
        "No PostgreSQL server binaries found (looked at MOUNTAINEER_DB_PG_BINDIR, pg_config --bindir, "
        f"PATH and /usr/lib/postgresql/*/bin). Install PostgreSQL (apt-get install postgresql){wheel}, "
        "or set MOUNTAINEER_DB_PG_BINDIR to the directory holding initdb and postgres."
    )


class PostgresCluster:
    """One PostgreSQL server we started, on 127.0.0.1, with a superuser `postgres`."""

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        password: str | None = None,
        settings: dict[str, str] | None = None,
        bindir: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.user = "postgres"
        # Distinctive, with characters that need URL encoding, so leaks and encoding bugs show.
        self.password = password or f"mdb-secret-{secrets.token_hex(6)}@:/%# x"
        if any(character in self.password for character in "\n\r\x00"):
            raise ClusterError(
                "The server's password cannot hold a line break or a NUL character: initdb reads one line of "
                "its password file, and PostgreSQL takes no NUL. Choose another password (it is not shown)."
            )
        self.settings = {
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",
            "shared_buffers": "32MB",
            **(settings or {}),
        }
        self.bindir = bindir or find_postgres_bindir()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._run_as = run_user()

    def __repr__(self) -> str:
        return f"PostgresCluster(127.0.0.1:{self.port}, data_dir={str(self.data_dir)!r})"

    @classmethod
    @contextlib.contextmanager
    def temporary(cls, **kwargs: Any) -> Iterator["PostgresCluster"]:
        """A throwaway cluster in a temporary directory, removed with its data on exit."""
        root = Path(tempfile.mkdtemp(prefix="mountaineer-db-pg-"))
        # 0700, and the server's own when we are root (it must reach its data directory).
        private_directory(root, run_user())
        cluster = cls(root / "data", **kwargs)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()
            shutil.rmtree(root, ignore_errors=True)

    # -- lifecycle --------------------------------------------------------------------
    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> None:
        """Create the data directory (initdb); SCRAM passwords over TCP, trust on the socket."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        if self._run_as is not None:
            server = pwd.getpwnam(self._run_as)
            for ancestor in self.data_dir.resolve().parents:
                status = os.stat(ancestor)
                if not (status.st_mode & 0o001 or (status.st_uid == server.pw_uid and status.st_mode & 0o100)):
                    raise ClusterError(
                        f"The server runs as {self._run_as!r}, which cannot enter {ancestor} (mode "
                        f"{oct(status.st_mode & 0o777)}). Keep the data directory under a folder that user "
                        "can enter: one it owns, or a world-searchable one (`chmod o+x` that folder)."
                    )
        chown_tree(self.data_dir, self._run_as)
        with self._password_file() as descriptor:
            self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                f"--pwfile=/dev/fd/{descriptor}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                pass_fds=(descriptor,),
            )

    @contextlib.contextmanager
    def _password_file(self) -> Iterator[int]:
        """A descriptor of an anonymous file holding the password, for `initdb --pwfile=/dev/fd/N`.

        The file is created 0600 and has no name in any folder (Linux's O_TMPFILE; elsewhere it
        is removed right after it is created), so nothing is left behind even when this process
        is killed; it belongs to the server user when we are root, which initdb runs as.
        """
        with tempfile.TemporaryFile(dir=self.data_dir.parent) as handle:
            if self._run_as is not None:
                server = pwd.getpwnam(self._run_as)
                os.fchown(handle.fileno(), server.pw_uid, server.pw_gid)
            handle.write(self.password.encode() + b"\n")
            handle.flush()
            yield handle.fileno()

    def _run(self, *argv: str, pass_fds: tuple[int, ...] = ()) -> None:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            pass_fds=pass_fds,
            **as_user(self._run_as),
        )
        if result.returncode != 0:
            raise ClusterError(f"{Path(argv[0]).name} failed: {result.stderr.strip() or result.stdout.strip()}")

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (initialising the data directory first if needed) and wait until ready."""
        if self.process is not None and self.process.poll() is None:
            return
        if not self.initialized:
            self.init()
        argv = [
            str(self.bindir / "postgres"),
            "-D",
            str(self.data_dir),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.data_dir}",
        ]
        for name, value in self.settings.items():
            argv += ["-c", f"{name}={value}"]
        log = open_private_log(self.log_path)  # statements and user names end up there: 0600
        try:
            self.process = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                **as_user(self._run_as),
            )
        finally:
            os.close(log)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the server accepts connections (postmaster.pid says "ready")."""
        deadline = time.monotonic() + timeout
        pidfile = self.data_dir / "postmaster.pid"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ClusterError(f"PostgreSQL exited during start-up; see {self.log_path}:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                lines = pidfile.read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() in ("ready", "standby"):  # a hot standby says "standby"
                    return
            time.sleep(0.02)
        raise ClusterError(f"PostgreSQL did not become ready within {timeout}s; see {self.log_path}")

    def stop(self, mode: str = "fast", timeout: float = 30.0) -> None:
        """Stop our server: mode "smart", "fast" (default) or "immediate", as in pg_ctl."""
        if self.process is None:
            return
        sig = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode]
        stop_process(self.process, sig, timeout)
        self.process = None

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    # -- addresses --------------------------------------------------------------------
    @property
    def socket_dir(self) -> Path:
        """The directory of the server's Unix socket (local connections are trusted)."""
        return self.data_dir

    def url(self, database: str = "postgres", *, user: str | None = None, password: str | None = None) -> URL:
        """A SQLAlchemy URL (asyncpg driver) for `database` on this server."""
        return URL.create(
            "postgresql+asyncpg",
            username=user or self.user,
            password=self.password if password is None else password,
            host="127.0.0.1",
            port=self.port,
            database=database,
        )

    def __enter__(self) -> "PostgresCluster":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ExternalServer:
    """A PostgreSQL server we did not start, given by a superuser URL (same interface as `PostgresCluster`)."""

    def __init__(self, url: URL | str) -> None:
        from sqlalchemy.engine import make_url

        parsed = make_url(url) if isinstance(url, str) else url
        self.host = parsed.host or "127.0.0.1"
        self.port = parsed.port or 5432
        self.user = parsed.username or "postgres"
        self.password = parsed.password or ""
        self.process = None

    def __repr__(self) -> str:
        return f"ExternalServer({self.host}:{self.port})"

    def url(self, database: str = "postgres", *, user: str | None = None, password: str | None = None) -> URL:
        return URL.create(
            "postgresql+asyncpg",
            username=user or self.user,
            password=self.password if password is None else password,
            host=self.host,
            port=self.port,
            database=database,
        )
