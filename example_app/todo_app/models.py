"""Database tables. Alembic autogenerates migrations from these (`todo-app migrate generate`)."""

from datetime import UTC, datetime

from sqlalchemy import DateTime, Index, text
from sqlmodel import Field, SQLModel

DESCRIPTION_MAX_LENGTH = 500
"""Longest description a todo may have; the database column is sized to match."""


def _now() -> datetime:
    return datetime.now(UTC)


OPEN_DESCRIPTION_CONSTRAINT = "uq_todo_open_description"
"""No two open todos with the same description; a done one may be added again."""


class Todo(SQLModel, table=True):
    """One item on the list."""

    __table_args__ = (
        Index(OPEN_DESCRIPTION_CONSTRAINT, "description", unique=True, postgresql_where=text("NOT done")),
    )

    id: int | None = Field(default=None, primary_key=True)
    description: str = Field(max_length=DESCRIPTION_MAX_LENGTH)
    done: bool = Field(default=False)
    created_at: datetime = Field(default_factory=_now, sa_type=DateTime(timezone=True))
