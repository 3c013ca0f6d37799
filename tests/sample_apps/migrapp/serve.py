"""A small Mountaineer app over the `serve_item` table, for migrating while it serves.

`create_app()` is a uvicorn factory (`uvicorn migrapp.serve:create_app --factory`); the
database settings come from the environment. The code knows only `id` and `title`: it is
the version already deployed while a migration adds columns and indexes.
"""

from pathlib import Path

from mountaineer import ConfigBase, ControllerBase, Depends, RenderBase, passthrough, sideeffect
from mountaineer.app import AppController
from pydantic import BaseModel
from sqlalchemy import text
from sqlmodel import Field, SQLModel, select

from mountaineer_db import AsyncSession, DatabaseConfig, DatabaseDependencies


class ServeConfig(DatabaseConfig, ConfigBase):
    PACKAGE: str | None = None


class ServeItem(SQLModel, table=True):
    __tablename__ = "serve_item"

    id: int | None = Field(default=None, primary_key=True)
    title: str


class NewItem(BaseModel):
    title: str


class ItemsRender(RenderBase):
    latest: list[str]


class Peek(BaseModel):
    columns: int


class ItemsController(ControllerBase):
    url = "/"
    view_path = "/app/page.tsx"

    async def render(self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)) -> ItemsRender:
        """The ORM way: the query names its columns."""
        items = (await session.exec(select(ServeItem).order_by(ServeItem.id.desc()).limit(3))).all()  # type: ignore[union-attr]
        return ItemsRender(latest=[item.title for item in items])

    @sideeffect
    async def add_item(
        self, payload: NewItem, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)
    ) -> None:
        session.add(ServeItem(title=payload.title))
        await session.commit()

    @passthrough
    async def peek(self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)) -> Peek:
        """The raw-SQL way: `SELECT *`, whose result type changes when a column is added."""
        row = (await session.exec(text("SELECT * FROM serve_item ORDER BY id DESC LIMIT 1"))).first()  # type: ignore[call-overload]
        return Peek(columns=len(row) if row is not None else 0)


def create_app() -> object:
    """The ASGI app, configured from the environment."""
    controller = AppController(view_root=Path(__file__).parent / "views", config=ServeConfig())
    controller.register(ItemsController())
    return controller.app


ADD_PATH = "/internal/api/items_controller/add_item"
PEEK_PATH = "/internal/api/items_controller/peek"
