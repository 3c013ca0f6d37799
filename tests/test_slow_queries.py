"""DATABASE_SLOW_QUERY_THRESHOLD: one WARNING per slow statement, text without parameters."""

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError

from mountaineer_db import DatabaseConfig, database_session
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.settings.config import DatabaseConfigError
from tests.observed_app import ObservedConfig, build_app, create_tables

SECRET = "do-not-log-this-parameter"


def _slow_lines(caplog: pytest.LogCaptureFixture, statement: str) -> list[str]:
    """The slow-query lines about `statement` (on a busy machine other statements may pass the threshold too)."""
    return [
        message
        for message in (r.getMessage() for r in caplog.records if r.name == "mountaineer_db")
        if message.startswith("Slow query") and statement in message
    ]


async def test_a_slow_statement_logs_one_warning_without_its_parameters(
    make_config: Callable[..., DatabaseConfig], caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(DATABASE_SLOW_QUERY_THRESHOLD=0.2)
    caplog.set_level(logging.WARNING, logger="mountaineer_db")
    async with database_session(config) as session:
        await session.exec(text("SELECT pg_sleep(0.3), :secret AS secret").bindparams(secret=SECRET))  # type: ignore[call-overload]
        await session.exec(text("SELECT 1"))  # type: ignore[call-overload]  # fast: not logged
    records = [r for r in caplog.records if r.name == "mountaineer_db"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    line = records[0].getMessage()
    assert line.startswith("Slow query: 0.")
    assert line.endswith(" s (DATABASE_SLOW_QUERY_THRESHOLD=0.2 s): SELECT pg_sleep(0.3), $1::VARCHAR AS secret")
    assert 0.3 <= float(line.split()[2]) < 5
    assert SECRET not in caplog.text


async def test_a_long_statement_is_logged_on_one_line_cut_at_2000_characters(
    make_config: Callable[..., DatabaseConfig], caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(DATABASE_SLOW_QUERY_THRESHOLD=0.1)
    caplog.set_level(logging.WARNING, logger="mountaineer_db")
    filler = "x" * 3000
    async with database_session(config) as session:
        await session.exec(text(f"SELECT pg_sleep(0.15),\n       '{filler}'\n       AS filler"))  # type: ignore[call-overload]
    (line,) = _slow_lines(caplog, "pg_sleep(0.15)")
    statement = line.split("s): ", 1)[1]
    assert "\n" not in line
    assert statement.startswith("SELECT pg_sleep(0.15), 'xxx")
    assert len(statement) == 2000 and statement.endswith("x…"), len(statement)


async def test_a_slow_request_names_its_controller_and_action(
    pg_server: Any, test_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = ObservedConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(test_database), DATABASE_SLOW_QUERY_THRESHOLD=0.1)
    await create_tables(config)
    app = build_app(tmp_path / "views", config)
    caplog.set_level(logging.WARNING, logger="mountaineer_db")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://testserver") as http:
        response = await http.post("/internal/api/notes_controller/add_note", json={"body": "b", "sleep": 0.2})
    assert response.status_code == 200, response.text
    (line,) = _slow_lines(caplog, "pg_sleep(")
    assert line.endswith(
        " s (DATABASE_SLOW_QUERY_THRESHOLD=0.1 s) in NotesController.add_note: SELECT pg_sleep($1::FLOAT)"
    ), line


async def test_a_statement_that_fails_after_the_threshold_is_logged_with_its_error(
    make_config: Callable[..., DatabaseConfig], caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(DATABASE_SLOW_QUERY_THRESHOLD=0.1, DATABASE_STATEMENT_TIMEOUT=0.2)
    caplog.set_level(logging.WARNING, logger="mountaineer_db")
    with pytest.raises(DBAPIError):
        async with database_session(config) as session:
            await session.exec(text("SELECT pg_sleep(2)"))  # type: ignore[call-overload]
    (line,) = _slow_lines(caplog, "pg_sleep(2)")
    assert line.startswith("Slow query: failed (QueryCanceledError) after 0.")
    assert line.endswith(" s (DATABASE_SLOW_QUERY_THRESHOLD=0.1 s): SELECT pg_sleep(2)"), line


async def test_without_a_threshold_no_listener_is_registered(make_config: Callable[..., DatabaseConfig]) -> None:
    plain = engine_for(make_config()).sync_engine
    watched = engine_for(make_config(DATABASE_SLOW_QUERY_THRESHOLD=1)).sync_engine
    assert plain is not watched
    for name in ("before_cursor_execute", "after_cursor_execute"):
        assert not event.contains(plain, name, lambda *_: None)
        assert len(getattr(plain.dispatch, name)) == 0
        assert len(getattr(watched.dispatch, name)) == 1


@pytest.mark.parametrize("value", [0, -1])
def test_a_threshold_must_be_positive(value: float) -> None:
    with pytest.raises(DatabaseConfigError) as caught:
        DatabaseConfig(POSTGRES_HOST="h", POSTGRES_DB="d", DATABASE_SLOW_QUERY_THRESHOLD=value)
    assert f"DATABASE_SLOW_QUERY_THRESHOLD is {float(value)}; use a number of seconds greater than 0" in str(
        caught.value
    )
