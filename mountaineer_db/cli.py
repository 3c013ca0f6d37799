"""The `mountaineer-db` command: a thin click shell over `mountaineer_db.migrations` and `admin`.

```
mountaineer-db [--config module:ClassName] [--debug] migrate init|generate -m MSG|apply [REV]
               |rollback [REV | -n N]|current|history|check|stamp REV|sql [REV]|lint [REV]
mountaineer-db createdb [--create-tables] [--wait SECONDS]
mountaineer-db dropdb [--yes] [--force]
```

The app config comes from `--config`, else `MOUNTAINEER_DB_CONFIG`, else the config the app
registered (when these commands are mounted in the app's own click CLI:
`cli.add_command(migrate)`). With `DATABASE_EMBEDDED=true` (development) the commands run
against the app's embedded PostgreSQL, started (or reused) under `.mountaineer_db/`.
Expected failures print one line to stderr and exit 1; `--debug` shows the traceback instead.
Nothing connects to a database before a command runs, so `--help` works anywhere.
"""

import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import click

from mountaineer_db import migrations
from mountaineer_db.engines.engine import describe_target, dispose_engines
from mountaineer_db.exceptions import DatabaseConfigError, MountaineerDBError
from mountaineer_db.migrations import admin
from mountaineer_db.migrations.lock import PROGRESS_ATTRIBUTE
from mountaineer_db.servers.embedded import ensure_embedded_database
from mountaineer_db.settings.config import DatabaseConfig

__all__ = ["cli", "createdb", "dropdb", "main", "migrate"]

T = TypeVar("T")


@dataclass(frozen=True)
class _Options:
    config: str | None = None
    debug: bool = False


def _options() -> _Options:
    context = click.get_current_context()
    return context.find_object(_Options) or _Options()


def _config_error_line(error: DatabaseConfigError) -> str:
    problems = []
    for item in error.errors():
        message = str(item["msg"]).removeprefix("Value error, ")
        message = " ".join(line.strip() for line in message.splitlines())
        location = ".".join(str(part) for part in item["loc"])
        problems.append(f"{location}: {message}" if location else message)
    return f"Invalid {error.title} settings: " + "; ".join(problems)


def _fail(error: MountaineerDBError) -> NoReturn:
    if isinstance(error, DatabaseConfigError):
        message = _config_error_line(error)
    elif isinstance(error, migrations.MigrationCheckError):
        message = str(error)  # the differences, one per line, are the point of `check`
    else:
        message = " ".join(str(error).split())
    click.echo(f"Error: {message}", err=True)
    sys.exit(1)


async def _then_dispose(work: Awaitable[T]) -> T:
    try:
        return await work
    finally:
        await dispose_engines()


def _load_config(*, create_database: bool = True) -> DatabaseConfig:
    options = _options()
    try:
        config = migrations.load_config(options.config)
        if config.DATABASE_EMBEDDED and config.SQLALCHEMY_DATABASE_URI is None:
            # Development: start or reuse the app's embedded PostgreSQL (.mountaineer_db/ in the
            # current directory); it stops when this command ends unless the app still uses it.
            # createdb and dropdb leave the app's database to the command itself, so what they
            # print is what they did.
            config = ensure_embedded_database(config, apply_migrations=False, create_database=create_database)
        return config
    except MountaineerDBError as error:
        if options.debug:
            raise
        _fail(error)


def _run(operation: Callable[[DatabaseConfig], Coroutine[Any, Any, T]], config: DatabaseConfig | None = None) -> T:
    """Run `operation(config)` in a fresh event loop; report expected failures in one line."""
    config = config if config is not None else _load_config()
    try:
        return asyncio.run(_then_dispose(operation(config)))
    except MountaineerDBError as error:
        if _options().debug:
            raise
        _fail(error)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_spec",
    metavar="MODULE:CLASS",
    help=f"The app config class, e.g. myapp.config:AppConfig (default: ${migrations.CONFIG_ENV_VAR}, "
    "else the registered Mountaineer config).",
)
@click.option("--debug", is_flag=True, help="Show the full traceback of a failure.")
@click.pass_context
def cli(context: click.Context, config_spec: str | None, debug: bool) -> None:
    """PostgreSQL migrations and database admin for Mountaineer apps."""
    context.obj = _Options(config=config_spec, debug=debug)


@cli.group()
def migrate() -> None:
    """Alembic migrations in <PACKAGE>/migrations/."""


@migrate.command("init")
def migrate_init() -> None:
    """Create <PACKAGE>/migrations/ with an async env.py and a script template."""
    directory = _run(lambda config: migrations.init(config=config))
    click.echo(f"Created {directory}")


@migrate.command("generate")
@click.option("-m", "--message", required=True, help="What the migration does, e.g. 'add todo priority'.")
@click.option("--empty", is_flag=True, help="Write an empty revision for a hand-written migration.")
@click.option(
    "--rename-enum-value",
    "renames",
    multiple=True,
    metavar="ENUM:OLD:NEW",
    help="A renamed enum value (repeatable), written as ALTER TYPE ... RENAME VALUE; ENUM is the type name.",
)
def migrate_generate(message: str, empty: bool, renames: tuple[str, ...]) -> None:
    """Autogenerate a revision from the differences between the models and the database."""

    async def operation(config: DatabaseConfig) -> migrations.Revision | None:
        enum_renames = migrations.parse_enum_renames(renames)
        return await migrations.generate(message, config=config, empty=empty, enum_renames=enum_renames)

    revision = _run(operation)
    if revision is None:
        click.echo("No changes between the models and the database; no revision written.")
    else:
        click.echo(f"Wrote {revision.path} ({revision.id}). Review it, then run: mountaineer-db migrate apply")
        if not revision.down_revisions:  # the first revision: databases that have its tables adopt it instead
            click.echo(
                "This is the first revision. The database it was generated against applies it; another database "
                "that already has these tables (made by createdb --create-tables or an older tool, in production "
                f"say) is adopted instead: mountaineer-db migrate stamp {revision.id}"
            )


@migrate.command("apply")
@click.argument("revision", default="head")
def migrate_apply(revision: str) -> None:
    """Upgrade the database to REVISION (default: head)."""
    applied = _run(lambda config: migrations.apply(revision, config=config))
    for item in applied:
        click.echo(f"Applied {item}")
    if not applied:
        click.echo("Nothing to apply; the database is up to date.")


@migrate.command("rollback")
@click.argument("revision", required=False)
@click.option("-n", "--steps", type=click.IntRange(min=1), help="Roll back this many revisions.")
def migrate_rollback(revision: str | None, steps: int | None) -> None:
    """Downgrade to REVISION (it stays applied; 'base' removes all), or by -n N (default 1)."""
    rolled_back = _run(lambda config: migrations.rollback(revision, steps=steps, config=config))
    for item in rolled_back:
        click.echo(f"Rolled back {item}")


@migrate.command("current")
def migrate_current() -> None:
    """Show the revision the database is at."""
    heads = _run(lambda config: migrations.current(config=config))
    for item in heads:
        click.echo(str(item))
    if not heads:
        click.echo("No migration applied.")


@migrate.command("history")
def migrate_history() -> None:
    """List the revisions, newest first (reads no database)."""
    revisions = _run(lambda config: migrations.history(config=config))
    for item in revisions:
        down = ", ".join(item.down_revisions) or "<base>"
        click.echo(f"{down} -> {item}")
    if not revisions:
        click.echo("No revisions yet; create one with: mountaineer-db migrate generate -m MESSAGE")


@migrate.command("check")
def migrate_check() -> None:
    """Exit 1, listing the differences, unless the database matches the models."""
    _run(lambda config: migrations.check(config=config))
    click.echo("The database is at the latest revision and matches the models.")


@migrate.command("stamp")
@click.argument("revision")
def migrate_stamp(revision: str) -> None:
    """Record REVISION as applied without running migrations (adopt an existing database)."""
    stamped = _run(lambda config: migrations.stamp(revision, config=config))
    for item in stamped:
        click.echo(f"Stamped {item}")
    if not stamped:
        click.echo("Stamped base: no revision recorded.")


@migrate.command("sql")
@click.argument("revision", default="head")
def migrate_sql(revision: str) -> None:
    """Print the SQL that apply would run to reach REVISION (default: head).

    From the database's current revision, or give a range FROM:TO (e.g. base:head) to
    render it without a database.
    """
    text = _run(lambda config: migrations.sql(revision, config=config))
    click.echo(text.rstrip("\n") if text else "-- Nothing to apply; the database is up to date.")


@migrate.command("lint")
@click.argument("revision", default="head")
@click.option(
    "--include",
    multiple=True,
    metavar="RULE",
    help="Also check this squawk rule (repeatable), e.g. one of those left out by default.",
)
def migrate_lint(revision: str, include: tuple[str, ...]) -> None:
    """Check the SQL of `migrate sql [REVISION]` with squawk; exit 1 on unsafe operations."""
    findings = _run(lambda config: migrations.lint(revision, config=config, include=include))
    for finding in findings:
        click.echo(str(finding))
    if findings:
        click.echo(
            f"Error: squawk found {len(findings)} unsafe operation(s); see `mountaineer-db migrate sql` for the "
            "lines, and https://squawkhq.com/docs/rules for safer ways.",
            err=True,
        )
        sys.exit(1)
    click.echo("squawk found no unsafe operation.")


@cli.command("createdb")
@click.option(
    "--create-tables",
    is_flag=True,
    help="Also create the models' tables, and stamp the migrations' head when the app has migrations.",
)
@click.option("--wait", "wait_seconds", type=float, default=0.0, help="Wait up to this long for the server first.")
def createdb(create_tables: bool, wait_seconds: float) -> None:
    """Create the configured database if it does not exist."""

    async def operation(config: DatabaseConfig) -> tuple[bool, list[str], list[str]]:
        if wait_seconds > 0:
            await admin.wait_for_database(config, timeout=wait_seconds, database=admin.MAINTENANCE_DATABASE)
        created = await admin.createdb(config)
        if not create_tables:
            return created, [], []
        missing = [] if created else await admin.missing_model_tables(config)
        return created, missing, await admin.create_model_tables(config)

    config = _load_config(create_database=False)
    created, missing, stamped = _run(operation, config)
    target = describe_target(config.migrations_url)
    click.echo(f"{'Created' if created else 'Already exists:'} {target}")
    if create_tables and created:
        click.echo("Created the tables of the models.")
    elif create_tables and missing:
        listed = ", ".join(missing)
        click.echo(f"Created the models' tables it did not have: {listed} (the others are left as they are).")
    elif create_tables:
        click.echo("The models' tables exist already: nothing to create (tables are created, never changed).")
    if stamped:
        click.echo(f"Stamped revision {', '.join(stamped)} (head): `migrate apply` runs only newer revisions.")


@cli.command("dropdb")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="End other sessions using the database (PostgreSQL 13+).")
def dropdb(yes: bool, force: bool) -> None:
    """Drop the configured database, after asking (all its data is lost)."""
    config = _load_config(create_database=False)
    target = describe_target(config.migrations_url)
    if not yes:
        click.confirm(f"Drop {target}? All its data will be lost", abort=True)
    _run(lambda config: admin.dropdb(config, force=force), config)
    click.echo(f"Dropped {target}")


def _show_progress() -> None:
    """On stderr: warnings, and the progress of long waits (who holds the migration lock, an
    INVALID index rebuilt), unless logging is configured already (then it decides)."""
    if logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(lambda record: record.levelno >= logging.WARNING or hasattr(record, PROGRESS_ATTRIBUTE))
    logger = logging.getLogger("mountaineer_db")
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)


def main() -> None:
    """Entry point of the `mountaineer-db` console script."""
    # Like `python -m`, let `--config myapp.config:AppConfig` find a package in the current directory.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    _show_progress()
    cli(prog_name="mountaineer-db")


if __name__ == "__main__":
    main()
