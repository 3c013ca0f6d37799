"""SQLModel models; MIGRAPP_MODEL_VERSION picks the version (1, 2 adds a column, 3 more)."""

import os

from sqlmodel import Field, SQLModel

VERSION = int(os.environ.get("MIGRAPP_MODEL_VERSION", "1"))


class Owner(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True)


class Todo(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(index=True)
    owner_id: int | None = Field(default=None, foreign_key="owner.id")
    if VERSION >= 2:
        priority: int = Field(default=0)
    if VERSION >= 3:
        done: bool = Field(default=False)


if VERSION >= 3:

    class Label(SQLModel, table=True):
        id: int | None = Field(default=None, primary_key=True)
        name: str
