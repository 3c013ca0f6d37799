"""One todo (`/todos/{todo_id}`): rename it, toggle it. Unknown ids get the 404 page (`get_or_404`)."""

from mountaineer import ControllerBase, Depends, Metadata, RenderBase, sideeffect
from pydantic import BaseModel

from mountaineer_db import AsyncSession, DatabaseDependencies, get_or_404
from todo_app.controllers.errors import InvalidDescription, TodoNotFound, clean_description, open_todo_conflicts
from todo_app.controllers.home import TodoRef, get_todo, toggle_done
from todo_app.models import DESCRIPTION_MAX_LENGTH, Todo


class DetailRender(RenderBase):
    todo: Todo
    """The row itself (a SQLModel table model), with every column."""
    max_length: int
    title: str


class RenameTodo(BaseModel):
    id: int
    description: str


class DetailController(ControllerBase):
    url = "/todos/{todo_id}"
    view_path = "/app/detail/page.tsx"

    async def render(
        self,
        todo_id: int,
        session: AsyncSession = Depends(DatabaseDependencies.get_db_session),
    ) -> DetailRender:
        # An unknown id raises ResourceNotFoundError (a 404), turned into the 404 page by the
        # handler in `todo_app.app`.
        todo = await get_or_404(session, Todo, todo_id)
        title = f"Todo #{todo.id}"
        return DetailRender(todo=todo, max_length=DESCRIPTION_MAX_LENGTH, title=title, metadata=Metadata(title=title))

    @sideeffect(exception_models=[InvalidDescription, TodoNotFound])
    async def rename_todo(
        self,
        payload: RenameTodo,
        session: AsyncSession = Depends(DatabaseDependencies.get_db_session),
    ) -> None:
        description = clean_description(payload.description)
        todo = await get_todo(session, payload.id)
        todo.description = description
        with open_todo_conflicts:
            await session.commit()

    @sideeffect(exception_models=[TodoNotFound])
    async def toggle_todo(
        self,
        payload: TodoRef,
        session: AsyncSession = Depends(DatabaseDependencies.get_db_session),
    ) -> None:
        await toggle_done(session, payload.id)
