"""Databases that have the models' tables but record no migration, and how they are adopted.

`createdb --create-tables` before the app had migrations, the old `mountaineer.database`
(`handle_createdb`, its own migration tool) or a hand-made schema leave tables and no
`alembic_version`. Applying the first revision there fails (`relation "todo" already
exists`); such a database is adopted with `migrate stamp` instead. `apply` says so when it
fails that way, and the development database does not apply migrations to it at all
(`adoption_advice`), so a running development server cannot trip over it.
"""

from typing import Final

from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from mountaineer_db.exceptions import MigrationError
from mountaineer_db.migrations.plumbing import on_connection, setup, sqlstate
from mountaineer_db.migrations.project import load_config, load_metadata
from mountaineer_db.settings.config import DatabaseConfig

__all__ = [
    "ALREADY_EXISTS",
    "adoption_advice",
    "adoption_error",
    "is_adoption_failure",
    "stamp_advice",
    "unadopted_tables",
]

ALREADY_EXISTS: Final = frozenset({"42P07", "42710"})
"""SQLSTATEs of creating what exists: duplicate_table (tables, indexes, sequences) and duplicate_object."""


def stamp_advice(script: ScriptDirectory) -> str:
    """What to run instead of `apply`: stamp the revision the tables match, then check."""
    bases = script.get_bases()
    revision = bases[0] if len(bases) == 1 else "REVISION"
    return (
        f"adopt it with `mountaineer-db migrate stamp {revision}` (the first revision, or the later one its "
        "tables match) instead of applying, then run `mountaineer-db migrate check`"
    )


def adoption_error(error: DBAPIError, script: ScriptDirectory) -> MigrationError:
    """The error `apply` raises when the first revision meets tables that exist already."""
    text = str(error.orig or error).strip().splitlines()[0]
    # SQLAlchemy's asyncpg adapter prefixes the class: "<class 'asyncpg....'>: message".
    detail = text.split(">: ", 1)[1] if text.startswith("<class '") and ">: " in text else text
    return MigrationError(
        f"A migration failed and was rolled back: {detail}. The database already has tables but records no "
        "migration (made by `createdb --create-tables`, by mountaineer.database or by hand): "
        f"{stamp_advice(script)}."
    )


def is_adoption_failure(error: DBAPIError, applied_before: set[str]) -> bool:
    """True when a revision applied to a database recording none failed on something that exists."""
    return not applied_before and sqlstate(error) in ALREADY_EXISTS


async def unadopted_tables(config: DatabaseConfig | None = None) -> list[str]:
    """The models' tables present in a database that records no revision ([] otherwise)."""
    config = config if config is not None else load_config()
    metadata = load_metadata(config)

    def work(connection: Connection) -> list[str]:
        if MigrationContext.configure(connection).get_current_heads():
            return []
        inspector = inspect(connection)
        return [table.fullname for table in metadata.sorted_tables if inspector.has_table(table.name, table.schema)]

    return await on_connection(config, work, lock=False)


async def adoption_advice(config: DatabaseConfig | None = None) -> str | None:
    """One line saying the database must be stamped rather than migrated, or None when it need not be."""
    config = config if config is not None else load_config()
    tables = await unadopted_tables(config)
    if not tables:
        return None
    _config, _alembic_config, script = setup(config)
    shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
    return (
        f"The database has tables of the models ({shown}) but records no migration, so its migrations were "
        f"not applied: {stamp_advice(script)}."
    )
