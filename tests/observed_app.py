"""A small Mountaineer app for the operations tests: tags, slow queries, counts, setup errors.

Its handlers report what the server says about their own transaction (`application_name`
as `pg_stat_activity` shows it), so a test can see exactly what an operator would.
"""

from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse
from mountaineer import AppController, ConfigBase, ControllerBase, Metadata, RenderBase, sideeffect
from pydantic import BaseModel
from sqlalchemy import text
from sqlmodel import Field, SQLModel, select

from mountaineer_db import AsyncSession, DatabaseConfig, SessionDep
from tests.core_app import write_stub_views


class ObservedConfig(DatabaseConfig, ConfigBase):
    """Not pip-installed: the app passes view_root instead of PACKAGE."""


class ObservedNote(SQLModel, table=True):
    __tablename__ = "observed_note"

    id: int | None = Field(default=None, primary_key=True)
    body: str


class NotesRender(RenderBase):
    bodies: list[str]
    application_name: str


class NewNote(BaseModel):
    body: str
    sleep: float = 0.0
    fail: bool = False


# What the handlers saw, for the tests to assert on.
SEEN: list[dict[str, Any]] = []


async def own_application_name(session: AsyncSession) -> str:
    """This transaction's application_name, as pg_stat_activity shows it to an operator."""
    query = text("SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()")
    return str((await session.exec(query)).one()[0])  # type: ignore[call-overload]


class NotesController(ControllerBase):
    url = "/"
    view_path = "/app/notes/page.tsx"

    async def render(self, session: SessionDep) -> NotesRender:
        bodies = [note.body for note in (await session.exec(select(ObservedNote).order_by(ObservedNote.id))).all()]  # type: ignore[arg-type]
        name = await own_application_name(session)
        SEEN.append({"where": "render", "application_name": name})
        # An explicit response: GET works without a frontend build (the re-render ignores it).
        page = JSONResponse({"bodies": bodies, "application_name": name})
        return NotesRender(bodies=bodies, application_name=name, metadata=Metadata(explicit_response=page))

    @sideeffect
    async def add_note(self, payload: NewNote, session: SessionDep) -> None:
        SEEN.append({"where": "add_note", "application_name": await own_application_name(session)})
        if payload.sleep:
            await session.exec(text("SELECT pg_sleep(:seconds)").bindparams(seconds=payload.sleep))  # type: ignore[call-overload]
        session.add(ObservedNote(body=payload.body))
        if payload.fail:
            await session.flush()
            raise ValueError("add_note failed on purpose")
        await session.commit()


class MissingTableRender(RenderBase):
    pass


class MissingTableController(ControllerBase):
    """GET /missing: queries a table that was never created (migrations not applied)."""

    url = "/missing"
    view_path = "/app/missing/page.tsx"

    async def render(self, session: SessionDep) -> MissingTableRender:
        await session.exec(text("SELECT count(*) FROM table_nobody_created"))  # type: ignore[call-overload]
        return MissingTableRender(metadata=Metadata(explicit_response=JSONResponse({"unreachable": True})))

    @sideeffect
    async def touch(self, session: SessionDep) -> None:
        await session.exec(text("SELECT count(*) FROM table_nobody_created"))  # type: ignore[call-overload]


def build_app(view_root: Path, config: ObservedConfig) -> AppController:
    write_stub_views(view_root, "observed-app-views", "notes", "missing")
    app = AppController(view_root=view_root, config=config)
    app.register(NotesController())
    app.register(MissingTableController())

    @app.app.get("/plain")
    async def plain_route(session: SessionDep) -> dict[str, str]:
        """A FastAPI route beside Mountaineer's: named by its qualified name."""
        return {"application_name": await own_application_name(session)}

    return app


async def create_tables(config: DatabaseConfig) -> None:
    from mountaineer_db.engines.engine import engine_for

    async with engine_for(config).begin() as connection:
        await connection.run_sync(lambda sync: ObservedNote.__table__.drop(sync, checkfirst=True))  # type: ignore[attr-defined]
        await connection.run_sync(lambda sync: ObservedNote.__table__.create(sync))  # type: ignore[attr-defined]
    SEEN.clear()
