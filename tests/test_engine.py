"""Engines: lazy, cached per loop and settings, the right pool, and clear connection failures."""

import asyncio
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool

from bench.wire import CountingProxy
from mountaineer_db import DatabaseConfig, DatabaseDependencies, DatabaseUnavailableError, database_session
from mountaineer_db.engines.engine import engines_on_this_loop
from tests.conftest import admin_execute

ConfigFactory = Callable[..., DatabaseConfig]


def test_import_does_no_io() -> None:
    """Importing the package and building a config opens no socket and starts no loop."""
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise AssertionError('socket opened at import')\n"
        "socket.socket.connect = refuse\n"
        "import mountaineer_db, mountaineer_db.requests.dependencies, mountaineer_db.requests.session\n"
        "from mountaineer_db import DatabaseConfig\n"
        "DatabaseConfig(POSTGRES_HOST='unreachable.invalid', POSTGRES_DB='x')\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


async def test_engine_is_lazy_cached_and_uses_null_pool_by_default(make_config: ConfigFactory) -> None:
    config = make_config()
    assert engines_on_this_loop() == []
    engine = await DatabaseDependencies.get_db(config=config)
    assert await DatabaseDependencies.get_db(config=config) is engine
    assert isinstance(engine.pool, NullPool)
    # A config with different connection settings gets its own engine.
    other = await DatabaseDependencies.get_db(config=make_config(DATABASE_STATEMENT_TIMEOUT=3))
    assert other is not engine
    assert len(engines_on_this_loop()) == 2


async def test_fixed_process_pool_uses_the_pool_settings(make_config: ConfigFactory) -> None:
    config = make_config(DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_POOL_SIZE=3, DATABASE_MAX_OVERFLOW=1)
    engine = await DatabaseDependencies.get_db(config=config)
    assert isinstance(engine.pool, AsyncAdaptedQueuePool)
    assert engine.pool.size() == 3
    assert engine.pool._max_overflow == 1
    async with database_session(config) as session:
        assert (await session.exec(text("SELECT 1"))).one()[0] == 1  # type: ignore[call-overload]
    assert engine.pool.checkedin() == 1, "the connection went back to the pool"


async def test_dispose_engines_forgets_every_engine(make_config: ConfigFactory) -> None:
    from mountaineer_db import dispose_engines

    engine = await DatabaseDependencies.get_db(config=make_config())
    await dispose_engines()
    assert engines_on_this_loop() == []
    assert await DatabaseDependencies.get_db(config=make_config()) is not engine


def _run_query_in_new_loop(config: DatabaseConfig) -> int:
    async def query() -> int:
        from mountaineer_db import dispose_engines

        try:
            async with database_session(config) as session:
                return int((await session.exec(text("SELECT 41 + 1"))).one()[0])  # type: ignore[call-overload]
        finally:
            await dispose_engines()  # a pooled engine's connections belong to this loop

    return asyncio.run(query())


def test_each_event_loop_gets_its_own_engine(pg_server: Any, test_database: str) -> None:
    """Separate event loops (as pytest-asyncio gives each test) never share an engine."""
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(test_database), DATABASE_POOL_TYPE="FIXED_PROCESS")
    assert _run_query_in_new_loop(config) == 42
    assert _run_query_in_new_loop(config) == 42  # would be "attached to a different loop" if shared


async def test_special_characters_in_user_and_password_connect(pg_server: Any, test_database: str) -> None:
    user, password = "odd user@:/%#", "pa ss@:/%#word"
    quoted = password.replace("'", "''")
    await admin_execute(pg_server, f'DROP ROLE IF EXISTS "{user}"', f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{quoted}'")
    config = DatabaseConfig(
        POSTGRES_HOST="127.0.0.1",
        POSTGRES_PORT=pg_server.port,
        POSTGRES_DB=test_database,
        POSTGRES_USER=user,
        POSTGRES_PASSWORD=password,
    )
    async with database_session(config) as session:
        assert (await session.exec(text("SELECT current_user"))).one()[0] == user  # type: ignore[call-overload]
    # The same, given as one percent-encoded URL.
    url_config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=config.database_url.render_as_string(hide_password=False))
    async with database_session(url_config) as session:
        assert (await session.exec(text("SELECT current_user"))).one()[0] == user  # type: ignore[call-overload]


@pytest.mark.parametrize("pool", ["NULL", "FIXED_PROCESS"])
async def test_the_engine_url_holds_no_password_yet_the_engine_logs_in(
    pg_server: Any, test_database: str, pool: str
) -> None:
    """`engine.url` is shown in reprs, logs and metrics: the password stays with the connector.

    (`URL.set(password=None)` looked like it removed it, but SQLAlchemy skips None there.)
    """
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(test_database), DATABASE_POOL_TYPE=pool)
    engine = await DatabaseDependencies.get_db(config=config)
    assert engine.url.password is None
    assert pg_server.password not in engine.url.render_as_string(hide_password=False)
    assert (engine.url.username, engine.url.host, engine.url.port, engine.url.database) == (
        pg_server.user,
        "127.0.0.1",
        pg_server.port,
        test_database,
    )
    async with database_session(config) as session:
        assert (await session.exec(text("SELECT current_user"))).one()[0] == pg_server.user  # type: ignore[call-overload]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts connections and never answers."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield int(listener.getsockname()[1])
    listener.close()


def _closed_port() -> int:
    from mountaineer_db.servers.cluster import free_port

    return free_port()  # reserved: no server of another test can come to listen there


async def _connect_error(config: DatabaseConfig) -> tuple[DatabaseUnavailableError, float]:
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as caught:
        async with database_session(config) as session:
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
    return caught.value, time.monotonic() - started


async def test_wrong_password_is_one_clear_error(pg_server: Any, test_database: str) -> None:
    wrong = "Wr0ng-pa55word-XYZ"
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(test_database, password=wrong))
    error, _ = await _connect_error(config)
    message = str(error)
    assert message.startswith(f'Could not connect to database "{test_database}" on 127.0.0.1:{pg_server.port}')
    assert 'password authentication failed for user "postgres"' in message
    assert "Check POSTGRES_USER and POSTGRES_PASSWORD" in message
    assert wrong not in message and wrong not in repr(error)
    assert error.__cause__ is None and error.__context__ is None, (
        "the driver error (with the password in its frames) is not chained"
    )
    assert error.status_code == 503


async def test_missing_database_is_one_clear_error(pg_server: Any) -> None:
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=pg_server.url("no_such_db"))
    error, _ = await _connect_error(config)
    assert 'database "no_such_db" does not exist' in str(error)
    assert "mountaineer-db createdb" in str(error)


async def test_refused_connection_is_one_clear_error(pg_server: Any) -> None:
    port = _closed_port()
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=pg_server.url("app").set(port=port))
    error, elapsed = await _connect_error(config)
    assert f"127.0.0.1:{port}" in str(error)
    assert str(error).endswith(
        ". Check the host and port in SQLALCHEMY_DATABASE_URI (or DATABASE_URL) and that the server accepts "
        "TCP connections."
    ), "a config given as a URL is answered in the URL's terms, not with POSTGRES_* it never set"
    assert elapsed < 5


async def test_refused_connection_names_the_settings_the_user_wrote(pg_server: Any) -> None:
    """The same failure, with the location given as parts or as MIGRATIONS_DATABASE_URI."""
    port = _closed_port()
    url = pg_server.url("app")
    parts = DatabaseConfig(POSTGRES_HOST="127.0.0.1", POSTGRES_PORT=port, POSTGRES_DB="app", POSTGRES_USER=url.username)
    error, _ = await _connect_error(parts)
    assert str(error).endswith(". Check POSTGRES_HOST and POSTGRES_PORT and that the server accepts TCP connections.")

    from mountaineer_db.engines.connections import Connector

    migrations = DatabaseConfig(SQLALCHEMY_DATABASE_URI=url, MIGRATIONS_DATABASE_URI=url.set(port=port))
    with pytest.raises(DatabaseUnavailableError) as caught:
        await Connector(migrations, migrations.migrations_url, statement_cache_size=0).connect()
    assert str(caught.value).endswith(
        ". Check the host and port in MIGRATIONS_DATABASE_URI and that the server accepts TCP connections."
    )


async def test_server_that_never_answers_fails_within_connect_timeout(pg_server: Any, silent_server: int) -> None:
    config = DatabaseConfig(
        SQLALCHEMY_DATABASE_URI=pg_server.url("app").set(port=silent_server), DATABASE_CONNECT_TIMEOUT=0.5
    )
    error, elapsed = await _connect_error(config)
    assert "no answer within DATABASE_CONNECT_TIMEOUT" in str(error)
    assert elapsed < 2.0


async def test_server_refusing_connections_is_one_clear_error(pg_server: Any, test_database: str) -> None:
    """A role that may not log in: PostgreSQL itself refuses the connection."""
    await admin_execute(pg_server, "DROP ROLE IF EXISTS nologin_role", "CREATE ROLE nologin_role NOLOGIN PASSWORD 'x'")
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(test_database, user="nologin_role", password="x"))
    error, _ = await _connect_error(config)
    assert 'role "nologin_role" is not permitted to log in' in str(error)


async def test_a_unix_socket_url_connects(pg_server: Any, test_database: str) -> None:
    """The form SQLAlchemy documents and Cloud SQL uses: no host, the socket directory as ?host=."""
    if not hasattr(pg_server, "socket_dir"):
        pytest.skip("MOUNTAINEER_DB_TEST_URL names a server whose socket directory is unknown")
    url = f"postgresql://postgres@:{pg_server.port}/{test_database}?host={pg_server.socket_dir}"
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=url)
    async with database_session(config) as session:
        address = (await session.exec(text("SELECT inet_client_addr()"))).one()[0]  # type: ignore[call-overload]
    assert address is None, "connected through the socket, not TCP"


async def test_get_db_without_arguments_uses_the_registered_config(make_config: ConfigFactory) -> None:
    from mountaineer import ConfigBase

    from mountaineer_db.exceptions import ConfigurationError

    with pytest.raises(ConfigurationError, match="No app config is registered"):
        await DatabaseDependencies.get_db()

    class AppConfig(DatabaseConfig, ConfigBase):
        pass

    config = AppConfig(SQLALCHEMY_DATABASE_URI=make_config().database_url)
    engine = await DatabaseDependencies.get_db()
    assert engine is await DatabaseDependencies.get_db(config=config)
    with pytest.raises(ConfigurationError, match=r"config= must be a DatabaseConfig, not str"):
        await DatabaseDependencies.get_db(config="postgresql://nope")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "setting"),
    [
        ("DATABASE_LOCK_TIMEOUT", "lock_timeout"),
        ("DATABASE_STATEMENT_TIMEOUT", "statement_timeout"),
        ("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "idle_in_transaction_session_timeout"),
    ],
)
async def test_configs_differing_only_in_a_timeout_each_get_it_on_the_server(
    make_config: ConfigFactory, field: str, setting: str
) -> None:
    """Engines are cached per settings: a cache key missing a setting would hand one its neighbour's."""
    shown = []
    for seconds in (1, 2):
        async with database_session(make_config(**{field: seconds})) as session:
            shown.append((await session.exec(text(f"SHOW {setting}"))).one()[0])  # type: ignore[call-overload]
    assert shown == ["1s", "2s"]


async def test_per_transaction_settings_never_outlive_the_transaction(make_config: ConfigFactory) -> None:
    """The timeouts are SET LOCAL: a pooled connection (or PgBouncer's server connection) carries
    nothing into whatever runs on it next outside our transactions."""
    config = make_config(
        DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_POOL_SIZE=1, DATABASE_MAX_OVERFLOW=0, DATABASE_LOCK_TIMEOUT=3
    )
    async with database_session(config) as session:
        assert (await session.exec(text("SHOW lock_timeout"))).one()[0] == "3s"  # type: ignore[call-overload]
        await session.commit()
    engine = await DatabaseDependencies.get_db(config=config)
    async with engine.connect() as connection:  # the same pooled connection, outside any BEGIN of ours
        driver = (await connection.get_raw_connection()).driver_connection
        assert await driver.fetchval("SHOW lock_timeout") == "0"


async def test_database_echo_logs_every_statement_and_is_off_by_default(
    make_config: ConfigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Logging left at its defaults (WARNING): only DATABASE_ECHO makes SQLAlchemy log the statements."""

    def echoed() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name.startswith("sqlalchemy.engine")]

    for echo in (False, True):
        async with database_session(make_config(DATABASE_ECHO=echo)) as session:
            await session.exec(text("SELECT 'echo probe' AS probe"))  # type: ignore[call-overload]
        if echo:
            assert "SELECT 'echo probe' AS probe" in echoed()
        else:
            assert echoed() == []


@pytest.mark.parametrize("recycle", [None, 0.01])
async def test_fixed_process_replaces_connections_older_than_the_pool_recycle(
    make_config: ConfigFactory, recycle: float | None
) -> None:
    config = make_config(
        DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_POOL_SIZE=1, DATABASE_MAX_OVERFLOW=0, DATABASE_POOL_RECYCLE=recycle
    )
    backends = []
    for _ in range(2):
        async with database_session(config) as session:
            backends.append((await session.exec(text("SELECT pg_backend_pid()"))).one()[0])  # type: ignore[call-overload]
        returned = time.monotonic()
        while time.monotonic() - returned < 0.05:  # the pooled connection is now older than the recycle age
            await asyncio.sleep(0.01)
    assert (backends[0] != backends[1]) is (recycle is not None)


@pytest.mark.parametrize("pre_ping", [False, True])
async def test_fixed_process_pings_a_pooled_connection_at_checkout_with_pool_pre_ping(
    pg_server: Any, test_database: str, pre_ping: bool
) -> None:
    """DATABASE_POOL_PRE_PING reaches the pool: a reused connection is pinged (SQLAlchemy sends `;`) first."""
    async with CountingProxy("127.0.0.1", pg_server.port) as proxy:
        url = pg_server.url(test_database).set(port=proxy.port)
        config = DatabaseConfig(
            SQLALCHEMY_DATABASE_URI=url,
            DATABASE_POOL_TYPE="FIXED_PROCESS",
            DATABASE_POOL_SIZE=1,
            DATABASE_MAX_OVERFLOW=0,
            DATABASE_POOL_PRE_PING=pre_ping,
            DATABASE_STATEMENT_CACHE_SIZE=0,  # every statement parsed: each ping shows on the wire
        )
        for _ in range(3):
            async with database_session(config) as session:
                await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        [connection] = proxy.connections
    transactions: list[set[str]] = []
    for statement in connection.sql:
        if statement.startswith("BEGIN"):
            transactions.append(set())
        elif statement not in ("COMMIT", "ROLLBACK"):
            transactions[-1].add(statement)
    pings = transactions.count({";"})
    assert pings == (2 if pre_ping else 0), "one ping per reuse of the pooled connection"
