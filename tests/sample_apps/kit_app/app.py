"""The sample app: notes, listed by a page and added by a `@sideeffect` action.

`NotesController` is an ordinary page (its GET needs a frontend build, so its tests call
`render()` through the kit); `CountController` answers its GET with JSON, so a GET can be
tested over HTTP without a build.
"""

from pathlib import Path

from fastapi.responses import JSONResponse
from mountaineer import AppController, ConfigBase, ControllerBase, Depends, Metadata, RenderBase, sideeffect
from pydantic import BaseModel
from sqlalchemy import MetaData
from sqlmodel import Field, SQLModel, func, select

from mountaineer_db import AsyncSession, DatabaseConfig, DatabaseDependencies, SessionDep

VIEWS = Path(__file__).parent / "views"


class KitAppConfig(DatabaseConfig, ConfigBase):
    """Not pip-installed, so the app is given its view_root rather than a PACKAGE."""


class KitNote(SQLModel, table=True):
    __tablename__ = "kit_note"

    id: int | None = Field(default=None, primary_key=True)
    text: str


def kit_metadata() -> MetaData:
    """Only this app's tables (SQLModel.metadata also holds other test apps' tables)."""
    metadata = MetaData()
    KitNote.__table__.to_metadata(metadata)  # type: ignore[attr-defined]
    return metadata


class NotesRender(RenderBase):
    notes: list[str]


class NewNote(BaseModel):
    text: str
    commit: bool = True


class NotesController(ControllerBase):
    url = "/notes"
    view_path = "/app/notes/page.tsx"

    async def render(self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)) -> NotesRender:
        notes = (await session.exec(select(KitNote.text).order_by(KitNote.id))).all()  # type: ignore[arg-type]
        return NotesRender(notes=list(notes))

    @sideeffect
    async def add_note(self, payload: NewNote, session: SessionDep) -> None:
        session.add(KitNote(text=payload.text))
        if payload.commit:
            await session.commit()
        else:
            await session.flush()


class CountRender(RenderBase):
    pass


class CountController(ControllerBase):
    url = "/count"
    view_path = "/app/count/page.tsx"

    async def render(self, session: SessionDep) -> CountRender:
        count = (await session.exec(select(func.count()).select_from(KitNote))).one()
        return CountRender(metadata=Metadata(explicit_response=JSONResponse({"count": count})))


def build_app(config: KitAppConfig) -> AppController:
    app = AppController(view_root=VIEWS, config=config)
    app.register(NotesController())
    app.register(CountController())
    return app
