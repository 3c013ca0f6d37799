"""What every migration command shares: errors, `Revision`, Alembic's config, the connection,
and running an upgrade or downgrade with its failures reported as they are (`run_watched`).

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

from mountaineer_db.exceptions import (  # defined there with every other error
    MigrationCheckError,
    MigrationError,
    MigrationLockTimeoutError,
    ResourceNotFoundError,
)
from mountaineer_db.migrations.autocommit import OutsideTransactions
from mountaineer_db.migrations.environment import migration_engine, migration_lock
from mountaineer_db.migrations.project import load_config, migrations_directory
from mountaineer_db.settings.config import DatabaseConfig

__all__ = [
    "MigrationCheckError",
    "MigrationError",
    "MigrationLockTimeoutError",
    "Revision",
    "alembic_errors",
    "applied",
    "as_tuple",
    "failing_revision",
    "failure_detail",
    "lineage",
    "lock_timeout_error",
    "on_connection",
    "ordered",
    "run_watched",
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
    return f"A migration failed and was rolled back: {failure_detail(error)}"


def failure_detail(error: DBAPIError) -> str:
    """The database's reason for a failed statement, in one line, with what to do when we know it."""
    detail = _first_line(error)
    hint = _ENUM_VALUE_IN_USE if detail.startswith("invalid input value for enum") else ""
    return f"{detail}{hint}"


def _first_line(error: DBAPIError) -> str:
    text = str(error.orig or error).strip().splitlines()[0]
    # SQLAlchemy's asyncpg adapter prefixes the class: "<class 'asyncpg....'>: message".
    return text.split(">: ", 1)[1] if text.startswith("<class '") and ">: " in text else text


def failing_revision(script: ScriptDirectory, heads: tuple[str, ...], *, upgrading_to: str | None) -> Revision | None:
    """The revision a failed run was on: the first one still pending, or for a downgrade the head."""
    try:
        if upgrading_to is not None:
            wanted = lineage(script, [item.revision for item in script.get_revisions(upgrading_to) if item])
            pending = ordered(script, wanted - lineage(script, heads), newest_first=False)
            return pending[0] if pending else None
        if len(heads) == 1:
            return Revision.from_script(script.get_revision(heads[0]))
    except (CommandError, ResolutionError, ValueError):
        pass  # a relative target such as +2: the message just says "A migration"
    return None


def lock_timeout_error(
    config: DatabaseConfig, connection: Connection, script: ScriptDirectory, *, upgrading_to: str | None
) -> MigrationLockTimeoutError:
    """The error for a lock timeout, naming the revision that waited and where the database stays."""
    connection.rollback()
    heads = current_heads(connection)
    failing = failing_revision(script, heads, upgrading_to=upgrading_to)
    return MigrationLockTimeoutError(lock_timeout_message(config, failing, list(heads)))


def _failure(
    connection: Connection,
    script: ScriptDirectory,
    watch: OutsideTransactions,
    error: DBAPIError,
    *,
    upgrading_to: str | None,
) -> MigrationError:
    """The error for a failed run: what failed, what was rolled back and what stays (never more)."""
    detail = failure_detail(error)
    try:
        connection.rollback()
        heads = current_heads(connection)
        failing = failing_revision(script, heads, upgrading_to=upgrading_to)
        what = f"Revision {failing.id} ({failing.message})" if failing is not None else "A migration"
        where = f"revision {', '.join(heads)}" if heads else "no revision"
        return MigrationError(watch.failure_message(connection, what=what, detail=detail, where=where))
    except DBAPIError as lookup:
        return MigrationError(
            f"A migration failed: {detail}. What it left could not be read ({type(lookup.orig or lookup).__name__}): "
            "check the revision with `mountaineer-db migrate current` and look for INVALID indexes "
            "(check_database() lists them) before running it again."
        )


def run_watched(
    config: DatabaseConfig,
    connection: Connection,
    script: ScriptDirectory,
    run: Callable[[], None],
    *,
    upgrading_to: str | None,
) -> None:
    """`run()` (an Alembic upgrade or downgrade) with its statements outside transactions watched,
    and its database errors reported as what they left behind."""
    watch = OutsideTransactions(item.revision for item in script.walk_revisions())
    try:
        with watch.watch(connection):
            run()
    except DBAPIError as error:
        if sqlstate(error) == LOCK_NOT_AVAILABLE:
            raise lock_timeout_error(config, connection, script, upgrading_to=upgrading_to) from error
        raise _failure(connection, script, watch, error, upgrading_to=upgrading_to) from error
    except ValueError as error:
        # alembic-postgresql-enum wraps some database errors of sync_enum_values in a ValueError.
        if not isinstance(error.__cause__, DBAPIError):
            raise
        raise _failure(connection, script, watch, error.__cause__, upgrading_to=upgrading_to) from error


async def on_connection(
    config: DatabaseConfig,
    work: Callable[[Connection], T],
    *,
    lock: bool,
    unless: Callable[[Connection], T | None] | None = None,
) -> T:
    """Run `work` on a sync connection to the migrations URL (optionally under the lock).

    `unless`, run first and without the lock, may return the result instead (the fast path
    of `apply` on a database already migrated); it must leave no transaction open.
    """
    engine = migration_engine(config)
    try:
        async with engine.connect() as connection:
            if unless is not None:
                early = await connection.run_sync(unless)
                if early is not None:
                    return early
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
