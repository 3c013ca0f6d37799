"""`assert_num_queries` / `assert_max_queries`: statements counted, bookkeeping left out."""

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from mountaineer.config import unregister_config
from sqlalchemy import MetaData, text
from sqlmodel import select

from mountaineer_db import AsyncSession, database_session
from mountaineer_db.testing import (
    Server,
    ThrowawayDatabase,
    assert_max_queries,
    assert_num_queries,
    counted_queries,
    create_schema,
    override_app_session,
    rollback_session,
    throwaway_database,
)
from tests.sample_apps.kit_app.app import KitAppConfig, KitNote, build_app, kit_metadata

ADD = "/internal/api/notes_controller/add_note"
INSERT = "INSERT INTO kit_note (text) VALUES ($1::VARCHAR) RETURNING kit_note.id"
SELECT = "SELECT kit_note.text FROM kit_note ORDER BY kit_note.id"


@pytest.fixture(scope="module")
def kit_database(mdb_server: Server) -> Iterator[ThrowawayDatabase]:
    with throwaway_database(mdb_server) as database:
        metadata: MetaData = kit_metadata()
        create_schema(database.config(), metadata)
        yield database


@pytest.fixture
async def kit_session(kit_database: ThrowawayDatabase) -> AsyncIterator[AsyncSession]:
    async with rollback_session(kit_database.config()) as session:
        yield session


async def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://testserver")


async def test_an_action_and_its_rerender_count_their_statements_not_the_savepoints(
    kit_database: ThrowawayDatabase, kit_session: AsyncSession
) -> None:
    app = build_app(kit_database.config(KitAppConfig))  # type: ignore[arg-type]
    with override_app_session(app, kit_session):
        async with await _client(app) as http:
            with assert_num_queries(2) as queries:  # the INSERT, and the re-render's SELECT
                response = await http.post(ADD, json={"text": "one"})
    assert response.status_code == 200, response.text
    assert queries.statements == [INSERT, SELECT]


async def test_a_failure_lists_the_statements_without_parameters(kit_session: AsyncSession) -> None:
    kit_session.add_all([KitNote(text="secret one"), KitNote(text="secret two")])
    await kit_session.commit()
    with pytest.raises(AssertionError) as caught, assert_num_queries(1):
        for note in (await kit_session.exec(select(KitNote))).all():
            await kit_session.refresh(note)  # one more query per row: an N+1
    assert str(caught.value) == (
        "Expected 1 query, 3 were run:\n"
        "1. SELECT kit_note.id, kit_note.text FROM kit_note\n"
        "2. SELECT kit_note.id, kit_note.text FROM kit_note WHERE kit_note.id = $1::INTEGER\n"
        "3. SELECT kit_note.id, kit_note.text FROM kit_note WHERE kit_note.id = $1::INTEGER"
    )
    assert "secret" not in str(caught.value)


async def test_max_queries_passes_at_the_limit_and_fails_above_it(kit_session: AsyncSession) -> None:
    with assert_max_queries(1) as queries:
        await kit_session.exec(text("SELECT 1"))  # type: ignore[call-overload]
    assert queries.count == 1
    with pytest.raises(AssertionError) as caught, assert_max_queries(0):
        await kit_session.exec(text("SELECT 2"))  # type: ignore[call-overload]
    assert str(caught.value) == "Expected at most 0 queries, 1 was run:\n1. SELECT 2"
    with pytest.raises(AssertionError) as none_run, assert_num_queries(2):
        pass
    assert str(none_run.value) == "Expected 2 queries, 0 were run."


async def test_an_exception_in_the_block_propagates_unchanged(kit_session: AsyncSession) -> None:
    with pytest.raises(KeyError), assert_num_queries(5):
        await kit_session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        raise KeyError("the block's own error")


async def test_session_counts_only_that_sessions_statements(
    kit_database: ThrowawayDatabase, kit_session: AsyncSession
) -> None:
    with counted_queries(session=kit_session) as mine, counted_queries() as everything:
        await kit_session.exec(text("SELECT 'mine'"))  # type: ignore[call-overload]
        async with database_session(kit_database.config()) as other:
            await other.exec(text("SELECT 'other'"))  # type: ignore[call-overload]
    assert mine.statements == ["SELECT 'mine'"]
    assert everything.statements == ["SELECT 'mine'", "SELECT 'other'"]


async def test_real_request_sessions_count_without_begin_commit_or_internal_checks(
    kit_database: ThrowawayDatabase,
) -> None:
    """Without the kit's session: the action's uncommitted flush makes the re-render check the
    server for uncommitted writes (an internal statement), which is not counted either."""
    unregister_config()
    app = build_app(kit_database.config(KitAppConfig))  # type: ignore[arg-type]
    async with await _client(app) as http:
        with assert_num_queries(2) as queries:
            response = await http.post(ADD, json={"text": "never committed", "commit": False})
    assert response.status_code == 200, response.text
    assert response.json()["sideeffect"]["notes"] == []
    assert queries.statements == [INSERT, SELECT]


def test_the_fixtures_are_the_context_managers(
    mdb_assert_num_queries: Callable[..., Any], mdb_assert_max_queries: Callable[..., Any]
) -> None:
    assert mdb_assert_num_queries is assert_num_queries
    assert mdb_assert_max_queries is assert_max_queries
