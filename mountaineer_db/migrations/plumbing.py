"""What every migration command shares: errors, `Revision`, Alembic's config, the connection.

Internal to `mountaineer_db.migrations` (the commands, the review of SQL, stamping); the
errors and `Revision` are public through `mountaineer_db.migrations`.
"""

from argparse import Namespace
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import ResolutionError
from alembic.util import CommandError
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from mountaineer_db.config import DatabaseConfig
from mountaineer_db.exceptions import (  # defined there with every other error
    MigrationCheckError,
    MigrationError,
    MigrationLockTimeoutError,
    ResourceNotFoundError,
)
from mountaineer_db.migrations.environment import migration_engine, migration_lock
from mountaineer_db.migrations.project import load_config, migrations_directory

__all__ = [
    "MigrationCheckError",
    "MigrationError",
    "MigrationLockTimeoutError",
    "Revision",
    "alembic_errors",
    "applied",
    "as_tuple",
    "lineage",
    "on_connection",
    "ordered",
    "setup",
]

T = TypeVar("T")

FILE_TEMPLATE: Final = "%%(year)d_%%(month).2d_%%(day).2d_%%(hour).2d%%(minute).2d_%%(rev)s_%%(slug)s"
LOCK_NOT_AVAILABLE: Final = "55P03"
"""SQLSTATE of `lock_timeout` expiring (and of NOWAIT failing)."""


@dataclass(frozen=True)
class Revision:
    """One migration script."""

    id: str
    message: str
    down_revisions: tuple[str, ...]
    is_head: bool
    path: Path

    @classmethod
    def from_script(cls, script: Script) -> "Revision":
        return cls(
            id=script.revision,
            message=script.doc or "",
            down_revisions=as_tuple(script.down_revision),
            is_head=script.is_head,
            path=Path(script.path),
        )

    def __str__(self) -> str:
        return f"{self.id}{' (head)' if self.is_head else ''}  {self.message}".rstrip()


def as_tuple(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _alembic_config(config: DatabaseConfig, directory: Path, **attributes: Any) -> AlembicConfig:
    # No ini file (nothing read from disk, logging untouched) and quiet: a library does not print.
    alembic_config = AlembicConfig(cmd_opts=Namespace(quiet=True))
    alembic_config.set_main_option("script_location", str(directory).replace("%", "%%"))
    alembic_config.set_main_option("path_separator", "os")
    alembic_config.set_main_option("file_template", FILE_TEMPLATE)
    alembic_config.attributes["mountaineer_db_config"] = config
    alembic_config.attributes.update(attributes)
    return alembic_config


def setup(config: DatabaseConfig | None, **attributes: Any) -> tuple[DatabaseConfig, AlembicConfig, ScriptDirectory]:
    """The config (default: `load_config()`), an Alembic config carrying it, and the scripts."""
    config = config if config is not None else load_config()
    directory = migrations_directory(config)
    if not (directory / "env.py").is_file():
        raise ResourceNotFoundError(
            f"No migrations folder at {directory}; create it with `mountaineer-db migrate init`."
        )
    alembic_config = _alembic_config(config, directory, **attributes)
    return config, alembic_config, ScriptDirectory.from_config(alembic_config)


def lock_timeout_message(config: DatabaseConfig, revision: Revision | None, current: list[str]) -> str:
    """The one line a lock timeout is reported with: what happened, where things stand, what to do."""
    what = f"Revision {revision.id} ({revision.message})" if revision is not None else "A migration"
    where = f"revision {', '.join(current)}" if current else "no revision"
    return (
        f"{what} waited more than MIGRATIONS_LOCK_TIMEOUT={config.MIGRATIONS_LOCK_TIMEOUT:g}s for a lock held by "
        f"another transaction and was rolled back; the database stays at {where}. Find the blocking transaction "
        "in pg_stat_activity (long-running or idle in transaction) and end it, or retry off-peak, or raise "
        "MIGRATIONS_LOCK_TIMEOUT."
    )


def sqlstate(error: DBAPIError) -> str | None:
    """The SQLSTATE of a database error, if the driver reported one."""
    code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    return code if isinstance(code, str) else None


@contextmanager
def alembic_errors() -> Iterator[None]:
    """Alembic's and the database's errors as ours, each with a message that says what to do."""
    try:
        yield
    except CommandError as error:
        message = str(error)
        if isinstance(error.__cause__, ResolutionError) or message.startswith("Can't locate revision"):
            raise ResourceNotFoundError(
                f"{message}. Run `mountaineer-db migrate history` to list the revisions."
            ) from error
        if message == "Target database is not up to date.":
            raise MigrationError(
                "The database is not at the latest revision; run `mountaineer-db migrate apply` first, then generate."
            ) from error
        raise MigrationError(message) from error
    except DBAPIError as error:
        if sqlstate(error) == LOCK_NOT_AVAILABLE:
            raise  # the command reports it with the revision and the setting (see `lock_timeout_message`)
        raise MigrationError(_failed(error)) from error
    except ValueError as error:
        # alembic-postgresql-enum wraps some database errors of sync_enum_values in a ValueError.
        if not isinstance(error.__cause__, DBAPIError):
            raise
        raise MigrationError(_failed(error.__cause__)) from error


_ENUM_VALUE_IN_USE: Final = (
    ". Rows still hold an enum value this migration removes: update them first, or for a rename generate the "
    "migration with --rename-enum-value ENUM:OLD:NEW."
)


def _failed(error: DBAPIError) -> str:
    detail = _first_line(error)
    hint = _ENUM_VALUE_IN_USE if detail.startswith("invalid input value for enum") else ""
    return f"A migration failed and was rolled back: {detail}{hint}"


def _first_line(error: DBAPIError) -> str:
    text = str(error.orig or error).strip().splitlines()[0]
    # SQLAlchemy's asyncpg adapter prefixes the class: "<class 'asyncpg....'>: message".
    return text.split(">: ", 1)[1] if text.startswith("<class '") and ">: " in text else text


async def on_connection(config: DatabaseConfig, work: Callable[[Connection], T], *, lock: bool) -> T:
    """Run `work` on a sync connection to the migrations URL (optionally under the lock)."""
    engine = migration_engine(config)
    try:
        async with engine.connect() as connection:
            if not lock:
                return await connection.run_sync(work)
            async with migration_lock(connection):
                return await connection.run_sync(work)
    finally:
        await engine.dispose()


def current_heads(connection: Connection) -> tuple[str, ...]:
    """The revision ids the database is at, read in a transaction of its own."""
    heads = MigrationContext.configure(connection).get_current_heads()
    connection.commit()
    return heads


def applied(connection: Connection, script: ScriptDirectory) -> set[str]:
    """Ids of every revision applied to the database (the current heads and their ancestors)."""
    return lineage(script, current_heads(connection))


def lineage(script: ScriptDirectory, heads: Iterable[str]) -> set[str]:
    """`heads` and all their ancestors."""
    seen: set[str] = set()
    stack = list(heads)
    while stack:
        revision_id = stack.pop()
        if revision_id in seen:
            continue
        seen.add(revision_id)
        stack.extend(as_tuple(script.get_revision(revision_id).down_revision))
    return seen


def ordered(script: ScriptDirectory, ids: set[str], *, newest_first: bool) -> list[Revision]:
    """The revisions of `ids`, in migration order."""
    revisions = [Revision.from_script(item) for item in script.walk_revisions() if item.revision in ids]
    return revisions if newest_first else revisions[::-1]
