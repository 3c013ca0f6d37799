"""Type-checked usage of the public API (mypy --strict runs over this file; pytest imports it too)."""

from collections.abc import Sequence

from mountaineer import ConfigBase, ControllerBase, Depends, RenderBase, sideeffect
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Field, SQLModel, select

from mountaineer_db import (
    AsyncSession,
    DatabaseConfig,
    DatabaseDependencies,
    MountaineerDBError,
    PoolType,
    SessionDep,
    database_session,
    dispose_engines,
)


class TypedConfig(DatabaseConfig, ConfigBase):
    PACKAGE: str | None = None
    POSTGRES_DB: str | None = "typed"


class TypedTodo(SQLModel, table=True):
    __tablename__ = "typed_todo"

    id: int | None = Field(default=None, primary_key=True)
    description: str


class TodoList(RenderBase):
    descriptions: list[str]


class NewTodo(BaseModel):
    description: str


class TypedController(ControllerBase):  # type: ignore[type-arg]  # Mountaineer types render() by ParamSpec
    url = "/typed"
    view_path = "/app/typed/page.tsx"

    async def render(self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)) -> TodoList:
        todos: Sequence[TypedTodo] = (await session.exec(select(TypedTodo))).all()
        return TodoList(descriptions=[todo.description for todo in todos])

    @sideeffect
    async def add(self, payload: NewTodo, session: SessionDep) -> None:
        session.add(TypedTodo(description=payload.description))
        await session.commit()


async def typed_job(config: DatabaseConfig) -> int:
    engine: AsyncEngine = await DatabaseDependencies.get_db(config=config)
    assert config.DATABASE_POOL_TYPE in (PoolType.NULL, PoolType.FIXED_PROCESS)
    try:
        async with database_session(config) as session:
            count = len((await session.exec(select(TypedTodo))).all())
    except MountaineerDBError:
        count = -1
    finally:
        await dispose_engines()
    return count if engine is not None else 0
