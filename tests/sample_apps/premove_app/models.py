"""The models the checked-in revision creates."""

from sqlmodel import Field, SQLModel


class Owner(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True)


class Todo(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    title: str = Field(index=True)
    owner_id: int | None = Field(default=None, foreign_key="owner.id")
