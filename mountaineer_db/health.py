"""Readiness: is the database there, through the app's own path, at the schema the code expects?

```python
from fastapi.responses import JSONResponse
from mountaineer_db import check_database

@controller.app.get("/healthz/ready", include_in_schema=False)
async def ready() -> JSONResponse:
    result = await check_database()
    return JSONResponse(result.as_dict(), status_code=200 if result.ok else 503)
```

Mount it as a readiness probe, not a liveness probe: a database blip should take pods out
of the load balancer, not restart every one of them.

`check_database()` connects the way requests do (the app's engine and URL, so through
PgBouncer when the app goes through it; never MIGRATIONS_DATABASE_URI), times one
statement's round trip, and compares the migration revision the database is at with the
head revision in the code. It never raises for a database it cannot reach: that is a
result (`status="unreachable"`), produced within DATABASE_CONNECT_TIMEOUT.
"""

import asyncio
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mountaineer_db.appconfig import registered_config
from mountaineer_db.config import DatabaseConfig
from mountaineer_db.engine import engine_for
from mountaineer_db.exceptions import (
    ConfigurationError,
    DatabaseUnavailableError,
    describe_target,
    unavailable_error_for,
)
from mountaineer_db.origins import INTERNAL_STATEMENT

__all__ = ["DatabaseCheck", "DatabaseStatus", "check_database"]


class DatabaseStatus(StrEnum):
    """The outcome of `check_database()`."""

    OK = "ok"
    """Reachable, and at the code's head revision (or the app has no migrations)."""
    DATABASE_AHEAD = "database_ahead"
    """Reachable, at a revision this code does not know: a newer deploy migrated it. Still ready."""
    MIGRATIONS_PENDING = "migrations_pending"
    """Reachable, but behind the code: run `mountaineer-db migrate apply`. Not ready."""
    UNREACHABLE = "unreachable"
    """No connection, or no answer within DATABASE_CONNECT_TIMEOUT. Not ready."""
    ERROR = "error"
    """Reachable, but the check's statements failed (`error` says why). Not ready."""


_READY = (DatabaseStatus.OK, DatabaseStatus.DATABASE_AHEAD)


@dataclass(frozen=True)
class DatabaseCheck:
    """What `check_database()` found. `as_dict()` is ready to send as JSON."""

    status: DatabaseStatus
    database: str
    """`database "app" on db:6432`: where the app's own path leads (never a password)."""
    round_trip_ms: float | None
    """One statement's round trip on an open connection, in milliseconds."""
    total_ms: float
    """The whole check: connecting (PgBouncer included), BEGIN, the statements."""
    database_revisions: tuple[str, ...] | None
    """The migration revisions the database is at; None when the app has no migrations."""
    head_revisions: tuple[str, ...] | None
    """The head revisions in the code's migrations folder; None when it has none."""
    error: str | None = None
    """Why the database is not ready, when it is not."""
    invalid_indexes: tuple[str, ...] = ()
    """INVALID indexes (`schema.name`) nobody is building: left by a failed or killed `CREATE INDEX
    CONCURRENTLY`. Queries ignore them and writes still maintain them; the next `migrate apply`
    rebuilds the ones its revisions create (docs: Migrations). They do not change `status`."""

    @property
    def ok(self) -> bool:
        """True when the app can serve: OK, or DATABASE_AHEAD during a rolling deploy."""
        return self.status in _READY

    @property
    def reachable(self) -> bool:
        """True when the database answered, whatever its schema."""
        return self.status is not DatabaseStatus.UNREACHABLE

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "status": self.status.value,
            "database": self.database,
            "round_trip_ms": self.round_trip_ms,
            "total_ms": self.total_ms,
            "database_revisions": list(self.database_revisions) if self.database_revisions is not None else None,
            "head_revisions": list(self.head_revisions) if self.head_revisions is not None else None,
            "error": self.error,
            "invalid_indexes": list(self.invalid_indexes),
        }


@dataclass(frozen=True)
class _Heads:
    stamp: int
    heads: tuple[str, ...]
    known: frozenset[str]


_heads: dict[Path, _Heads] = {}  # per migrations folder; re-read when versions/ changes


def _code_heads(config: DatabaseConfig) -> _Heads | None:
    """The head revisions in the app's migrations folder, None when it has none."""
    from mountaineer_db.migrations.plumbing import alembic_errors, setup
    from mountaineer_db.migrations.project import migrations_directory

    try:
        directory = migrations_directory(config)
    except ConfigurationError:  # no PACKAGE: an app without migrations
        return None
    versions = directory / "versions"
    if not (directory / "env.py").is_file() or not versions.is_dir():
        return None
    stamp = versions.stat().st_mtime_ns
    cached = _heads.get(directory)
    if cached is None or cached.stamp != stamp:
        _config, _alembic_config, script = setup(config)
        with alembic_errors():
            known = frozenset(revision.revision for revision in script.walk_revisions())
            cached = _heads[directory] = _Heads(stamp, tuple(sorted(script.get_heads())), known)
    return cached


_FIRST = text(
    "SELECT to_regclass('alembic_version') IS NOT NULL, ARRAY("
    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE NOT i.indisvalid AND NOT EXISTS "
    "(SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid) ORDER BY 1)"
).execution_options(**{INTERNAL_STATEMENT: True})
"""Is there a version table; which indexes are INVALID (not counting those being built right now)."""


async def _probe(engine: AsyncEngine, *, revisions: bool) -> tuple[float, tuple[str, ...] | None, tuple[str, ...]]:
    internal = {INTERNAL_STATEMENT: True}
    async with engine.connect() as connection:
        # The first statement carries the BEGIN; the second is timed alone.
        has_table, invalid = (await connection.execute(_FIRST)).one()
        started = time.perf_counter()
        if revisions and has_table:
            rows = (
                await connection.execute(text("SELECT version_num FROM alembic_version").execution_options(**internal))
            ).all()
            found: tuple[str, ...] | None = tuple(sorted(str(row[0]) for row in rows))
        else:
            await connection.execute(text("SELECT 1").execution_options(**internal))
            found = () if revisions else None
        round_trip = time.perf_counter() - started
        await connection.rollback()
    return round_trip, found, tuple(invalid)


async def check_database(config: DatabaseConfig | None = None) -> DatabaseCheck:
    """Check the database the way the app reaches it; see the module docstring.

    `config` defaults to the registered app config. Raises only for a broken config.
    """
    config = config if config is not None else registered_config()
    url = config.database_url
    where = describe_target(url, user=False)
    heads = _code_heads(config)
    head_ids = heads.heads if heads is not None else None
    started = time.perf_counter()

    def result(status: DatabaseStatus, **values: Any) -> DatabaseCheck:
        values.setdefault("round_trip_ms", None)
        values.setdefault("database_revisions", None)
        return DatabaseCheck(
            status=status,
            database=where,
            total_ms=round((time.perf_counter() - started) * 1000, 3),
            head_revisions=head_ids,
            **values,
        )

    timeout = config.DATABASE_CONNECT_TIMEOUT
    try:
        async with asyncio.timeout(timeout):
            round_trip, found, invalid = await _probe(engine_for(config), revisions=heads is not None)
    except TimeoutError:
        return result(
            DatabaseStatus.UNREACHABLE,
            error=f"No answer from {where} within DATABASE_CONNECT_TIMEOUT={timeout:g}s.",
        )
    except DatabaseUnavailableError as error:
        return result(DatabaseStatus.UNREACHABLE, error=error.message)
    except ConfigurationError:
        raise
    except Exception as error:  # noqa: BLE001 - a readiness check reports failures, it does not raise them
        unavailable = unavailable_error_for(error, url=url)
        if unavailable is not None:
            return result(DatabaseStatus.UNREACHABLE, error=unavailable.message)
        reason = getattr(error, "orig", None) or error
        return result(DatabaseStatus.ERROR, error=f"The readiness check failed on {where}: {reason}")
    values: dict[str, Any] = {
        "round_trip_ms": round(round_trip * 1000, 3),
        "database_revisions": found,
        "invalid_indexes": invalid,
    }
    if heads is None or found is None or set(found) == set(heads.heads):
        return result(DatabaseStatus.OK, **values)
    if set(found) - heads.known:
        return result(DatabaseStatus.DATABASE_AHEAD, **values)
    at = ", ".join(found) or "no revision"
    return result(
        DatabaseStatus.MIGRATIONS_PENDING,
        error=f"The database is at {at}, the code at {', '.join(heads.heads)}: run `mountaineer-db migrate apply`.",
        **values,
    )
