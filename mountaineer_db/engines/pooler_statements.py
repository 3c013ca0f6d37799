"""Named prepared statements through a pooler that supports them (DATABASE_POOLER_PREPARED_STATEMENTS).

PgBouncer 1.21+ in transaction mode with `max_prepared_statements` > 0 (the default from
1.24) handles protocol-level prepared statements itself: it remembers each client's
statements by name and prepares their text once per server connection, under its own names
(`PGBOUNCER_<n>`). With the setting on, both pool types use asyncpg's named statements and
SQLAlchemy's statement cache (DATABASE_STATEMENT_CACHE_SIZE, default 100 per connection)
instead of unnamed statements: a repeated statement on a connection costs one round trip
instead of two.

Two things make this safe:

- **The pooler is checked once per engine, at its first connection** (`check_pooler`). In one
  transaction (so on one server connection) the client prepares a named probe and reads
  `pg_prepared_statements`: PgBouncer ≥ 1.21 shows it under its own name; PgBouncer 1.18, or
  1.21+ with `max_prepared_statements = 0`, passes the client's name through unchanged, and
  named statements would later fail at random ("prepared statement ... does not exist"). That
  case raises `PoolerPreparedStatementsError`, naming the setting, on every connection until
  the pooler is fixed. A direct connection (the backend's pid is the one the connection
  reported at login) is fine: named statements work there anyway.
- **Statement texts change after a schema change.** PgBouncer finds a server-side statement by
  its text: after a migration changes what a statement returns, every server connection that
  prepared it keeps failing (`cached plan must not change result type`), and a client that
  prepares the same text again, even on a new connection, is mapped to the same stale server
  statement. So every statement text this engine prepares starts with a comment naming a
  *statement generation*: `/* mdb:<token> */ SELECT ...`. The token is derived from the
  database's migration revision (Alembic's `alembic_version`), read at the first connection,
  and read again after the stale-statement recovery (`mountaineer_db.engines.stale_statements`) saw a
  stale statement: a new revision gives a new token shared by every process that sees it (so
  PgBouncer still prepares each text once per server connection); a schema change without a
  new revision (DDL run by hand, or the window inside `migrate apply` between a revision's DDL
  and its version row) gives a token of this process's own that no server connection has
  seen. Texts prepared before the change are never used again, by processes that were
  serving during the migration and by processes started after it alike, with no access to
  PgBouncer's admin console.
"""

import hashlib
import secrets
from typing import Any

import asyncpg

from mountaineer_db.engines.connections import MountaineerConnection
from mountaineer_db.exceptions import PoolerPreparedStatementsError

__all__ = ["PoolerConnection", "PoolerStatements", "check_pooler", "note_schema_change"]

SETTING = "DATABASE_POOLER_PREPARED_STATEMENTS"

_PROBE = "SELECT 1 /* mountaineer_db: does the pooler handle named prepared statements? */"
_FIND_PROBE = "SELECT name, pg_backend_pid() FROM pg_prepared_statements WHERE statement = $1"
_HAS_REVISIONS = "SELECT to_regclass('alembic_version') IS NOT NULL"
_REVISIONS = "SELECT string_agg(version_num, ',' ORDER BY version_num) FROM alembic_version"


class PoolerStatements:
    """One engine's view of the pooler: checked or not, and the statement generation in use."""

    __slots__ = ("_salt", "checked", "prefix", "refreshed", "revisions", "stale_events", "target")

    def __init__(self, target: str) -> None:
        self.target = target  # `database "app" on host:port`, for messages
        self.checked = False  # the pooler handles named statements (or there is none)
        self.prefix = ""  # prepended to every statement text this engine prepares
        self.revisions: str | None = None  # the migration revisions the prefix was made from
        self.stale_events = 0  # stale statements seen by the recovery
        self.refreshed = 0  # `stale_events` when the prefix was last made
        self._salt = secrets.token_hex(3)  # this process's own generations (no new revision)

    def __repr__(self) -> str:
        return f"PoolerStatements({self.target}, checked={self.checked}, prefix={self.prefix!r})"

    def schema_changed(self) -> None:
        """Called by the stale-statement recovery (no I/O): the next connection makes a new generation."""
        self.stale_events += 1

    async def on_connect(self, connection: "PoolerConnection") -> None:
        """Every new connection: check the pooler the first time, renew the generation after a stale statement."""
        connection._mdb_statements = self
        if self.checked and self.refreshed == self.stale_events:
            return
        # What this refresh starts from: concurrent connections may refresh for the same event, and
        # must all reach the same generation (never back to one made before the event).
        events, last, known = self.stale_events, self.refreshed, self.revisions
        try:
            if not self.checked:
                await check_pooler(connection, self.target)
            revisions = await _revisions(connection)
            if self.refreshed > events:
                pass  # a refresh for a later stale statement finished meanwhile: keep its generation
            elif events != last and revisions == known:
                # A schema change without a new revision: a generation no process has used yet.
                self.prefix = _prefix(f"{revisions}:{self._salt}:{events}")
            else:
                # New revisions (or the first connections): a generation every process seeing them shares.
                self.prefix = _prefix(revisions)
                self.revisions = revisions
            self.refreshed = max(self.refreshed, events)
            self.checked = True
        except BaseException:
            connection.terminate()
            raise


def note_schema_change(driver_connection: object) -> None:
    """Tell the engine of `driver_connection` (if it uses pooler statements) that a statement went stale."""
    statements = getattr(driver_connection, "_mdb_statements", None)
    if isinstance(statements, PoolerStatements):
        statements.schema_changed()


def _prefix(seed: str | None) -> str:
    if seed is None:
        return ""
    return f"/* mdb:{hashlib.sha256(seed.encode()).hexdigest()[:12]} */ "


async def _revisions(connection: asyncpg.Connection) -> str | None:
    """The applied migration revisions (sorted, comma-separated), or None without a version table."""
    if not await connection.fetchval(_HAS_REVISIONS):
        return None
    value = await connection.fetchval(_REVISIONS)
    return str(value) if value is not None else None


async def check_pooler(connection: asyncpg.Connection, target: str) -> None:
    """Raise `PoolerPreparedStatementsError` unless named statements are safe on `connection`.

    See the module docstring: a pooler that supports them prepares our probe under its own
    name; a direct connection keeps our name and is its own backend.
    """
    name = f"mdb_probe_{secrets.token_hex(6)}"
    async with connection.transaction():
        # asyncpg's own prepare: the probe's text is ours, without a generation prefix. The lookup
        # is named at random too: through a pooler that passes names through, asyncpg's counter
        # names (`__asyncpg_stmt_1__`) left on shared server connections would collide between
        # processes, and the check would fail with "already exists" instead of its own error.
        probe = await asyncpg.Connection.prepare(connection, _PROBE, name=name)
        lookup = await asyncpg.Connection.prepare(connection, _FIND_PROBE, name=f"mdb_probe_lookup_{name[10:]}")
        rows = await lookup.fetch(_PROBE)
        del probe, lookup  # kept until here: asyncpg closes a statement nothing refers to
    names = {row[0] for row in rows}
    if any(not found.startswith("mdb_probe_") for found in names):
        return  # renamed by the pooler: PgBouncer's protocol-level prepared statements
    if name in names and all(row[1] == connection.get_server_pid() for row in rows):
        return  # no pooler between us: named statements are fine
    raise PoolerPreparedStatementsError(
        f"{SETTING} is on, but the pooler in front of {target} passes named prepared statements "
        "through unchanged: it is PgBouncer older than 1.21, or PgBouncer with max_prepared_statements = 0, "
        'or a pooler in session mode. Named statements would then fail at random later ("prepared statement '
        '... does not exist"). Upgrade PgBouncer to 1.21 or later (1.24+ recommended) with '
        f"max_prepared_statements > 0 (200 is the default from 1.24), or turn {SETTING} off."
    )


class PoolerConnection(MountaineerConnection):
    """`MountaineerConnection` whose prepared statements carry the engine's statement generation."""

    __slots__ = ("_mdb_statements",)

    _mdb_statements: PoolerStatements

    async def prepare(
        self, query: str, *, name: str | None = None, timeout: float | None = None, record_class: Any = None
    ) -> Any:
        """asyncpg's `prepare` (what SQLAlchemy's adapter calls), with the generation prefix."""
        return await super().prepare(
            self._mdb_statements.prefix + query, name=name, timeout=timeout, record_class=record_class
        )
