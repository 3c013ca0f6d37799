""""Not set up yet": a missing table (migrations not applied) gets one clear message and one log line."""

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.responses import PlainTextResponse

from mountaineer_db import DatabaseNotSetUpError, database_session
from mountaineer_db.requests.setup_errors import setup_commands
from tests.observed_app import ObservedConfig, build_app

# ObservedConfig is the registered config; it has no PACKAGE, so both commands are named.
COMMANDS = (
    "mountaineer-db --config tests.observed_app:ObservedConfig migrate apply",
    "mountaineer-db --config tests.observed_app:ObservedConfig createdb --create-tables",
)
MESSAGE = (
    'The database is not set up yet: relation "table_nobody_created" does not exist (SQLSTATE 42P01). '
    f"Apply the migrations ({COMMANDS[0]}) or, for an app without migrations, create the tables ({COMMANDS[1]})."
)
PRE = '<pre style="background: #f3f3f3; padding: 0.75rem">'


async def _request(
    pg_server: Any, test_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, environment: str, **kw: Any
) -> tuple[httpx.Response, list[logging.LogRecord]]:
    config = ObservedConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(test_database), ENVIRONMENT=environment)
    app = build_app(tmp_path / "views", config)
    # As Mountaineer's development server does (its error page): ours must still answer.
    app.app.add_exception_handler(Exception, lambda request, error: PlainTextResponse("dev error page", 500))
    caplog.clear()
    caplog.set_level(logging.DEBUG)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://testserver") as http:
        response = await http.request(**kw)
    # Every log record of the request, whoever wrote it (httpx's own request line aside).
    return response, [r for r in caplog.records if r.name != "httpx" and r.levelno >= logging.INFO]


async def test_development_shows_a_page_naming_the_fix_and_logs_one_line(
    pg_server: Any, test_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    response, records = await _request(
        pg_server, test_database, tmp_path, caplog, "development", method="GET", url="/missing"
    )
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/html")
    assert "<h1>The database is not set up yet</h1>" in response.text
    body = response.text
    assert "<p>PostgreSQL says: relation &quot;table_nobody_created&quot; does not exist (SQLSTATE 42P01).</p>" in body
    # Issue 25: the commands as they must be typed (the config named), each said once, no markdown.
    assert f"<p>Apply the migrations, in the project folder:</p>\n{PRE}{COMMANDS[0]}</pre>" in body
    assert f"<p>or, for an app without migrations, create the tables:</p>\n{PRE}{COMMANDS[1]}</pre>" in body
    assert "`" not in body
    assert body.count("migrate apply") == 1 and body.count("createdb --create-tables") == 1
    assert body.count("does not exist") == 1
    assert [(r.name, r.levelname, r.getMessage()) for r in records] == [("mountaineer_db", "ERROR", MESSAGE)]


async def test_development_actions_get_the_message_as_json(
    pg_server: Any, test_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    response, records = await _request(
        pg_server, test_database, tmp_path, caplog, "development",
        method="POST", url="/internal/api/missing_table_controller/touch",
    )  # fmt: skip
    assert (response.status_code, response.json()) == (500, {"detail": MESSAGE})
    assert [r.getMessage() for r in records] == [MESSAGE]


async def test_production_answers_the_usual_500_and_logs_one_line(
    pg_server: Any, test_database: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    response, records = await _request(
        pg_server, test_database, tmp_path, caplog, "production", method="GET", url="/missing"
    )
    assert (response.status_code, response.text) == (500, "Internal Server Error")
    assert "table_nobody_created" not in response.text
    assert [(r.name, r.levelname, r.getMessage()) for r in records] == [("mountaineer_db", "ERROR", MESSAGE)]


async def test_scripts_get_the_same_clear_error(make_config: Any, caplog: pytest.LogCaptureFixture) -> None:
    from sqlalchemy import text

    with pytest.raises(DatabaseNotSetUpError) as caught:
        async with database_session(make_config()) as session:
            await session.exec(text("SELECT * FROM table_nobody_created"))  # type: ignore[call-overload]
    assert str(caught.value) == MESSAGE.replace(" --config tests.observed_app:ObservedConfig", "")
    assert caught.value.status_code == 500 and caught.value.detail == "Internal Server Error"


# -- Issue 25: the commands to run, for the app at hand ---------------------------------------


class PackagedConfig:
    """Stands for an app config: what `setup_commands` reads is its class and PACKAGE."""

    PACKAGE = "setup_pkg"


def _package(root: Path, *revisions: str) -> None:
    versions = root / "setup_pkg" / "migrations" / "versions"
    versions.mkdir(parents=True)
    (root / "setup_pkg" / "__init__.py").write_text("")
    for name in revisions:
        (versions / name).write_text("")


SPEC = f"{PackagedConfig.__module__}:PackagedConfig"


def test_an_app_with_migrations_is_told_to_apply_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _package(tmp_path, "0001_create_todo.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("MOUNTAINEER_DB_CONFIG", raising=False)
    assert setup_commands(PackagedConfig()) == (f"mountaineer-db --config {SPEC} migrate apply",)


def test_an_app_without_revisions_is_told_to_create_the_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _package(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("MOUNTAINEER_DB_CONFIG", raising=False)
    assert setup_commands(PackagedConfig()) == (f"mountaineer-db --config {SPEC} createdb --create-tables",)


def test_no_config_option_when_the_environment_names_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _package(tmp_path, "0001_create_todo.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MOUNTAINEER_DB_CONFIG", SPEC)
    assert setup_commands(PackagedConfig()) == ("mountaineer-db migrate apply",)
    monkeypatch.setenv("MOUNTAINEER_DB_CONFIG", "other.config:AppConfig")  # another config: --config wins
    assert setup_commands(PackagedConfig()) == (f"mountaineer-db --config {SPEC} migrate apply",)
