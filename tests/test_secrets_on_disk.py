"""Secrets on disk: no other local user can read a password, not even for an instant, and none is left behind.

The servers the kit and the embedded database start write a password for initdb, PgBouncer's
user list, the embedded database's `server.json` and the servers' logs. Observed for real:
initdb is run through a wrapper that looks at its password file while it runs; the other
files' creation is seen through Python's audit hook (`open` events) under umask 0.
"""

import contextlib
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mountaineer_db.servers._processes import run_user, write_private
from mountaineer_db.servers.cluster import ClusterError, PostgresCluster, find_postgres_bindir
from mountaineer_db.servers.embedded import EmbeddedDatabase
from mountaineer_db.servers.pgbouncer import PgBouncer
from tests.conftest import require_pgbouncer

pytestmark = pytest.mark.slow

PASSWORD = "mdb-disk-Secret-7a91 \"quoted\" '@:/%#"


def _server_uid() -> int:
    user = run_user()
    return pwd.getpwnam(user).pw_uid if user is not None else os.geteuid()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder the server user can reach and write (pytest's tmp_path is 0700 and root's)."""
    root = Path(tempfile.mkdtemp(prefix="mountaineer-db-disk-"))
    os.chmod(root, 0o777)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _watching_bindir(shared: Path, *, then: str) -> Path:
    """A bindir whose `initdb` records what it sees of its password file, then runs `then`."""
    real = find_postgres_bindir()
    bindir = shared / "bin"
    bindir.mkdir()
    (bindir / "postgres").symlink_to(real / "postgres")
    script = bindir / "initdb"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            out={shared}/seen
            next=""
            for arg in "$@"; do
              if [ -n "$next" ]; then pwfile="$arg"; next=""; fi
              case "$arg" in --pwfile=*) pwfile="${{arg#--pwfile=}}";; --pwfile) next=1;; esac
            done
            {{
              echo "pwfile $pwfile"
              stat -L -c 'file %a %u %h' "$pwfile"
              echo "pid $$"
            }} > "$out.tmp"
            mv "$out.tmp" "$out"
            {then}
            """
        )
    )
    script.chmod(0o755)
    bindir.chmod(0o755)
    return bindir


def _files_holding(root: Path, secret: str) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes():
                found.append(path)
    return found


def test_initdb_reads_the_password_from_a_private_file_that_is_in_no_folder(shared_dir: Path) -> None:
    """The file was written 0644 into a 0755 folder while initdb ran; a second local user could read it."""
    bindir = _watching_bindir(shared_dir, then=f'exec {find_postgres_bindir()}/initdb "$@"')
    root = shared_dir / "cluster"
    root.mkdir()
    root.chmod(0o755)
    cluster = PostgresCluster(root / "data", password=PASSWORD, bindir=bindir)
    try:
        cluster.start()
        seen = dict(line.split(" ", 1) for line in (shared_dir / "seen").read_text().splitlines())
        assert seen["pwfile"].startswith("/dev/fd/"), "handed over as an open descriptor, not a path"
        mode, owner, links = seen["file"].split()
        assert (mode, int(owner), links) == ("600", _server_uid(), "0"), "0600, the server's, linked in no folder"
        assert _files_holding(root, PASSWORD) == []
    finally:
        cluster.stop()


def test_a_start_killed_during_initdb_leaves_no_password_behind(shared_dir: Path) -> None:
    """It was removed in a `finally`, which SIGKILL skips: the file stayed, readable."""
    bindir = _watching_bindir(shared_dir, then="exec sleep 600")  # initdb hangs until we kill it
    root = shared_dir / "cluster"
    root.mkdir()
    root.chmod(0o755)
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from mountaineer_db.servers.cluster import PostgresCluster; "
            "PostgresCluster(Path(sys.argv[1]), password=sys.argv[2], bindir=Path(sys.argv[3])).start()",
            str(root / "data"),
            PASSWORD,
            str(bindir),
        ],
        cwd=Path(__file__).parent.parent,
    )
    hanging: int | None = None
    try:
        seen = shared_dir / "seen"
        while not seen.exists():  # initdb is running (the wrapper wrote what it saw)
            assert starter.poll() is None, "the start failed before initdb ran"
            with contextlib.suppress(subprocess.TimeoutExpired):
                starter.wait(0.05)
        hanging = int(dict(line.split(" ", 1) for line in seen.read_text().splitlines())["pid"])
        starter.send_signal(signal.SIGKILL)
        starter.wait(10)
        assert _files_holding(root, PASSWORD) == []
        assert sorted(path.name for path in root.iterdir()) == ["data"]
    finally:
        if starter.poll() is None:
            starter.kill()
            starter.wait(10)
        if hanging is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(hanging, signal.SIGKILL)


class _Creations:
    """Files created while it listens (Python's audit `open` events with O_CREAT), and chmod calls."""

    def __init__(self) -> None:
        self.listening = False
        self.opened: list[tuple[str, Any, int]] = []
        self.chmods: list[str] = []

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if not self.listening:
            return
        path = args[0] if args and isinstance(args[0], str | bytes | os.PathLike) else None  # not a descriptor
        if path is None:
            return
        if event == "open" and len(args) == 3 and isinstance(args[2], int) and args[2] & os.O_CREAT:
            self.opened.append((os.fsdecode(path), args[1], args[2]))
        elif event == "os.chmod":
            self.chmods.append(os.fsdecode(path))

    def created(self, path: Path) -> list[tuple[Any, int]]:
        """How `path` (or its temporary file) was created: (builtin open's mode or None for os.open, flags)."""
        names = {str(path), str(path.with_name(f".{path.name}.tmp"))}
        return [(mode, flags) for name, mode, flags in self.opened if name in names]


_creations = _Creations()
sys.addaudithook(_creations)  # audit hooks cannot be removed: it listens only inside `_listening`


@contextlib.contextmanager
def _listening_with_umask_0() -> Iterator[_Creations]:
    previous = os.umask(0)
    _creations.opened.clear()
    _creations.chmods.clear()
    _creations.listening = True
    try:
        yield _creations
    finally:
        _creations.listening = False
        os.umask(previous)


def _assert_private_from_the_first_byte(creations: _Creations, path: Path, *, append: bool = False) -> None:
    ways = creations.created(path)
    assert ways, f"{path.name} was not created here"
    for mode, flags in ways:
        # os.open (mode None) with the permission bits given at creation: exclusive, or appending to a log.
        assert mode is None and flags & (os.O_APPEND if append else os.O_EXCL), (path.name, mode, oct(flags))
    assert str(path) not in creations.chmods, f"{path.name} was made private after it was created"
    assert _mode(path) == 0o600, path.name
    assert not path.with_name(f".{path.name}.tmp").exists()


def test_the_embedded_database_keeps_its_password_and_log_private(shared_dir: Path) -> None:
    folder = shared_dir / "project" / ".mountaineer_db"
    folder.parent.mkdir()
    folder.parent.chmod(0o755)
    server = EmbeddedDatabase(folder)
    with _listening_with_umask_0() as creations:
        server.start()
    try:
        assert _mode(folder) == 0o700
        _assert_private_from_the_first_byte(creations, folder / "server.json")
        _assert_private_from_the_first_byte(creations, folder / "data.log", append=True)
        assert _files_holding(folder, server.password) == [folder / "server.json"]
    finally:
        server.stop()


@pytest.mark.pgbouncer
def test_pgbouncer_files_are_private_from_the_first_byte(pg_server: Any, shared_dir: Path) -> None:
    require_pgbouncer()
    work_dir = shared_dir / "bouncer"
    bouncer = PgBouncer("127.0.0.1", pg_server.port, {"postgres": PASSWORD}, work_dir=work_dir)
    with _listening_with_umask_0() as creations, bouncer:
        pass
    assert _mode(work_dir) == 0o700
    _assert_private_from_the_first_byte(creations, work_dir / "userlist.txt")
    _assert_private_from_the_first_byte(creations, work_dir / "pgbouncer.ini")


@pytest.mark.pgbouncer
async def test_a_password_with_quotes_logs_in_through_pgbouncer(shared_dir: Path) -> None:
    """Double quotes are doubled in the user list; the login works (a server of its own: its password has them)."""
    require_pgbouncer()
    root = shared_dir / "cluster"
    root.mkdir()
    root.chmod(0o755)
    with (
        PostgresCluster(root / "data", password=PASSWORD) as cluster,
        PgBouncer("127.0.0.1", cluster.port, {"postgres": PASSWORD}, work_dir=shared_dir / "bouncer") as bouncer,
    ):
        url = bouncer.url("postgres", user="postgres", password=PASSWORD)
        connection = await asyncpg.connect(
            host=url.host, port=url.port, user=url.username, password=PASSWORD, database="postgres", ssl=False
        )
        try:
            assert await connection.fetchval("SELECT current_user") == "postgres"
        finally:
            await connection.close()


@pytest.mark.parametrize("password", ["line\nbreak", "carriage\rreturn", "nul\x00byte"], ids=["lf", "cr", "nul"])
def test_a_password_the_files_cannot_hold_is_a_clear_error(shared_dir: Path, password: str) -> None:
    """A newline used to split PgBouncer's user list (and initdb reads one line of its password file)."""
    with pytest.raises(ClusterError) as bouncer:
        bouncer_dir = shared_dir / "bouncer"
        PgBouncer("127.0.0.1", 5432, {"app": password}, work_dir=bouncer_dir, binary=Path("/bin/true")).start()
    assert str(bouncer.value) == (
        "The password of PgBouncer user 'app' holds a line break or a NUL character, which PgBouncer's auth_file "
        "cannot hold (one user per line). Choose another password."
    )
    assert not (shared_dir / "bouncer").exists(), "checked before anything is written"
    with pytest.raises(ClusterError, match="cannot hold a line break or a NUL character") as cluster:
        PostgresCluster(shared_dir / "data", password=password, bindir=Path("/nonexistent"))
    assert password not in str(cluster.value)


def test_write_private_replaces_a_file_whole_and_clears_a_killed_writers_leftover(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    target.chmod(0o644)
    (tmp_path / ".state.json.tmp").write_text("left by a writer that was killed")
    with _listening_with_umask_0() as creations:
        write_private(target, "new")
    assert target.read_text() == "new"
    _assert_private_from_the_first_byte(creations, target)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["state.json"]
