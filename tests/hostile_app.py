"""A Mountaineer app that takes whatever a client sends: real actions and renders, real PostgreSQL.

Used by `tests/test_data_errors.py` (one test per kind of hostile input) and
`tests/test_hostile_input.py` (property-based). Renders answer with an explicit JSON response,
so a GET runs the full dependency lifecycle without a frontend build.
"""

import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.responses import JSONResponse
from mountaineer import AppController, ConfigBase, ControllerBase, Metadata, RenderBase, sideeffect
from pydantic import BaseModel
from sqlalchemy import text
from sqlmodel import Field, SQLModel, func, select

from mountaineer_db import DatabaseConfig, SessionDep, get_or_404
from tests.core_app import write_stub_views

SCHEMA = (
    "DROP TABLE IF EXISTS hostile_note",
    "CREATE TABLE hostile_note (id serial PRIMARY KEY, title varchar(40) NOT NULL, body text NOT NULL, "
    "count integer NOT NULL, ratio double precision NOT NULL, price numeric(8, 2))",
)
ACTIONS = "/internal/api/notes_controller"


class HostileConfig(DatabaseConfig, ConfigBase):
    """Not pip-installed: the app gets a view_root."""


class Note(SQLModel, table=True):
    __tablename__ = "hostile_note"

    id: int | None = Field(default=None, primary_key=True)
    title: str
    body: str
    count: int
    ratio: float
    price: float | None = None


class NewNote(BaseModel):
    title: str = "title"
    body: str = "body"
    count: int = 1
    ratio: float = 0.5
    price: float | None = None
    fail: str | None = None
    """`before_query` / `after_query`: raise a RuntimeError there (not an error of the database)."""


class NotesRender(RenderBase):
    count: int


class NotesController(ControllerBase):
    url = "/notes"
    view_path = "/app/notes/page.tsx"

    async def render(self, session: SessionDep) -> NotesRender:
        count = (await session.exec(select(func.count()).select_from(Note))).one()
        return NotesRender(count=count)

    @sideeffect
    async def add_note(self, payload: NewNote, session: SessionDep) -> None:
        if payload.fail == "before_query":
            raise RuntimeError("add_note failed before any query")
        session.add(Note(**payload.model_dump(exclude={"fail"})))
        await session.flush()
        if payload.fail == "after_query":
            raise RuntimeError("add_note failed after a query")
        await session.commit()


class NoteRender(RenderBase):
    pass


class NoteController(ControllerBase):
    """`GET /notes/{note_id}`: a lookup by id through `get_or_404`."""

    url = "/notes/{note_id}"
    view_path = "/app/note/page.tsx"

    async def render(self, note_id: int, session: SessionDep) -> NoteRender:
        note = await get_or_404(session, Note, note_id)
        return NoteRender(metadata=Metadata(explicit_response=JSONResponse({"title": note.title})))


class SearchRender(RenderBase):
    pass


class SearchController(ControllerBase):
    """`GET /search?title=...&count=...`: query parameters compared with columns, as written by hand."""

    url = "/search"
    view_path = "/app/search/page.tsx"

    async def render(self, session: SessionDep, title: str = "", count: str = "0") -> SearchRender:
        # `count` compared with an integer column as the text it came in: the driver refuses it.
        statement = text("SELECT count(*) FROM hostile_note WHERE title = :title OR count = :count")
        found = (await session.exec(statement, params={"title": title, "count": count})).one()[0]  # type: ignore[call-overload]
        return SearchRender(metadata=Metadata(explicit_response=JSONResponse({"found": found})))


def build_app(view_root: Path, config: HostileConfig) -> AppController:
    write_stub_views(view_root, "hostile-views", "notes", "note", "search")
    app = AppController(view_root=view_root, config=config)
    app.register(NotesController())
    app.register(NoteController())
    app.register(SearchController())
    return app


def logged_text(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Every record of every logger, as it would be written: message, arguments and traceback.

    Except the test client's own request lines (`httpx`): the URL a client asked for is in
    every access log by design.
    """
    formatter = logging.Formatter()
    shown: list[str] = []
    for record in caplog.records:
        if record.name == "httpx":
            continue
        shown.append(record.getMessage())
        shown.append(repr(record.args))
        if record.exc_info:
            shown.append(formatter.formatException(record.exc_info))
    return shown


def assert_never_logged(caplog: pytest.LogCaptureFixture, *values: Any) -> None:
    """None of `values` (as text: str() and repr()) is in any log record."""
    shown = logged_text(caplog)
    for value in values:
        for form in {str(value), repr(value)[1:-1] if isinstance(value, str) else repr(value)}:
            leaked = [line for line in shown if form and form in line]
            assert not leaked, f"{form[:60]!r} reached a log record: {leaked[0][:300]!r}"
