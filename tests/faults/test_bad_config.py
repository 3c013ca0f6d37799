"""Scenario 7: bad configuration and bad input.

Wrong password, wrong port, unresolvable host, missing database, a server that accepts TCP
but never answers: each a clear error within the connect timeout (5 s by default) naming
host and database, never the password. Invalid settings fail when the config is built,
naming the field. Malformed or oversized action payloads are refused without touching the
database.
"""

import asyncio
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from mountaineer_db import DatabaseConfig, DatabaseConfigError, DatabaseUnavailableError, database_session
from mountaineer_db.servers.cluster import PostgresCluster, free_port

from .app import INSERT_PATH
from .helpers import DATABASE, app_client, assert_no_leaks, faults_config, table_ids

pytestmark = pytest.mark.faults

DEFAULT_CONNECT_TIMEOUT = 5.0
SLACK = 1.0


def assert_secret_free(text_: str, password: str) -> None:
    for form in {
        password,
        urllib.parse.quote(password),
        urllib.parse.quote_plus(password),
        urllib.parse.quote(password, safe=""),
    }:
        assert form not in text_, "the password leaked into a message"


async def expect_unavailable(config: DatabaseConfig, password: str, *, within: float) -> DatabaseUnavailableError:
    """Run a statement; it must fail with DatabaseUnavailableError within `within` seconds."""
    start = time.monotonic()
    with pytest.raises(DatabaseUnavailableError) as caught:
        async with database_session(config) as session:
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
    elapsed = time.monotonic() - start
    assert elapsed < within, f"took {elapsed:.1f}s, more than {within}s"
    error = caught.value
    assert_secret_free(str(error) + repr(error), password)
    return error


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A port that accepts TCP connections and never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_wrong_password(cluster: PostgresCluster) -> None:
    wrong = "not-the-password-@:/%# zz"
    config = faults_config(cluster.url(DATABASE, password=wrong))
    error = await expect_unavailable(config, wrong, within=DEFAULT_CONNECT_TIMEOUT)
    message = str(error)
    assert f'database "{DATABASE}" on 127.0.0.1:{cluster.port} as user "postgres"' in message
    assert "password authentication failed" in message and "POSTGRES_PASSWORD" in message
    assert_secret_free(message, cluster.password)


async def test_wrong_port(cluster: PostgresCluster) -> None:
    port = free_port()
    config = faults_config(cluster.url(DATABASE).set(port=port))
    error = await expect_unavailable(config, cluster.password, within=DEFAULT_CONNECT_TIMEOUT)
    assert f'database "{DATABASE}" on 127.0.0.1:{port}' in str(error)
    assert "Check the host and port in SQLALCHEMY_DATABASE_URI (or DATABASE_URL)" in str(error)


async def test_unresolvable_host(cluster: PostgresCluster) -> None:
    config = faults_config(cluster.url(DATABASE).set(host="no-such-host.invalid"))
    error = await expect_unavailable(config, cluster.password, within=DEFAULT_CONNECT_TIMEOUT + SLACK)
    assert f'database "{DATABASE}" on no-such-host.invalid:{cluster.port}' in str(error)
    assert "Check the host and port in SQLALCHEMY_DATABASE_URI (or DATABASE_URL)" in str(error)


async def test_missing_database(cluster: PostgresCluster) -> None:
    config = faults_config(cluster.url("no_such_db"))
    error = await expect_unavailable(config, cluster.password, within=DEFAULT_CONNECT_TIMEOUT)
    assert 'database "no_such_db" on 127.0.0.1' in str(error)
    assert "does not exist" in str(error) and "createdb" in str(error)


async def test_server_that_never_answers(cluster: PostgresCluster, silent_server: int) -> None:
    """Accepts TCP, never replies: fails at the default 5 s connect timeout (asyncpg alone: 60 s)."""
    config = faults_config(cluster.url(DATABASE).set(port=silent_server))
    assert config.DATABASE_CONNECT_TIMEOUT == DEFAULT_CONNECT_TIMEOUT
    error = await expect_unavailable(config, cluster.password, within=DEFAULT_CONNECT_TIMEOUT + SLACK)
    assert f'database "{DATABASE}" on 127.0.0.1:{silent_server}' in str(error)
    assert "DATABASE_CONNECT_TIMEOUT" in str(error)


async def test_unavailable_action_answers_503(cluster: PostgresCluster) -> None:
    """Through the app: a clear 503 with Retry-After, and nothing about the target or the password."""
    wrong = "another-wrong-@:/%# pw"
    config = faults_config(cluster.url(DATABASE, password=wrong))
    async with app_client(config) as client:
        response = await client.post(INSERT_PATH, json={"id": 1})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json() == {"detail": "The database is unavailable. Try again shortly."}
    assert_secret_free(response.text, wrong)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("DATABASE_CONNECT_TIMEOUT", -1),
        ("DATABASE_COMMAND_TIMEOUT", 0),
        ("DATABASE_STATEMENT_TIMEOUT", "soon"),
        ("DATABASE_POOL_TYPE", "BOGUS"),
        ("POSTGRES_PORT", 70000),
        ("POSTGRES_SSLMODE", "sometimes"),
    ],
)
def test_invalid_settings(cluster: PostgresCluster, field: str, value: Any) -> None:
    """Refused when the config is built, naming the field, never echoing the URL's password."""
    url = cluster.url(DATABASE).render_as_string(hide_password=False)
    with pytest.raises(DatabaseConfigError) as caught:
        DatabaseConfig(SQLALCHEMY_DATABASE_URI=url, **{field: value})
    message = str(caught.value)
    assert field in message
    assert_secret_free(message + repr(caught.value), cluster.password)


def test_invalid_url(cluster: PostgresCluster) -> None:
    url = cluster.url(DATABASE).render_as_string(hide_password=False).replace("postgresql+asyncpg", "mysql")
    with pytest.raises(DatabaseConfigError, match="SQLALCHEMY_DATABASE_URI") as caught:
        DatabaseConfig(SQLALCHEMY_DATABASE_URI=url)
    assert_secret_free(str(caught.value), cluster.password)


MALFORMED = {
    "wrong-type": b'{"id": "seven"}',
    "array": b"[]",
    "bad-field": b'{"id": 1, "sleep_before_commit": "x"}',
    "oversized": b'{"id": 1, "sleep_before_commit": "' + b"x" * 5_000_000 + b'"}',
    "huge-int": b'{"id": ' + b"9" * 4000 + b"}",
}
UNDECODABLE = {"broken-json": b"{not json", "oversized-truncated": b'{"id": 1, "pad": "' + b"x" * 5_000_000}


async def _post_raw(cluster: PostgresCluster, body: bytes) -> httpx.Response:
    async with app_client(faults_config(cluster.url(DATABASE))) as client:
        start = time.monotonic()
        response = await client.post(INSERT_PATH, content=body, headers={"content-type": "application/json"})
        assert time.monotonic() - start < DEFAULT_CONNECT_TIMEOUT
    assert await table_ids(cluster) == set()
    await assert_no_leaks(cluster)
    return response


@pytest.mark.parametrize("body", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_payloads(cluster: PostgresCluster, body: bytes, caplog: pytest.LogCaptureFixture) -> None:
    """A clear 422, fast, without opening a database connection or writing anything.

    Routine bad input is not an error of ours, and nothing reached the database: no line of
    ours at INFO or above (there was no transaction to roll back).
    """
    caplog.set_level(logging.DEBUG, logger="mountaineer_db")
    response = await _post_raw(cluster, body)
    assert response.status_code == 422, (response.status_code, response.text[:300])
    ours = [record for record in caplog.records if record.name == "mountaineer_db"]
    assert [record.getMessage() for record in ours if record.levelno >= logging.INFO] == []


@pytest.mark.parametrize("body", list(UNDECODABLE.values()), ids=list(UNDECODABLE))
async def test_undecodable_payloads_touch_no_database(cluster: PostgresCluster, body: bytes) -> None:
    """Bodies that are not JSON at all: refused before any database work (fast, nothing written)."""
    response = await _post_raw(cluster, body)
    assert response.status_code in (422, 500)


@pytest.mark.xfail(
    strict=True,
    reason="Mountaineer 0.20 upstream bug: its RequestValidationError handler cannot represent a JSON "
    "decode error (an int in the error location) and answers 500 instead of 422",
)
async def test_undecodable_payload_is_a_4xx(cluster: PostgresCluster) -> None:
    response = await _post_raw(cluster, UNDECODABLE["broken-json"])
    assert 400 <= response.status_code < 500
