"""The sample app's tests, written with `mountaineer_db.testing` only.

`test_first_note_is_alone` and `test_other_note_is_alone` would fail in whichever order they
run if the kit did not roll each test back (both commit); `tests/testing/test_isolation.py`
runs them in both orders.
"""

import logging

import httpx
import pytest
from mountaineer import AppController
from sqlmodel import func, select

from mountaineer_db import AsyncSession
from mountaineer_db.testing import (
    PgBouncer,
    ThrowawayDatabase,
    override_app_session,
    render_controller,
    rollback_session,
)
from tests.sample_apps.kit_app.app import KitNote, NotesController

ADD_NOTE = "/internal/api/notes_controller/add_note"


async def test_render_lists_the_notes(mdb_session: AsyncSession) -> None:
    mdb_session.add(KitNote(text="seeded"))
    await mdb_session.commit()  # rolled back after the test all the same
    rendered = await render_controller(NotesController(), mdb_session)
    assert rendered.notes == ["seeded"]


async def test_get_render_sees_the_test_session(mdb_client: httpx.AsyncClient, mdb_app_session: AsyncSession) -> None:
    mdb_app_session.add(KitNote(text="only in this test's transaction"))
    await mdb_app_session.commit()
    mdb_app_session.add(KitNote(text="not even committed by the test"))
    response = await mdb_client.get("/count")
    assert response.status_code == 200, response.text
    assert response.json() == {"count": 2}
    rows = (await mdb_app_session.exec(select(KitNote.text))).all()
    assert len(rows) == 2, "what the test wrote before the request stays"


async def test_action_rerender_shows_the_new_note(mdb_client: httpx.AsyncClient, mdb_app_session: AsyncSession) -> None:
    response = await mdb_client.post(ADD_NOTE, json={"text": "from the action"})
    assert response.status_code == 200, response.text
    assert response.json()["sideeffect"]["notes"] == ["from the action"]
    # The test session sees the committed row too (it is all one transaction, rolled back later).
    rows = (await mdb_app_session.exec(select(KitNote.text))).all()
    assert list(rows) == ["from the action"]


async def test_uncommitted_action_changes_never_reach_the_rerender(
    mdb_client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mountaineer_db")
    response = await mdb_client.post(ADD_NOTE, json={"text": "not committed", "commit": False})
    assert response.json()["sideeffect"]["notes"] == []
    assert any("left uncommitted changes" in record.getMessage() for record in caplog.records)
    assert (await mdb_client.get("/count")).json() == {"count": 0}


async def test_first_note_is_alone(mdb_client: httpx.AsyncClient) -> None:
    response = await mdb_client.post(ADD_NOTE, json={"text": "first"})
    assert response.json()["sideeffect"]["notes"] == ["first"]


async def test_other_note_is_alone(mdb_client: httpx.AsyncClient) -> None:
    response = await mdb_client.post(ADD_NOTE, json={"text": "other"})
    assert response.json()["sideeffect"]["notes"] == ["other"]


def test_the_app_fixture_is_the_users(mdb_app: AppController) -> None:
    assert {type(d.controller).__name__ for d in mdb_app.graph.controllers} >= {"NotesController", "CountController"}


@pytest.mark.pgbouncer
async def test_the_app_through_pgbouncer(
    mdb_app: AppController, mdb_database: ThrowawayDatabase, mdb_pgbouncer: PgBouncer
) -> None:
    """Testing the way it deploys: the test session goes through PgBouncer in transaction mode."""
    config = mdb_database.config(SQLALCHEMY_DATABASE_URI=mdb_database.url_via(mdb_pgbouncer))
    async with rollback_session(config) as session:
        with override_app_session(mdb_app, session):
            transport = httpx.ASGITransport(app=mdb_app.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                response = await client.post(ADD_NOTE, json={"text": "via the bouncer"})
        assert response.json()["sideeffect"]["notes"] == ["via the bouncer"]
        assert (await session.exec(select(func.count()).select_from(KitNote))).one() == 1
