"""Alembic commands as plain async functions: the CLI is a thin shell over these.

```python
from mountaineer_db import migrations

await migrations.apply()                      # upgrade to head
await migrations.generate("add todo priority")
await migrations.check()                      # raises MigrationCheckError on drift
```

Every function takes `config=` (default: see `load_config`). Alembic gets no ini file: the
app's `DatabaseConfig`, the target metadata and an open connection on the migrations URL
reach `env.py` through `Config.attributes`, so a password with `%` or `@` is never parsed
as ini text. `apply` and `rollback` hold a PostgreSQL advisory lock for the whole run, so
N deploy processes running `apply` at once apply each revision exactly once.
"""

import logging
import shutil
from argparse import Namespace
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.operations.ops import MigrationScript
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import ResolutionError
from alembic.util import CommandError
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from mountaineer_db.config import DatabaseConfig
from mountaineer_db.engine import describe_target
from mountaineer_db.exceptions import MountaineerDBError, ResourceAlreadyExistsError, ResourceNotFoundError
from mountaineer_db.migrations.differences import describe_difference
from mountaineer_db.migrations.environment import migration_engine, migration_lock
from mountaineer_db.migrations.project import load_config, load_metadata, migrations_directory

__all__ = [
    "MigrationCheckError",
    "MigrationError",
    "Revision",
    "apply",
    "check",
    "current",
    "generate",
    "history",
    "init",
    "rollback",
]

logger = logging.getLogger("mountaineer_db")

T = TypeVar("T")

TEMPLATES: Final = Path(__file__).parent / "templates"
FILE_TEMPLATE: Final = "%%(year)d_%%(month).2d_%%(day).2d_%%(hour).2d%%(minute).2d_%%(rev)s_%%(slug)s"


class MigrationError(MountaineerDBError):
    """A migration command could not do what was asked (the message says why and what to do)."""


class MigrationCheckError(MigrationError):
    """The database does not match the models: unapplied revisions or schema differences."""

    def __init__(self, message: str, *, pending: list["Revision"], differences: list[str]) -> None:
        super().__init__(message)
        self.pending = pending
        self.differences = differences


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
            down_revisions=_as_tuple(script.down_revision),
            is_head=script.is_head,
            path=Path(script.path),
        )

    def __str__(self) -> str:
        return f"{self.id}{' (head)' if self.is_head else ''}  {self.message}".rstrip()


def _as_tuple(value: str | Iterable[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


# -- plumbing -------------------------------------------------------------------------------


def _alembic_config(config: DatabaseConfig, directory: Path, **attributes: Any) -> AlembicConfig:
    # No ini file (nothing read from disk, logging untouched) and quiet: a library does not print.
    alembic_config = AlembicConfig(cmd_opts=Namespace(quiet=True))
    alembic_config.set_main_option("script_location", str(directory).replace("%", "%%"))
    alembic_config.set_main_option("path_separator", "os")
    alembic_config.set_main_option("file_template", FILE_TEMPLATE)
    alembic_config.attributes["mountaineer_db_config"] = config
    alembic_config.attributes.update(attributes)
    return alembic_config


def _setup(config: DatabaseConfig | None, **attributes: Any) -> tuple[DatabaseConfig, AlembicConfig, ScriptDirectory]:
    config = config if config is not None else load_config()
    directory = migrations_directory(config)
    if not (directory / "env.py").is_file():
        raise ResourceNotFoundError(
            f"No migrations folder at {directory}; create it with `mountaineer-db migrate init`."
        )
    alembic_config = _alembic_config(config, directory, **attributes)
    return config, alembic_config, ScriptDirectory.from_config(alembic_config)


@contextmanager
def _alembic_errors() -> Iterator[None]:
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
        detail = str(error.orig or error).strip().splitlines()[0]
        raise MigrationError(f"A migration failed and was rolled back: {detail}") from error


async def _on_connection(config: DatabaseConfig, work: Callable[[Connection], T], *, lock: bool) -> T:
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


def _applied(connection: Connection, script: ScriptDirectory) -> set[str]:
    """Ids of every revision applied to the database (the current heads and their ancestors)."""
    heads = MigrationContext.configure(connection).get_current_heads()
    connection.commit()
    return _lineage(script, heads)


def _lineage(script: ScriptDirectory, heads: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    stack = list(heads)
    while stack:
        revision_id = stack.pop()
        if revision_id in seen:
            continue
        seen.add(revision_id)
        stack.extend(_as_tuple(script.get_revision(revision_id).down_revision))
    return seen


def _ordered(script: ScriptDirectory, ids: set[str], *, newest_first: bool) -> list[Revision]:
    revisions = [Revision.from_script(item) for item in script.walk_revisions() if item.revision in ids]
    return revisions if newest_first else revisions[::-1]


# -- the commands -------------------------------------------------------------------------


async def init(*, config: DatabaseConfig | None = None) -> Path:
    """Create `<PACKAGE>/migrations/` with an async `env.py`, a script template and `versions/`."""
    config = config if config is not None else load_config()
    directory = migrations_directory(config)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ResourceAlreadyExistsError(
            f"{directory} already exists. Keep using it (mountaineer-db migrate generate -m MESSAGE), "
            "or move it away first to start over."
        )
    (directory / "versions").mkdir(parents=True, exist_ok=True)
    (directory / "versions" / ".gitkeep").touch()
    for name in ("env.py", "script.py.mako", "README"):
        shutil.copyfile(TEMPLATES / name, directory / name)
    logger.info("Created the migrations folder %s", directory)
    return directory


def _skip_empty(context: MigrationContext, revision: Any, directives: list[MigrationScript]) -> None:
    if directives and directives[0].upgrade_ops is not None and directives[0].upgrade_ops.is_empty():
        directives[:] = []


async def generate(message: str, *, config: DatabaseConfig | None = None, empty: bool = False) -> Revision | None:
    """Write a new revision autogenerated from the models; None when nothing changed.

    With `empty=True` the revision is written without looking at the database, for a
    hand-written (data) migration. Autogenerate needs the database at the latest revision.
    """
    if not message.strip():
        raise MigrationError("A revision needs a message: mountaineer-db migrate generate -m 'add todo priority'.")
    config, alembic_config, _script = _setup(config)
    if empty:
        with _alembic_errors():
            created: Any = command.revision(alembic_config, message=message)
    else:
        alembic_config.attributes["target_metadata"] = load_metadata(config)

        def work(connection: Connection) -> Any:
            alembic_config.attributes["connection"] = connection
            with _alembic_errors():
                return command.revision(
                    alembic_config, message=message, autogenerate=True, process_revision_directives=_skip_empty
                )

        created = await _on_connection(config, work, lock=False)
    scripts = [item for item in (created if isinstance(created, list) else [created]) if item is not None]
    if not scripts:
        return None
    revision = Revision.from_script(scripts[0])
    logger.info("Wrote revision %s (%s) to %s", revision.id, revision.message, revision.path)
    return revision


async def apply(revision: str = "head", *, config: DatabaseConfig | None = None) -> list[Revision]:
    """Upgrade the database to `revision` (default: head); returns what was applied, oldest first.

    Holds the migration lock throughout: a process that waited for it finds the work done.
    """
    config, alembic_config, script = _setup(config, target_metadata=None)

    def work(connection: Connection) -> list[Revision]:
        with _alembic_errors():
            before = _applied(connection, script)
            alembic_config.attributes["connection"] = connection
            command.upgrade(alembic_config, revision)
            after = _applied(connection, script)
            return _ordered(script, after - before, newest_first=False)

    applied = await _on_connection(config, work, lock=True)
    logger.info("Applied %d revision(s) to %s", len(applied), describe_target(config.migrations_url))
    return applied


async def rollback(
    revision: str | None = None, *, steps: int | None = None, config: DatabaseConfig | None = None
) -> list[Revision]:
    """Downgrade to `revision` (it stays applied; "base" removes all), or by `steps` (default 1).

    Returns the revisions rolled back, newest first.
    """
    if revision is not None and steps is not None:
        raise MigrationError("Pass either a revision or a number of steps (-n) to roll back, not both.")
    if revision is None and steps is None:
        steps = 1
    if steps is not None and steps < 1:
        raise MigrationError(f"Cannot roll back {steps} steps; use -n 1 or more.")
    target = revision if revision is not None else f"-{steps}"
    config, alembic_config, script = _setup(config, target_metadata=None)

    def work(connection: Connection) -> list[Revision]:
        with _alembic_errors():
            if revision is not None and revision != "base":
                script.get_revisions(revision)  # an unknown revision: ResourceNotFoundError, even with none applied
            before = _applied(connection, script)
            if not before:
                raise MigrationError("Nothing to roll back: no migration has been applied to this database.")
            alembic_config.attributes["connection"] = connection
            command.downgrade(alembic_config, target)
            after = _applied(connection, script)
            return _ordered(script, before - after, newest_first=True)

    return await _on_connection(config, work, lock=True)


async def current(*, config: DatabaseConfig | None = None) -> list[Revision]:
    """The revisions the database is at (empty when none is applied)."""
    config, _alembic_config, script = _setup(config)

    def work(connection: Connection) -> list[Revision]:
        with _alembic_errors():
            heads = MigrationContext.configure(connection).get_current_heads()
            return [Revision.from_script(script.get_revision(head)) for head in heads]

    return await _on_connection(config, work, lock=False)


async def history(*, config: DatabaseConfig | None = None) -> list[Revision]:
    """Every revision in the migrations folder, newest first (reads no database)."""
    _config, _alembic_config, script = _setup(config)
    with _alembic_errors():
        return [Revision.from_script(item) for item in script.walk_revisions()]


async def check(*, config: DatabaseConfig | None = None) -> None:
    """Raise `MigrationCheckError` unless the database is at head and matches the models.

    Usable in CI and at app start. The error lists the unapplied revisions, or else every
    difference autogenerate finds, one per line.
    """
    config, alembic_config, script = _setup(config)
    alembic_config.attributes["target_metadata"] = load_metadata(config)
    found: dict[str, Any] = {}

    def compare(heads: Any, context: MigrationContext) -> list[Any]:
        found["heads"] = _as_tuple(heads)
        found["diffs"] = compare_metadata(context, context.opts["target_metadata"])
        return []

    def work(connection: Connection) -> None:
        alembic_config.attributes["connection"] = connection
        with _alembic_errors(), EnvironmentContext(alembic_config, script, fn=compare, dont_mutate=True):
            script.run_env()

    await _on_connection(config, work, lock=False)
    with _alembic_errors():
        pending_ids = _lineage(script, script.get_heads()) - _lineage(script, found["heads"])
    pending = _ordered(script, pending_ids, newest_first=False)
    if pending:
        listed = ", ".join(f"{item.id} ({item.message})" for item in pending)
        raise MigrationCheckError(
            f"The database is {len(pending)} revision(s) behind: {listed}. Run `mountaineer-db migrate apply`.",
            pending=pending,
            differences=[],
        )
    differences = [describe_difference(diff) for diff in found["diffs"]]
    if differences:
        lines = "\n".join(f"  {line}" for line in differences)
        raise MigrationCheckError(
            f"The database does not match the models ({len(differences)} difference(s)); generate a "
            f"migration (mountaineer-db migrate generate -m MESSAGE) and apply it:\n{lines}",
            pending=[],
            differences=differences,
        )
