"""A small Mountaineer app used by the core tests: real controllers, real dependencies.

`render()` answers with an explicit JSON response (a Mountaineer feature for redirects and
APIs), so a GET exercises the full FastAPI dependency lifecycle without a frontend build.
"""

from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse
from mountaineer import AppController, ConfigBase, ControllerBase, Depends, Metadata, RenderBase, sideeffect
from pydantic import BaseModel
from sqlmodel import Field, SQLModel, func, select

from mountaineer_db import AsyncSession, DatabaseConfig, DatabaseDependencies, SessionDep


class CoreAppConfig(DatabaseConfig, ConfigBase):
    """PACKAGE stays unset: the test app is not pip-installed, so it passes view_root instead."""


class CoreTodo(SQLModel, table=True):
    __tablename__ = "core_todo"

    id: int | None = Field(default=None, primary_key=True)
    description: str


class TodoRender(RenderBase):
    count: int
    descriptions: list[str]


class NewTodo(BaseModel):
    description: str
    commit: bool = True
    fail_after_add: bool = False


# What handlers observed, for the tests to assert on.
OBSERVED: list[dict[str, Any]] = []


class TodoController(ControllerBase):
    url = "/"
    view_path = "/app/home/page.tsx"

    async def render(self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)) -> TodoRender:
        rows = (await session.exec(select(CoreTodo).order_by(CoreTodo.id))).all()  # type: ignore[arg-type]
        descriptions = [row.description for row in rows]
        return TodoRender(count=len(descriptions), descriptions=descriptions)

    @sideeffect
    async def add_todo(
        self, payload: NewTodo, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)
    ) -> None:
        todo = CoreTodo(description=payload.description)
        session.add(todo)
        if payload.fail_after_add:
            await session.flush()
            raise ValueError("handler failed on purpose")
        if payload.commit:
            await session.commit()
            OBSERVED.append({"id_after_commit": todo.id, "description_after_commit": todo.description})


class ProbeRender(RenderBase):
    pass


class ProbeController(ControllerBase):
    """A page whose render never queries; it reports what it saw as JSON."""

    url = "/probe"
    view_path = "/app/probe/page.tsx"

    async def render(self, session: SessionDep) -> ProbeRender:
        OBSERVED.append({"in_transaction": session.in_transaction(), "session_type": type(session)})
        return ProbeRender(
            metadata=Metadata(explicit_response=JSONResponse({"in_transaction": session.in_transaction()}))
        )


class CountRender(RenderBase):
    pass


class CountController(ControllerBase):
    """GET /count: the number of todos, as JSON, read through the request session."""

    url = "/count"
    view_path = "/app/count/page.tsx"

    async def render(self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)) -> CountRender:
        count = (await session.exec(select(func.count()).select_from(CoreTodo))).one()
        return CountRender(metadata=Metadata(explicit_response=JSONResponse({"count": count})))


def write_stub_views(view_root: Path, package_name: str, *pages: str) -> None:
    """An empty page per controller and a package.json: all a test app's view_root needs
    when its renders answer with explicit responses (no frontend build)."""
    for page in pages:
        folder = view_root / "app" / page
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "page.tsx").write_text("export default function Page() { return null; }\n")
    (view_root / "package.json").write_text(f'{{"name": "{package_name}", "private": true}}\n')


def build_app(view_root: Path, config: CoreAppConfig) -> AppController:
    write_stub_views(view_root, "core-app-views", "home", "probe", "count")
    app = AppController(view_root=view_root, config=config)
    app.register(TodoController())
    app.register(ProbeController())
    app.register(CountController())
    return app
