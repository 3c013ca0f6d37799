"""The list page (`/`): server-side rendered from the database; add, toggle and delete."""

from mountaineer import ControllerBase, Depends, Metadata, RenderBase, sideeffect
from pydantic import BaseModel
from sqlmodel import col, select

from mountaineer_db import AsyncSession, DatabaseDependencies
from todo_app.controllers.errors import InvalidDescription, TodoNotFound, clean_description, open_todo_conflicts
from todo_app.models import DESCRIPTION_MAX_LENGTH, Todo


class HomeRender(RenderBase):
    todos: list[Todo]
    """The rows themselves: a SQLModel table model serializes with every loaded column."""
    remaining: int
    max_length: int
    title: str
    """The tab title; the page keeps `document.title` in step after each action."""


def list_title(remaining: int) -> str:
    return f"Todos ({remaining} open)"


class NewTodo(BaseModel):
    description: str


class TodoRef(BaseModel):
    id: int


async def get_todo(session: AsyncSession, todo_id: int) -> Todo:
    """The todo with this id, locked for update, or `TodoNotFound`."""
    todo = (await session.exec(select(Todo).where(Todo.id == todo_id).with_for_update())).first()
    if todo is None:
        raise TodoNotFound(detail=f"Todo #{todo_id} does not exist (it may have been deleted).")
    return todo


async def toggle_done(session: AsyncSession, todo_id: int) -> None:
    """Flip the todo's done flag and commit (the `toggle_todo` action of both pages).

    Reopening a done todo while an open one has the same description is a 409.
    """
    todo = await get_todo(session, todo_id)
    todo.done = not todo.done
    with open_todo_conflicts:
        await session.commit()


class HomeController(ControllerBase):
    url = "/"
    view_path = "/app/home/page.tsx"

    async def render(
        self,
        session: AsyncSession = Depends(DatabaseDependencies.get_db_session),
    ) -> HomeRender:
        todos = list((await session.exec(select(Todo).order_by(col(Todo.created_at), col(Todo.id)))).all())
        remaining = sum(not todo.done for todo in todos)
        return HomeRender(
            todos=todos,
            remaining=remaining,
            max_length=DESCRIPTION_MAX_LENGTH,
            title=list_title(remaining),
            metadata=Metadata(title=list_title(remaining)),
        )

    @sideeffect(exception_models=[InvalidDescription])
    async def add_todo(
        self,
        payload: NewTodo,
        session: AsyncSession = Depends(DatabaseDependencies.get_db_session),
    ) -> None:
        session.add(Todo(description=clean_description(payload.description)))
        with open_todo_conflicts:  # the same open todo twice: 409 "An open todo with this description..."
            await session.commit()

    @sideeffect(exception_models=[TodoNotFound])
    async def toggle_todo(
        self,
        payload: TodoRef,
        session: AsyncSession = Depends(DatabaseDependencies.get_db_session),
    ) -> None:
        await toggle_done(session, payload.id)

    @sideeffect(exception_models=[TodoNotFound])
    async def delete_todo(
        self,
        payload: TodoRef,
        session: AsyncSession = Depends(DatabaseDependencies.get_db_session),
    ) -> None:
        todo = await get_todo(session, payload.id)
        await session.delete(todo)
        await session.commit()
