"""Constraint names that differ between the models and the database (for `check`).

Alembic's autogenerate compares unique constraints and indexes by name, but matches primary
keys, foreign keys and check constraints without looking at their names. A database made
without a naming convention (`todo_pkey`, `todo_owner_id_fkey`: PostgreSQL's names, as
`mountaineer.database` left them) then looks the same as one made under it (`pk_todo`,
`fk_todo_owner_id_owner`), until a migration drops a constraint by a name one of them lacks.
`name_differences` lists those, for the tables that are both in the models and the database:

- a primary key named otherwise;
- a foreign key on the same columns, to the same table and columns, named otherwise;
- named check constraints of the models missing from the database, and check constraints of
  the database the models lack (when the models' checks on that table all have names).

Constraints the models leave unnamed (no naming convention for their kind) are not
compared: PostgreSQL picks their names. Names longer than PostgreSQL's 63 bytes are compared
as SQLAlchemy shortens them in DDL.
"""

import hashlib
from collections.abc import Iterable
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKeyConstraint, MetaData, Table, inspect
from sqlalchemy.engine import Connection, Inspector
from sqlalchemy.schema import conv

__all__ = ["RENAME_ADVICE", "name_differences"]

RENAME_ADVICE = (
    "Constraint names differ: give the models the database's names (a naming convention, see "
    "docs/moving-from-mountaineer-database.md), or rename them in a revision of your own "
    "(`mountaineer-db migrate generate --empty -m MESSAGE`, then "
    "`op.execute('ALTER TABLE t RENAME CONSTRAINT old TO new')`); autogenerate does not write renames."
)
"""Appended to `check`'s error when it lists a rename."""

_MAX_NAME = 63  # PostgreSQL's NAMEDATALEN - 1


def _final_name(name: Any) -> str | None:
    """The name the constraint gets in the database, or None when PostgreSQL chooses it.

    SQLAlchemy shortens a convention-made name over the limit to its first 55 characters, `_`
    and the last 4 hex digits of its md5 (`IdentifierPreparer._truncate_and_render_maxlen_name`).
    """
    if not isinstance(name, str) or not name:  # None, or SQLAlchemy's "no name yet" marker
        return None
    if isinstance(name, conv) and len(name) > _MAX_NAME:
        return f"{name[: _MAX_NAME - 8]}_{hashlib.md5(name.encode('utf-8'), usedforsecurity=False).hexdigest()[-4:]}"
    return str(name)


def _checks(table: Table) -> Iterable[CheckConstraint]:
    yield from (item for item in table.constraints if isinstance(item, CheckConstraint))
    for column in table.columns:
        yield from (item for item in column.constraints if isinstance(item, CheckConstraint))


def _fk_key(schema: str | None, table: str, columns: Iterable[str], referred: Iterable[str]) -> tuple[Any, ...]:
    return (schema, table, tuple(columns), tuple(referred))


def _table_differences(table: Table, inspector: Inspector) -> list[str]:
    differences: list[str] = []
    where = table.fullname
    wanted = _final_name(table.primary_key.name) if table.primary_key.columns else None
    found = inspector.get_pk_constraint(table.name, schema=table.schema).get("name")
    if wanted and found and wanted != found:
        differences.append(f"rename primary key {found} on {where} to {wanted}")

    database_fks = {
        _fk_key(
            fk.get("referred_schema") or table.schema,
            fk["referred_table"],
            fk["constrained_columns"],
            fk["referred_columns"],
        ): fk.get("name")
        for fk in inspector.get_foreign_keys(table.name, schema=table.schema)
    }
    for constraint in table.constraints:
        if not isinstance(constraint, ForeignKeyConstraint) or not constraint.elements:
            continue
        referred = constraint.elements[0].column.table
        key = _fk_key(
            referred.schema,
            referred.name,
            [column.name for column in constraint.columns],
            [element.column.name for element in constraint.elements],
        )
        wanted, found = _final_name(constraint.name), database_fks.get(key)
        if wanted and found and wanted != found:
            columns = ", ".join(column.name for column in constraint.columns)
            differences.append(f"rename foreign key {found} on {where} ({columns}) to {wanted}")

    checks = list(_checks(table))
    named = {name for name in (_final_name(check.name) for check in checks) if name}
    found_checks = inspector.get_check_constraints(table.name, schema=table.schema)
    database_checks = {item["name"] for item in found_checks if item["name"]}
    differences.extend(f"add check constraint {name} on {where}" for name in sorted(named - database_checks))
    if len(named) == len(checks):  # every check of the models is named: the rest of the database's are extra
        differences.extend(f"remove check constraint {name} on {where}" for name in sorted(database_checks - named))
    return differences


def name_differences(connection: Connection, metadata: MetaData) -> list[str]:
    """One line per constraint named differently in `metadata` and the database on `connection`."""
    inspector = inspect(connection)
    differences: list[str] = []
    for table in metadata.sorted_tables:
        if inspector.has_table(table.name, schema=table.schema):
            differences.extend(_table_differences(table, inspector))
    return differences
