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

Such a route is open to anyone, so:

- concurrent checks in a process share one probe (one connection): a flood of probes costs
  the database one connection, not one each;
- `as_dict()` is what anyone may read: no host, port, database name, login or server
  message. `as_dict(details=True)` adds them, for a route only operators reach; the reason
  a check failed is also logged (WARNING), with the details.
"""

import asyncio
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mountaineer_db.engines.data_errors import describe_error
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.engines.origins import INTERNAL_STATEMENT
from mountaineer_db.exceptions import (
    ConfigurationError,
    DatabaseUnavailableError,
    describe_target,
    unavailable_error_for,
)
from mountaineer_db.settings.appconfig import registered_config
from mountaineer_db.settings.config import DatabaseConfig

__all__ = ["DatabaseCheck", "DatabaseStatus", "check_database"]

logger = logging.getLogger("mountaineer_db")


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

    @property
    def public_error(self) -> str | None:
        """`error` as anyone may read it: what is wrong, not where the database is or what the server said."""
        if self.status is DatabaseStatus.UNREACHABLE:
            return "The database cannot be reached."
        if self.status is DatabaseStatus.ERROR:
            return "The readiness check's statements failed."
        return self.error  # migrations pending: revisions only, which are in the answer anyway

    def as_dict(self, *, details: bool = False) -> dict[str, Any]:
        """The result as JSON for a readiness route.

        By default what an unauthenticated route may show anyone: `ok`, `status`, the timings,
        the revisions and `error` without host, port, database name, login or server message
        (`public_error`). `details=True` adds `database` (where the app's path leads) and the
        full `error`: for routes only operators reach.
        """
        answer = {
            "ok": self.ok,
            "status": self.status.value,
            "round_trip_ms": self.round_trip_ms,
            "total_ms": self.total_ms,
            "database_revisions": list(self.database_revisions) if self.database_revisions is not None else None,
            "head_revisions": list(self.head_revisions) if self.head_revisions is not None else None,
            "error": self.error if details else self.public_error,
            # Index names, like the revision ids: what the app's own migrations made, nothing about where.
            "invalid_indexes": list(self.invalid_indexes),
        }
        if details:
            answer["database"] = self.database
        return answer


@dataclass(frozen=True)
class _Heads:
    stamp: int
    heads: tuple[str, ...]
    known: frozenset[str]


_heads: dict[Path, _Heads] = {}  # per migrations folder; re-read when versions/ changes


def _code_heads(config: DatabaseConfig) -> _Heads | None:
    """The head revisions in the app's migrations folder, None when it has none."""
    # Imported here for import time only: the migrations package loads Alembic (slow), which only
    # an app with a migrations folder needs, at its first readiness check.
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


_Probe = tuple[float, tuple[str, ...] | None, tuple[str, ...]]
_in_flight: dict[tuple[AsyncEngine, bool], "asyncio.Future[_Probe]"] = {}
"""The probe running now per engine (so per event loop) and kind; gone once it finishes."""


async def _bounded_probe(engine: AsyncEngine, *, revisions: bool, timeout: float) -> _Probe:
    async with asyncio.timeout(timeout):
        return await _probe(engine, revisions=revisions)


def _forget(key: tuple[AsyncEngine, bool], probe: "asyncio.Future[_Probe]", where: str) -> None:
    """Done callback: the next check starts a new probe. A failure is logged here, once per probe."""
    if _in_flight.get(key) is probe:
        del _in_flight[key]
    error = None if probe.cancelled() else probe.exception()  # retrieved, even if every waiter left
    if error is None:
        return
    if isinstance(error, DatabaseUnavailableError):
        reason = error.message
    elif isinstance(error, TimeoutError):
        reason = f"no answer from {where} within DATABASE_CONNECT_TIMEOUT"
    else:
        reason = f"{where}: {describe_error(error)}"
    logger.warning("The readiness check failed: %s", reason)


async def _shared_probe(engine: AsyncEngine, *, revisions: bool, timeout: float, where: str) -> _Probe:
    """The probe of `engine`, joined when one is already running: one connection per flood of checks.

    The probe runs in a task of its own, so a caller cancelled meanwhile (a client gone) does
    not cancel it for the others.
    """
    key = (engine, revisions)
    probe = _in_flight.get(key)
    if probe is None:
        probe = asyncio.ensure_future(_bounded_probe(engine, revisions=revisions, timeout=timeout))
        _in_flight[key] = probe
        probe.add_done_callback(lambda done: _forget(key, done, where))
    return await asyncio.shield(probe)


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
        engine = engine_for(config)
        round_trip, found, invalid = await _shared_probe(
            engine, revisions=heads is not None, timeout=timeout, where=where
        )
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
