"""The example app's readiness probe: `GET /healthz/ready` over `check_database()`, with its migrations."""

import logging
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from mountaineer_db import DatabaseStatus, check_database, database_session, migrations
from mountaineer_db.servers.cluster import free_port
from mountaineer_db.testing import Server, ThrowawayDatabase, throwaway_database
from tests.example_app._require import require_example_app

require_example_app()

from todo_app.app import build_app  # noqa: E402 - after the installed check
from todo_app.config import AppConfig  # noqa: E402

FIRST, HEAD = "1e199de9ddcb", "9a1f3c844ac6"


async def _ready(config: AppConfig) -> httpx.Response:
    app = build_app(config)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://testserver") as client:
        return await client.get("/healthz/ready")


async def test_a_migrated_database_is_ready(mdb_database: ThrowawayDatabase) -> None:
    config = mdb_database.config(AppConfig)
    response = await _ready(config)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert {key: body[key] for key in ("ok", "status", "database_revisions", "head_revisions", "error")} == {
        "ok": True,
        "status": "ok",
        "database_revisions": [HEAD],
        "head_revisions": [HEAD],
        "error": None,
    }
    assert 0 < body["round_trip_ms"] <= body["total_ms"]
    assert "database" not in body, "an unauthenticated route names no host, port or database"
    assert str(config.database_url.port) not in response.text


async def test_an_unreachable_database_is_not_ready_and_says_nothing_about_where_it_is(
    mdb_database: ThrowawayDatabase,
) -> None:
    nowhere = mdb_database.url.set(port=free_port())  # nothing listens there: refused at once
    config = mdb_database.config(AppConfig, SQLALCHEMY_DATABASE_URI=nowhere, DATABASE_CONNECT_TIMEOUT=1)
    response = await _ready(config)
    assert response.status_code == 503
    assert response.json()["status"] == "unreachable"
    assert response.json()["error"] == "The database cannot be reached."
    for detail in ("127.0.0.1", str(config.database_url.port), config.database_url.database, "refused"):
        assert detail not in response.text


@pytest.fixture
def empty_database(mdb_server: Server) -> Iterator[ThrowawayDatabase]:
    with throwaway_database(mdb_server) as database:
        yield database


async def test_an_unmigrated_database_is_not_ready_and_says_what_to_run(empty_database: ThrowawayDatabase) -> None:
    response = await _ready(empty_database.config(AppConfig))
    assert response.status_code == 503
    assert response.json()["status"] == "migrations_pending"
    assert response.json()["database_revisions"] == []
    assert response.json()["error"] == (
        f"The database is at no revision, the code at {HEAD}: run `mountaineer-db migrate apply`."
    )


async def test_a_database_behind_the_code_is_not_ready(empty_database: ThrowawayDatabase) -> None:
    config = empty_database.config(AppConfig)
    await migrations.stamp(FIRST, config=config)
    result = await check_database(config)
    assert (result.ok, result.status, result.database_revisions) == (False, DatabaseStatus.MIGRATIONS_PENDING, (FIRST,))
    assert result.error == f"The database is at {FIRST}, the code at {HEAD}: run `mountaineer-db migrate apply`."


async def test_a_database_migrated_by_a_newer_deploy_stays_ready(empty_database: ThrowawayDatabase) -> None:
    """Rolling deploys migrate first: the old pods must not all leave the load balancer."""
    config = empty_database.config(AppConfig)
    await migrations.stamp(HEAD, config=config)
    async with database_session(config) as session:
        await session.exec(text("UPDATE alembic_version SET version_num = 'f00dfeedcafe'"))  # type: ignore[call-overload]
        await session.commit()
    result = await check_database(config)
    assert (result.ok, result.status) == (True, DatabaseStatus.DATABASE_AHEAD)
    assert result.database_revisions == ("f00dfeedcafe",)


async def test_an_unmigrated_database_shows_the_setup_page_in_development(
    empty_database: ThrowawayDatabase, caplog: pytest.LogCaptureFixture
) -> None:
    app = build_app(empty_database.config(AppConfig, ENVIRONMENT="development"))
    caplog.clear()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://testserver") as client:
        response = await client.get("/")
    assert response.status_code == 500
    assert "<h1>The database is not set up yet</h1>" in response.text
    assert "relation &quot;todo&quot; does not exist" in response.text
    logged = [r.getMessage() for r in caplog.records if r.name != "httpx" and r.levelno >= logging.INFO]
    assert logged == [
        'The database is not set up yet: relation "todo" does not exist (SQLSTATE 42P01). Apply the migrations: '
        "mountaineer-db --config todo_app.config:AppConfig migrate apply"
    ]
