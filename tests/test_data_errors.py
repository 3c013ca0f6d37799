"""Values the database cannot take: a 422 naming the kind of problem, never a 500, never the value in a log.

One test per row of issue 23 that a client can trigger, through a real Mountaineer app
(`tests/hostile_app.py`) on the real PostgreSQL; the property-based version is
`tests/test_hostile_input.py`.
"""

import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from mountaineer_db import DatabaseConfig, DatabaseUnavailableError, InvalidInputError, database_session
from mountaineer_db.engines.data_errors import describe_error, invalid_input_error_for
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.servers.cluster import free_port
from tests.hostile_app import ACTIONS, SCHEMA, HostileConfig, assert_never_logged, build_app

TEXT = "The text holds a character the database cannot store (such as a NUL character)."
RANGE = "A number is outside the range the database can store."
TYPE = "A value does not have the type the database expects."


@pytest.fixture
async def config(make_config: Callable[..., DatabaseConfig]) -> DatabaseConfig:
    config = make_config()
    async with engine_for(config).begin() as connection:
        for statement in SCHEMA:
            await connection.execute(text(statement))
    return config


@pytest.fixture
async def client(config: DatabaseConfig, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = build_app(tmp_path / "views", HostileConfig(SQLALCHEMY_DATABASE_URI=config.database_url))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://testserver") as http:
        yield http


async def _notes(client: httpx.AsyncClient) -> int:
    """Add a plain note (the app keeps serving) and return how many there are."""
    response = await client.post(f"{ACTIONS}/add_note", json={"title": "plain"})
    assert response.status_code == 200, response.text
    return int(response.json()["sideeffect"]["count"])


def _ours(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "mountaineer_db"]


async def test_a_nul_byte_in_a_text_field_is_a_422_saying_so(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Row 1: `{"title": "hello\\u0000x"}` was a 500 with the server's message logged at ERROR."""
    caplog.set_level(logging.DEBUG)
    response = await client.post(f"{ACTIONS}/add_note", json={"title": "hello-NUL-marker\x00x"})
    assert (response.status_code, response.json()) == (422, {"detail": TEXT})
    assert_never_logged(caplog, "hello-NUL-marker")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert _ours(caplog) == [
        (
            "INFO",
            "Rolled back the request's transaction after InvalidInputError: The database cannot take a value it "
            "was sent: DBAPIError: CharacterNotInRepertoireError (SQLSTATE 22021): The text holds a character the "
            "database cannot store (such as a NUL character)\n[SQL: INSERT INTO hostile_note (title, body, count, "
            "ratio, price) VALUES ($1::VARCHAR, $2::VARCHAR, $3::INTEGER, $4::FLOAT, $5::FLOAT) RETURNING "
            "hostile_note.id]",
        )
    ]
    assert await _notes(client) == 1, "nothing of the refused note was written; the app keeps serving"


async def test_an_unpaired_surrogate_is_a_422_too(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    """JSON can carry `\\ud800` alone; asyncpg cannot encode it, and said so quoting the value."""
    caplog.set_level(logging.DEBUG)
    body = b'{"body": "surrogate-marker-\\ud800-end"}'
    response = await client.post(f"{ACTIONS}/add_note", content=body, headers={"content-type": "application/json"})
    assert (response.status_code, response.json()) == (422, {"detail": TEXT})
    assert_never_logged(caplog, "surrogate-marker")


@pytest.mark.parametrize("count", [2**31, -(2**63) - 1, 10**40], ids=["past_int32", "past_int64", "huge"])
async def test_a_number_past_the_columns_range_is_a_422(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, count: int
) -> None:
    """Row 2, in an action: `invalid input for query argument $3: 2147483648 (value out of int32 range)`."""
    caplog.set_level(logging.DEBUG)
    response = await client.post(f"{ACTIONS}/add_note", json={"count": count})
    assert (response.status_code, response.json()) == (422, {"detail": RANGE})
    assert_never_logged(caplog, count)
    assert "invalid input for query argument $3: value out of int" in _ours(caplog)[0][1]


async def test_a_lookup_by_an_id_past_the_columns_range_is_a_404(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Row 2: `/notes/99999999999999999999` was a 500 with the value in the ERROR line; no row has that id."""
    caplog.set_level(logging.DEBUG)
    for note_id in ("99999999999999999999", "2147483648", "-2147483649"):
        response = await client.get(f"/notes/{note_id}")
        assert (response.status_code, response.json()) == (404, {"detail": "Note not found."})
        assert_never_logged(caplog, note_id)
    assert await _notes(client) == 1
    assert (await client.get("/notes/1")).json() == {"title": "plain"}


async def test_a_string_compared_with_an_integer_column_is_a_422_and_never_logged(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Row 3: the string was in the ERROR line, despite `hide_parameters`."""
    caplog.set_level(logging.DEBUG)
    response = await client.get("/search", params={"count": "not-a-number-marker"})
    assert (response.status_code, response.json()) == (422, {"detail": TYPE})
    assert_never_logged(caplog, "not-a-number-marker")
    assert _ours(caplog) == [
        (
            "INFO",
            "Rolled back the request's transaction after InvalidInputError: The database cannot take a value it "
            "was sent: DBAPIError: DataError (SQLSTATE 22000): invalid input for query argument $2: 'str' object "
            "cannot be interpreted as an integer\n[SQL: SELECT count(*) FROM hostile_note WHERE title = $1 OR "
            "count = $2]",
        )
    ]
    assert await _notes(client) == 1


async def test_a_value_the_server_refuses_is_a_422_without_the_value(
    config: DatabaseConfig, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL quotes the value in most class 22 messages (`invalid input syntax for type integer: "..."`)."""
    caplog.set_level(logging.DEBUG)
    cases: dict[str, tuple[Any, str, str, str]] = {
        "SELECT CAST(:v AS integer)": ("syntax-marker", "invalid_value", "22P02", TYPE),
        "SELECT CAST(:v AS date)": (
            "2024-13-45",
            "invalid_datetime",
            "22008",
            "A date or time is not valid, or out of the range the database can store.",
        ),
        "INSERT INTO hostile_note (title, body, count, ratio) VALUES (:v, 'b', 1, 0)": (
            "x" * 41 + "-title-marker",
            "too_long",
            "22001",
            "A text is longer than the database allows.",
        ),
        "SELECT CAST(CAST(:v AS float8) AS numeric(8, 2))": (1e300, "out_of_range", "22003", RANGE),
    }
    for statement, (value, kind, code, detail) in cases.items():
        with pytest.raises(InvalidInputError) as caught:
            async with database_session(config) as session:
                await session.exec(text(statement).bindparams(v=value))  # type: ignore[call-overload]
        error = caught.value
        assert (error.status_code, error.kind, error.sqlstate, error.detail) == (422, kind, code, detail)
        assert error.__cause__ is None and error.__suppress_context__, "the driver's error quotes the value"
        for shown in (str(error), repr(error), error.detail):
            assert str(value) not in shown
    assert_never_logged(caplog, "syntax-marker", "2024-13-45", "-title-marker", 1e300)


async def test_other_errors_are_not_invalid_input_and_describe_without_values(config: DatabaseConfig) -> None:
    """A unique violation stays an IntegrityError (its DETAIL line has the values; the description drops it)."""
    async with engine_for(config).begin() as connection:
        await connection.execute(text("CREATE UNIQUE INDEX IF NOT EXISTS uq_hostile_title ON hostile_note (title)"))
    with pytest.raises(Exception) as caught:
        async with database_session(config) as session:
            for _ in range(2):
                await session.exec(  # type: ignore[call-overload]
                    text("INSERT INTO hostile_note (title, body, count, ratio) VALUES (:v, 'b', 1, 0)").bindparams(
                        v="dup-marker"
                    )
                )
    assert invalid_input_error_for(caught.value) is None
    described = describe_error(caught.value)
    assert described.startswith(
        'IntegrityError: UniqueViolationError (SQLSTATE 23505): duplicate key value violates unique constraint "'
        'uq_hostile_title"\n[SQL: INSERT INTO hostile_note'
    )
    assert "dup-marker" not in described
    assert describe_error(RuntimeError("app-message-marker")) == "RuntimeError"


@pytest.mark.parametrize(
    ("fail", "logged"),
    [
        ("before_query", []),
        ("after_query", [("INFO", "Rolled back the request's transaction after RuntimeError")]),
    ],
)
async def test_an_error_of_the_apps_own_code_is_left_to_the_framework_to_log(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, fail: str, logged: list[Any]
) -> None:
    """Row 13: a RuntimeError (or a frontend build error) was logged by us at ERROR with its message,
    a second copy of the server's own traceback, even when no transaction had been opened.
    Now: one INFO line naming the class, and only when a transaction was rolled back."""
    caplog.set_level(logging.DEBUG, logger="mountaineer_db")
    with pytest.raises(RuntimeError, match=f"add_note failed {fail.replace('_', ' ').replace('query', 'a')}"):
        await client.post(f"{ACTIONS}/add_note", json={"title": "x", "fail": fail})
    assert _ours(caplog) == logged
    assert await _notes(client) == 1


async def test_a_failure_of_the_database_layer_is_logged_at_error_even_without_a_transaction(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A refused connection opened no transaction, yet it is ours to report (the 503's reason)."""
    port = free_port()
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=f"postgresql://app:pw@127.0.0.1:{port}/app")
    caplog.set_level(logging.INFO, logger="mountaineer_db")
    with pytest.raises(DatabaseUnavailableError):
        async with database_session(config) as session:
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
    (line,) = _ours(caplog)
    assert line[0] == "ERROR"
    assert line[1].startswith(
        "Rolled back the request's transaction after DatabaseUnavailableError: Could not connect to database "
        f'"app" on 127.0.0.1:{port} as user "app": '
    )


async def test_the_test_kits_session_gives_the_same_422(
    config: DatabaseConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An app's tests on the kit see what production answers."""
    from mountaineer_db.testing import override_app_session, rollback_session

    app = build_app(tmp_path / "views", HostileConfig(SQLALCHEMY_DATABASE_URI=config.database_url))
    caplog.set_level(logging.DEBUG)
    async with rollback_session(config) as session:
        with override_app_session(app, session):
            transport = httpx.ASGITransport(app=app.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
                response = await http.post(f"{ACTIONS}/add_note", json={"title": "kit-marker\x00"})
                assert (response.status_code, response.json()) == (422, {"detail": TEXT})
                assert (await http.post(f"{ACTIONS}/add_note", json={"title": "ok"})).status_code == 200
    assert_never_logged(caplog, "kit-marker")
