"""The embedded development database: start, persist, reuse, clean up, refuse production."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from mountaineer import ConfigBase
from mountaineer import config as mountaineer_config

from mountaineer_db import ConfigurationError, DatabaseConfig
from mountaineer_db.servers.embedded import ensure_embedded_database, stop_embedded_database

pytestmark = pytest.mark.slow


class EmbeddedAppConfig(DatabaseConfig, ConfigBase):
    PACKAGE: str | None = None
    POSTGRES_DB: str | None = "embedded_app"


@pytest.fixture
def folder() -> Iterator[Path]:
    """A project folder the unprivileged server user can reach (pytest's tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="mountaineer-db-embedded-"))
    os.chmod(root, 0o755)
    yield root / ".mountaineer_db"
    stop_embedded_database()
    shutil.rmtree(root, ignore_errors=True)


def _state(folder: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads((folder / "server.json").read_text())
    return state


def _server_pid(folder: Path) -> int:
    return int((folder / "data" / "postmaster.pid").read_text().splitlines()[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_gone(pid: int, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


async def _query(config: DatabaseConfig, *statements: str) -> list[asyncpg.Record]:
    url = config.database_url
    connection = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, password=url.password, database=url.database, ssl=False
    )
    try:
        rows: list[asyncpg.Record] = []
        for statement in statements:
            rows = await connection.fetch(statement)
        return rows
    finally:
        await connection.close()


async def test_data_survives_a_restart(folder: Path) -> None:
    """Start, write, stop, start again: same port and password, the row is still there."""
    config = ensure_embedded_database(DatabaseConfig(DATABASE_EMBEDDED=True, POSTGRES_DB="notes"), directory=folder)
    assert config.database_url.database == "notes"
    assert config.database_url.host == "127.0.0.1"
    await _query(config, "CREATE TABLE note (body text)", "INSERT INTO note VALUES ('kept')")
    first_pid = _server_pid(folder)

    stop_embedded_database(folder)
    assert _wait_gone(first_pid), "the server we started is still running after stop"

    again = ensure_embedded_database(DatabaseConfig(DATABASE_EMBEDDED=True, POSTGRES_DB="notes"), directory=folder)
    assert _server_pid(folder) != first_pid
    assert again.database_url.port == config.database_url.port
    assert [row["body"] for row in await _query(again, "SELECT body FROM note")] == ["kept"]


async def test_state_file_is_private_and_password_is_never_shown(folder: Path) -> None:
    config = ensure_embedded_database(DatabaseConfig(DATABASE_EMBEDDED=True, POSTGRES_DB="notes"), directory=folder)
    state = json.loads((folder / "server.json").read_text())
    assert stat.S_IMODE((folder / "server.json").stat().st_mode) == 0o600
    assert state["port"] == config.database_url.port
    assert state["password"] == config.database_url.password
    assert state["password"] not in str(config.database_url)
    assert state["password"] not in repr(config)


def test_off_unless_asked() -> None:
    """Without DATABASE_EMBEDDED the config comes back untouched (same object, no I/O)."""
    config = DatabaseConfig(POSTGRES_HOST="db.example", POSTGRES_DB="app")
    assert ensure_embedded_database(config, directory="/nonexistent/never-created") is config
    assert not Path("/nonexistent/never-created").exists()


def test_refuses_production(folder: Path) -> None:
    config = EmbeddedAppConfig(DATABASE_EMBEDDED=True, ENVIRONMENT="production")
    with pytest.raises(ConfigurationError) as caught:
        ensure_embedded_database(config, directory=folder)
    assert str(caught.value) == (
        "DATABASE_EMBEDDED=true is for local development only, and ENVIRONMENT is production. "
        "Unset DATABASE_EMBEDDED and set POSTGRES_HOST/POSTGRES_USER/POSTGRES_PASSWORD/POSTGRES_DB "
        "(or DATABASE_URL) for the production database."
    )
    assert not folder.exists(), "nothing may be started or written in production"


def test_refuses_production_from_the_environment(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain DatabaseConfig has no ENVIRONMENT field: the environment variable counts."""
    monkeypatch.setenv("ENVIRONMENT", "production")
    with pytest.raises(ConfigurationError, match="ENVIRONMENT is production"):
        ensure_embedded_database(DatabaseConfig(DATABASE_EMBEDDED=True), directory=folder)


def test_refuses_a_config_that_also_names_a_database(folder: Path) -> None:
    """Built from settings such a config is refused already (tests/test_config_embedded.py); made otherwise too."""
    with pytest.raises(ConfigurationError, match="Use one or the other"):
        DatabaseConfig(DATABASE_EMBEDDED=True, POSTGRES_HOST="db.example", POSTGRES_DB="app")
    config = DatabaseConfig(POSTGRES_HOST="db.example", POSTGRES_DB="app").model_copy(
        update={"DATABASE_EMBEDDED": True}
    )
    with pytest.raises(ConfigurationError, match="Use one or the other"):
        ensure_embedded_database(config, directory=folder)
    assert not folder.exists()


async def test_a_config_it_returned_comes_back_as_it_is(folder: Path) -> None:
    """Started once: passing the embedded config again neither refuses it nor prepares anything again."""
    config = ensure_embedded_database(DatabaseConfig(DATABASE_EMBEDDED=True, POSTGRES_DB="notes"), directory=folder)
    assert ensure_embedded_database(config, directory=folder) is config


async def test_admin_starts_the_development_database_itself(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An app's own `createdb` command: `await admin.createdb(create_tables=True)`, nothing else (#32 item 2).

    It says what it did: True the first time, as the database did not exist before (#32 item 8).
    """
    from mountaineer_db.migrations import admin

    monkeypatch.chdir(folder.parent)  # the server lives in .mountaineer_db/ of the working directory
    mountaineer_config.unregister_config()
    EmbeddedAppConfig(DATABASE_EMBEDDED=True, MIGRATIONS_METADATA="tests.sample_apps.migrapp.tables:metadata")
    assert await admin.createdb(create_tables=True) is True
    running = mountaineer_config.APP_CONFIG
    assert isinstance(running, EmbeddedAppConfig) and running.database_url.port == _state(folder)["port"]
    tables = await _query(running, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
    assert [row["tablename"] for row in tables] == ["author", "note"]
    assert await admin.createdb(create_tables=True) is False


async def test_without_the_lifespan_the_first_session_starts_the_development_database(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No `database_lifespan`: the request dependencies and `database_session()` start it (#32 item 3)."""
    from sqlalchemy import text

    from mountaineer_db import DatabaseDependencies, database_session

    monkeypatch.chdir(folder.parent)
    mountaineer_config.unregister_config()
    config = EmbeddedAppConfig(DATABASE_EMBEDDED=True)
    running = await DatabaseDependencies.get_database_config()
    assert running is not config and mountaineer_config.APP_CONFIG is running
    assert running.database_url.port == _state(folder)["port"]
    async with database_session() as session:
        name = (await session.exec(text("SELECT current_database()"))).scalar_one()  # type: ignore[call-overload]
    assert name == "embedded_app"
    assert await DatabaseDependencies.get_database_config() is running  # started once


async def test_registered_app_config_is_replaced(folder: Path) -> None:
    """The registered Mountaineer config is swapped for the embedded one, so dependencies use it."""
    config = EmbeddedAppConfig(DATABASE_EMBEDDED=True)
    embedded = ensure_embedded_database(config, directory=folder)
    assert mountaineer_config.APP_CONFIG is embedded
    assert isinstance(embedded, EmbeddedAppConfig)
    assert embedded.database_url.database == "embedded_app"
    assert (await _query(embedded, "SELECT current_database() AS name"))[0]["name"] == "embedded_app"


_CHILD = textwrap.dedent(
    """
    import sys
    from mountaineer_db import DatabaseConfig
    from mountaineer_db.servers.embedded import ensure_embedded_database
    settings = DatabaseConfig(DATABASE_EMBEDDED=True, POSTGRES_DB="notes")
    config = ensure_embedded_database(settings, directory=sys.argv[1])
    print(config.database_url.port, flush=True)
    sys.stdin.read()
    """
)


def _close(child: "subprocess.Popen[str]") -> None:
    for stream in (child.stdin, child.stdout):
        if stream is not None and not stream.closed:
            stream.close()


def _start_child(folder: Path) -> tuple["subprocess.Popen[str]", int]:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    port = int(child.stdout.readline())
    return child, port


@pytest.mark.parametrize("how", ["exit", "sigterm"])
def test_owner_stops_its_server_when_it_exits(folder: Path, how: str) -> None:
    child, _ = _start_child(folder)
    server = _server_pid(folder)
    assert _alive(server)
    if how == "exit":
        assert child.stdin is not None
        child.stdin.close()  # the child returns from main: atexit runs
    else:
        child.send_signal(signal.SIGTERM)
    child.wait(30)
    _close(child)
    assert _wait_gone(server), f"the embedded server outlived its owner ({how})"


def test_second_process_reuses_and_orphan_is_adopted(folder: Path) -> None:
    """Another process reuses a running server; one left by a killed owner is adopted and stopped."""
    child, port = _start_child(folder)
    server = _server_pid(folder)
    reused = ensure_embedded_database(DatabaseConfig(DATABASE_EMBEDDED=True, POSTGRES_DB="notes"), directory=folder)
    assert reused.database_url.port == port
    assert _server_pid(folder) == server, "a second server was started"
    stop_embedded_database(folder)
    assert _alive(server), "a process that did not start the server stopped it"

    child.kill()  # no atexit: the server is orphaned
    child.wait(30)
    _close(child)
    assert _alive(server)
    adopted = ensure_embedded_database(DatabaseConfig(DATABASE_EMBEDDED=True, POSTGRES_DB="notes"), directory=folder)
    assert adopted.database_url.port == port
    stop_embedded_database(folder)
    assert _wait_gone(server), "the adopted server was not stopped by its new owner"


async def test_runs_on_the_pgserver_wheel(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no system PostgreSQL, the binaries of the pip-installable `pgserver` wheel serve."""
    pgserver = pytest.importorskip("pgserver", reason="pgserver (the `embedded` extra) is not installed")
    bindir = Path(pgserver.__file__).parent / "pginstall" / "bin"
    monkeypatch.setenv("MOUNTAINEER_DB_PG_BINDIR", str(bindir))  # first place the binaries are looked for
    config = ensure_embedded_database(DatabaseConfig(DATABASE_EMBEDDED=True, POSTGRES_DB="notes"), directory=folder)
    (row,) = await _query(config, "SHOW server_version")
    assert Path(f"/proc/{_server_pid(folder)}/exe").resolve() == (bindir / "postgres").resolve()
    assert (folder / "data" / "PG_VERSION").read_text().strip() == row["server_version"].split(".")[0]


def test_the_last_process_using_the_server_stops_it(folder: Path) -> None:
    """A development server restarting its app starts the new process before the old one ends:
    the old owner leaving must not take the database away from the new one."""
    child, port = _start_child(folder)
    server = _server_pid(folder)
    reused = ensure_embedded_database(DatabaseConfig(DATABASE_EMBEDDED=True, POSTGRES_DB="notes"), directory=folder)
    assert reused.database_url.port == port

    assert child.stdin is not None
    child.stdin.close()  # the owner exits normally (atexit) while this process still uses the server
    child.wait(30)
    _close(child)
    time.sleep(0.5)
    assert _alive(server), "the owner stopped the server while another process still used it"
    state = json.loads((folder / "server.json").read_text())
    assert state["owner_pid"] == os.getpid()

    stop_embedded_database(folder)  # the last user leaves
    assert _wait_gone(server), "the last process using the server did not stop it"
    assert json.loads((folder / "server.json").read_text())["owner_pid"] == 0


async def test_database_lifespan_starts_the_embedded_database_and_leaves_it(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fastapi_args={"lifespan": database_lifespan}` is all an app needs for DATABASE_EMBEDDED=true."""
    from mountaineer_db import database_lifespan

    monkeypatch.chdir(folder.parent)  # the server lives in .mountaineer_db/ of the working directory
    mountaineer_config.unregister_config()
    config = EmbeddedAppConfig(DATABASE_EMBEDDED=True)
    async with database_lifespan(None):
        running = mountaineer_config.APP_CONFIG
        assert isinstance(running, EmbeddedAppConfig) and running is not config
        assert running.database_url.port == json.loads((folder / "server.json").read_text())["port"]
        assert (await _query(running, "SELECT current_database() AS name"))[0]["name"] == "embedded_app"
        server = _server_pid(folder)
    assert _wait_gone(server), "the lifespan left its embedded server running with no process using it"


def test_the_cli_runs_against_the_embedded_database(folder: Path) -> None:
    """`mountaineer-db createdb --create-tables` with DATABASE_EMBEDDED=true in .env, as a new app has it."""
    root = folder.parent
    package = root / "embcli_app"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "config.py").write_text(
        textwrap.dedent(
            """
            from mountaineer import ConfigBase
            from mountaineer_db import DatabaseConfig

            class AppConfig(DatabaseConfig, ConfigBase):
                PACKAGE: str | None = "embcli_app"
            """
        )
    )
    (package / "models.py").write_text(
        textwrap.dedent(
            """
            from sqlmodel import Field, SQLModel

            class Note(SQLModel, table=True):
                id: int | None = Field(default=None, primary_key=True)
                text: str
            """
        )
    )
    (root / ".env").write_text("DATABASE_EMBEDDED=true\n")
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("POSTGRES_", "DATABASE_", "SQLALCHEMY_"))
    }
    command = [sys.executable, "-m", "mountaineer_db.cli", "--config", "embcli_app.config:AppConfig"]
    created = subprocess.run(
        [*command, "createdb", "--create-tables"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith('Created database "embcli_app" on 127.0.0.1:'), created.stdout  # #32 item 8
    assert "Created the tables of the models." in created.stdout
    again = subprocess.run(
        [*command, "createdb", "--create-tables"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith('Already exists: database "embcli_app"'), again.stdout
    assert "The models' tables exist already: nothing to create" in again.stdout, again.stdout
    state = json.loads((folder / "server.json").read_text())
    assert state["owner_pid"] == 0, "the command left the embedded server running"

    # migrations.md "From createdb --create-tables to migrations": dropdb, then createdb (#25 item 3).
    dropped = subprocess.run(
        [*command, "dropdb", "--yes"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert dropped.returncode == 0 and dropped.stdout.startswith('Dropped database "embcli_app"'), dropped.stderr
    again = subprocess.run(
        [*command, "createdb", "--create-tables"], cwd=root, env=env, capture_output=True, text=True, timeout=120
    )
    assert again.stdout.startswith('Created database "embcli_app" on 127.0.0.1:'), again.stdout + again.stderr

    reused = ensure_embedded_database(
        DatabaseConfig(DATABASE_EMBEDDED=True, POSTGRES_DB="embcli_app"), directory=folder
    )
    import asyncio

    tables = asyncio.run(_query(reused, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"))
    assert [row["tablename"] for row in tables] == ["note"]
