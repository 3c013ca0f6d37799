"""Enum columns in migrations: alembic-postgresql-enum, plus renames of values.

Alembic alone does not see a Python `Enum` gain, lose or rename a value. Importing this
module imports `alembic_postgresql_enum`, which registers its autogenerate comparators with
Alembic (for `generate`, `check`, and any `env.py` that imports `mountaineer_db.migrations`):

- a value added: `op.add_enum_value(...)` (`ALTER TYPE ... ADD VALUE`, no table rewrite);
- a value removed (or values reordered): `op.sync_enum_values(...)`, which creates the new
  type and converts each column using it (a table rewrite under an ACCESS EXCLUSIVE lock);
  rows still holding a removed value make the migration fail and roll back.

A rename cannot be told from a removal plus an addition, so it is declared when the
revision is generated: `generate(..., enum_renames={"status": {"tree": "three"}})`, on the
command line `--rename-enum-value status:tree:three`. The rename is then written as
`ALTER TYPE status RENAME VALUE 'tree' TO 'three'` (instant; rows keep their value, since
PostgreSQL stores enum values by identity, and defaults follow), with any other change
to the same enum after it, and the reverse in `downgrade()`.

Any value and any schema name make a valid migration: names are quoted where PostgreSQL
needs it (a schema called `user`, a reserved word), SQL literals double their quotes, and
the Python of the script is written with `repr` where a value holds a line break, a quote
or a backslash. alembic-postgresql-enum puts values into its SQL between single quotes as
they are, so for its operations the values holding a single quote are written with it
doubled (`'o''clock'`), under a comment saying so (`enum_directives`).
"""

from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import alembic_postgresql_enum  # noqa: F401 - registers the enum comparators with Alembic
from alembic.autogenerate.api import AutogenContext
from alembic.autogenerate.render import renderers
from alembic.operations.ops import DowngradeOps, MigrateOperation, MigrationScript, UpgradeOps
from alembic.runtime.migration import MigrationContext
from alembic_postgresql_enum.operations.add_enum_values import AddEnumValuesOp, check_can_add_values
from alembic_postgresql_enum.operations.sync_enum_values import SyncEnumValuesOp
from sqlalchemy.dialects import postgresql

from mountaineer_db.migrations.plumbing import MigrationError

__all__ = ["EnumRenames", "RenameEnumValueOp", "parse_enum_renames", "rename_enum_values"]

EnumRenames = Mapping[str, Mapping[str, str]]
"""Enum type name → {old value: new value}."""


# PostgreSQL's own quoting rules (reserved words, capitals, quotes); the dialect's __init__ is untyped.
_PREPARER = cast(Any, postgresql.dialect)().identifier_preparer


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _identifier(value: str) -> str:
    """`value` as PostgreSQL reads it: as written where it can be (`public`), else quoted (`"user"`)."""
    return str(_PREPARER.quote(value))


def _python_string(text: str) -> str:
    """`text` as a Python literal: in plain double quotes where that reads as written, else `repr`."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return repr(text)


class RenameEnumValueOp(MigrateOperation):
    """`ALTER TYPE schema.name RENAME VALUE 'old' TO 'new'` (PostgreSQL 10+)."""

    def __init__(self, schema: str, name: str, old: str, new: str) -> None:
        self.schema = schema
        self.name = name
        self.old = old
        self.new = new

    @property
    def sql(self) -> str:
        return (
            f"ALTER TYPE {_identifier(self.schema)}.{_identifier(self.name)} "
            f"RENAME VALUE {_literal(self.old)} TO {_literal(self.new)}"
        )

    def reverse(self) -> "RenameEnumValueOp":
        return RenameEnumValueOp(self.schema, self.name, self.new, self.old)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("rename_enum_value", self.schema, self.name, self.old, self.new)


@renderers.dispatch_for(RenameEnumValueOp)
def _render_rename(autogen_context: AutogenContext, op: RenameEnumValueOp) -> str:
    prefix = autogen_context.opts.get("alembic_module_prefix", "op.")
    return f"{prefix}execute({_python_string(op.sql)})"


class _NoteOp(MigrateOperation):
    """A comment line in a generated script."""

    def __init__(self, text: str) -> None:
        self.text = text

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("note", self.text)


@renderers.dispatch_for(_NoteOp)
def _render_note(autogen_context: AutogenContext, op: _NoteOp) -> str:
    return f"# {op.text}"


_QUOTES_DOUBLED = (
    "alembic-postgresql-enum writes these values into SQL between single quotes as they are: "
    "a single quote in a value is doubled here."
)


def _doubled(values: Iterable[str]) -> list[str]:
    return [value.replace("'", "''") for value in values]


def _quote_values_for_sql(ops: list[MigrateOperation]) -> None:
    """alembic-postgresql-enum's operations with a `'` in a value: the value as its SQL needs it, and a note."""
    for op in list(ops):
        if not isinstance(op, (AddEnumValuesOp, SyncEnumValuesOp)):
            continue
        if not any("'" in value for value in [*op.old_values, *op.new_values]):
            continue
        op.old_values = _doubled(op.old_values)
        op.new_values = _doubled(op.new_values)
        ops.insert(next(i for i, item in enumerate(ops) if item is op), _NoteOp(_QUOTES_DOUBLED))


def parse_enum_renames(specs: Iterable[str]) -> dict[str, dict[str, str]]:
    """`["status:tree:three", ...]` → `{"status": {"tree": "three"}}` (the CLI's notation)."""
    renames: dict[str, dict[str, str]] = {}
    for spec in specs:
        parts = spec.split(":")
        if len(parts) != 3 or not all(parts):
            raise MigrationError(
                f"--rename-enum-value {spec!r} is not ENUM:OLD:NEW; for example status:tree:three "
                "(ENUM is the PostgreSQL type name, by default the Python class name in lower case)."
            )
        enum, old, new = parts
        renames.setdefault(enum, {})[old] = new
    return renames


def _remainder(op: SyncEnumValuesOp, renamed: list[str]) -> MigrateOperation | None:
    """What is left to do after the renames: nothing, added values, or a full sync."""
    if renamed == list(op.new_values):
        return None
    cls = AddEnumValuesOp if check_can_add_values(renamed, op.new_values) else SyncEnumValuesOp
    return cls(op.schema, op.name, renamed, list(op.new_values), op.affected_columns, op.indexes_to_recreate)


def _check(op: SyncEnumValuesOp, renames: Mapping[str, str]) -> None:
    old_values, new_values = list(op.old_values), list(op.new_values)
    for old, new in renames.items():
        if old not in old_values or old in new_values:
            raise MigrationError(
                f"Cannot rename {old!r} in enum {op.name!r}: the database has {old_values} and the models have "
                f"{new_values}, so {old!r} is not a value being removed."
            )
        if new not in new_values or new in old_values:
            raise MigrationError(
                f"Cannot rename {old!r} to {new!r} in enum {op.name!r}: the database has {old_values} and the "
                f"models have {new_values}, so {new!r} is not a value being added."
            )


def _replace(ops: list[MigrateOperation], target: MigrateOperation, replacement: list[MigrateOperation]) -> None:
    index = next(i for i, item in enumerate(ops) if item is target)
    ops[index : index + 1] = replacement


def rename_enum_values(renames: EnumRenames) -> Callable[[MigrationContext, Any, list[MigrationScript]], None]:
    """A `process_revision_directives` hook writing `renames` as RENAME VALUE (see the module doc),
    and the values of alembic-postgresql-enum's operations as its SQL needs them.

    Raises `MigrationError` (and nothing is written) when a rename does not match what
    autogenerate found: an unknown enum, or a value not removed / not added.
    """

    def hook(context: MigrationContext, revision: Any, directives: list[MigrationScript]) -> None:
        upgrade = directives[0].upgrade_ops if directives else None
        downgrade = directives[0].downgrade_ops if directives else None
        if not isinstance(upgrade, UpgradeOps) or not isinstance(downgrade, DowngradeOps):
            return  # not an autogenerated revision: nothing to rename
        _rename(upgrade, downgrade)
        _quote_values_for_sql(upgrade.ops)
        _quote_values_for_sql(downgrade.ops)

    def _rename(upgrade: UpgradeOps, downgrade: DowngradeOps) -> None:
        changed = {op.name: op for op in upgrade.ops if isinstance(op, (SyncEnumValuesOp, AddEnumValuesOp))}
        for enum, values in renames.items():
            found = changed.get(enum)
            if found is None or isinstance(found, AddEnumValuesOp):
                known = ", ".join(sorted(changed)) or "none"
                raise MigrationError(
                    f"Cannot rename values of enum {enum!r}: autogenerate found no removed value in it (enums "
                    f"with removed values: {known}). Check the enum's type name and that the models are saved."
                )
            _check(found, values)
            renamed = [values.get(value, value) for value in found.old_values]
            steps = [RenameEnumValueOp(found.schema, found.name, old, new) for old, new in values.items()]
            remainder = _remainder(found, renamed)
            _replace(upgrade.ops, found, [*steps, *([remainder] if remainder else [])])
            reverse = next(
                op for op in downgrade.ops if isinstance(op, SyncEnumValuesOp) and op.name == enum
            )
            undo = [step.reverse() for step in reversed(steps)]
            _replace(downgrade.ops, reverse, [*([remainder.reverse()] if remainder else []), *undo])

    return hook
