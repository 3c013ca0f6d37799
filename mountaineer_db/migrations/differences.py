"""Readable one-line descriptions of Alembic's autogenerate differences (for `check`)."""

from typing import Any

from sqlalchemy import Index, Table
from sqlalchemy.dialects.postgresql.base import PGDialect
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.types import TypeEngine

__all__ = ["describe_difference"]

_CONSTRAINT_LABELS = {
    "UniqueConstraint": "unique constraint",
    "ForeignKeyConstraint": "foreign key",
    "CheckConstraint": "check constraint",
    "PrimaryKeyConstraint": "primary key",
}
_MODIFY_LABELS = {
    "modify_type": "type",
    "modify_nullable": "nullable",
    "modify_default": "server default",
    "modify_comment": "comment",
}


def _qualified(schema: str | None, name: str) -> str:
    return f"{schema}.{name}" if schema else name


def _show(value: Any) -> str:
    if isinstance(value, TypeEngine):
        try:
            return str(value.compile(dialect=PGDialect()))  # type: ignore[no-untyped-call]
        except SQLAlchemyError:
            return repr(value)
    if value is None:
        return "none"
    text = getattr(value, "arg", value)  # a DefaultClause shows its SQL text
    return str(getattr(text, "text", text))


def _columns(item: Any) -> str:
    names = [getattr(column, "name", str(column)) for column in getattr(item, "columns", ())]
    if not names and isinstance(item, Index):
        names = [str(expression) for expression in item.expressions]
    return ", ".join(names)


def _owner(item: Any) -> str:
    table = getattr(item, "table", None)
    return _qualified(table.schema, table.name) if isinstance(table, Table) else "?"


def describe_difference(diff: Any) -> str:
    """`add column todo.priority (INTEGER)`, `remove table legacy`, `change type of column ...`.

    `diff` is one entry of `alembic.autogenerate.compare_metadata()`: a tuple, or a list of
    `modify_*` tuples for one column. Unknown kinds fall back to their repr.
    """
    if isinstance(diff, list):
        return "; ".join(describe_difference(item) for item in diff)
    kind = diff[0]
    verb = "add" if kind.startswith("add_") else "remove"
    if kind in ("add_table", "remove_table"):
        table = diff[1]
        return f"{verb} table {_qualified(table.schema, table.name)}"
    if kind in ("add_column", "remove_column"):
        schema, table_name, column = diff[1], diff[2], diff[3]
        return f"{verb} column {_qualified(schema, table_name)}.{column.name} ({_show(column.type)})"
    if kind in ("add_index", "remove_index"):
        index = diff[1]
        return f"{verb} index {index.name or '(unnamed)'} on {_owner(index)} ({_columns(index)})"
    if kind in ("add_constraint", "remove_constraint", "add_fk", "remove_fk"):
        constraint = diff[1]
        label = _CONSTRAINT_LABELS.get(type(constraint).__name__, "constraint")
        return f"{verb} {label} {constraint.name or '(unnamed)'} on {_owner(constraint)} ({_columns(constraint)})"
    if kind in _MODIFY_LABELS:
        schema, table_name, column_name, _existing, old, new = diff[1:7]
        return (
            f"change {_MODIFY_LABELS[kind]} of column {_qualified(schema, table_name)}.{column_name}: "
            f"{_show(old)} -> {_show(new)}"
        )
    if kind in ("add_enum_value", "change_enum_variants"):  # alembic-postgresql-enum: old, new, columns
        old, new, columns = diff[1], diff[2], diff[3]
        used_by = ", ".join(f"{c.table_name}.{c.column_name}" for c in columns) or "no column"
        return f"change values of the enum used by {used_by}: {', '.join(old)} -> {', '.join(new)}"
    if kind in ("create_enum", "drop_enum"):  # alembic-postgresql-enum: name, schema, values
        return f"{'add' if kind == 'create_enum' else 'remove'} enum {diff[1]} ({', '.join(diff[3])})"
    if kind == "rename_enum_value":
        return f"rename value {diff[3]} of enum {diff[2]} to {diff[4]}"
    if kind in ("add_table_comment", "remove_table_comment"):
        return f"{verb} comment on table {_qualified(diff[1].schema, diff[1].name)}"
    return repr(diff)
