"""One todo (`/todos/{todo_id}`): rename it, toggle it. Unknown ids get the 404 page (`get_or_404`)."""

from datetime import datetime

from mountaineer import ControllerBase, Depends, Metadata, RenderBase, sideeffect
from pydantic import BaseModel

from mountaineer_db import AsyncSession, DatabaseDependencies, get_or_404
from todo_app.controllers.errors import InvalidDescription, TodoNotFound, clean_description, open_todo_conflicts
from todo_app.controllers.home import TodoItem, TodoRef, get_todo, toggle_done
from todo_app.models import DESCRIPTION_MAX_LENGTH, Todo


class DetailRender(RenderBase):
    todo: TodoItem
    created_at: datetime
    max_length: int


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
        assert todo.id is not None  # loaded rows have their primary key
        return DetailRender(
            todo=TodoItem(id=todo.id, description=todo.description, done=todo.done),
            created_at=todo.created_at,
            max_length=DESCRIPTION_MAX_LENGTH,
            metadata=Metadata(title=f"Todo #{todo.id}"),
        )

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
