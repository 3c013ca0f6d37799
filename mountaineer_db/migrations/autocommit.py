"""Statements a migration runs outside a transaction: INVALID indexes recovered, and what stays said.

Alembic's `autocommit_block()` runs statements that PostgreSQL refuses in a transaction
(`CREATE INDEX CONCURRENTLY`, `VACUUM`, ...). Nothing rolls them back, and a failed (or
killed) concurrent index build leaves an INVALID index behind: not used by queries, yet
still maintained on every write, and in the way of a second attempt ("relation ...
already exists"). While `apply` or `rollback` runs, `OutsideTransactions` watches the
migration connection:

- before a `CREATE [UNIQUE] INDEX CONCURRENTLY [IF NOT EXISTS] name ON table` runs, an
  INVALID index of that name on that table that nobody is building (the leftover of an
  earlier failed run) is dropped with `DROP INDEX CONCURRENTLY`, so the revision can
  simply be run again. A valid index is never touched;
- it remembers each statement run outside a transaction, and which of them belong to a
  revision whose version stamp has since been committed, so a failure can say exactly
  what stayed (`failure_message`): "rolled back" only for what was.
"""

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from mountaineer_db.migrations.lock import PROGRESS

__all__ = ["IndexState", "OutsideTransactions", "Statement", "quoted"]

logger = logging.getLogger("mountaineer_db")

_IDENTIFIER: Final = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_CONCURRENT_INDEX: Final = re.compile(
    rf"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<name>{_IDENTIFIER})"
    rf"\s+ON\s+(?:ONLY\s+)?(?P<table>{_IDENTIFIER}(?:\s*\.\s*{_IDENTIFIER})?)",
    re.IGNORECASE,
)
_WRITE: Final = re.compile(r"^\s*(?:INSERT|UPDATE|DELETE)\b", re.IGNORECASE)
_QUOTED: Final = re.compile(r"'([^']*)'")
_WORD: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")

_INDEX_STATE = text(
    "SELECT n.nspname, c.relname, i.indisvalid, "
    "EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = i.indexrelid) "
    "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relname = :name AND i.indrelid = to_regclass(:table)"
)


def quoted(*parts: str) -> str:
    """`"schema"."name"`: identifiers always quoted, as they are to be pasted into SQL."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in parts)


def _unquote(identifier: str) -> str:
    if identifier.startswith('"'):
        return identifier[1:-1].replace('""', '"')
    return identifier.lower()


def _summary(statement: str) -> str:
    """The statement's first keywords and names, never a literal (values stay out of messages)."""
    words: list[str] = []
    for token in statement.split()[:3]:
        if not _WORD.fullmatch(token):
            break
        words.append(token)
    return " ".join(words) or "a statement"


@dataclass(frozen=True)
class IndexState:
    """An index as found in the catalogue: where it is and whether queries can use it."""

    schema: str
    name: str
    valid: bool
    building: bool
    """Some session is building it right now (as far as this role can see)."""

    @property
    def qualified(self) -> str:
        return quoted(self.schema, self.name)


@dataclass
class Statement:
    """One statement run outside a transaction."""

    summary: str
    index: tuple[str, str] | None  # (name, table as written) of a CREATE INDEX CONCURRENTLY
    done: bool = False
    settled: bool = False
    """Its revision's version stamp was committed after it: it is part of an applied revision."""


class OutsideTransactions:
    """Watches one migration connection while `watch()` is open; see the module docstring."""

    def __init__(self, revision_ids: Iterable[str]) -> None:
        self._revision_ids = frozenset(revision_ids)
        self.statements: list[Statement] = []
        self._stamped = False  # the open transaction wrote a version stamp
        self._busy = False  # our own catalogue queries are running: not watched

    @contextmanager
    def watch(self, connection: Connection) -> Iterator["OutsideTransactions"]:
        listeners: list[tuple[str, Callable[..., None]]] = [
            ("before_cursor_execute", self._before),
            ("after_cursor_execute", self._after),
            ("commit", self._commit),
            ("rollback", self._rollback),
        ]
        for name, listener in listeners:
            event.listen(connection, name, listener)
        try:
            yield self
        finally:
            for name, listener in listeners:
                event.remove(connection, name, listener)

    def left_behind(self) -> list[Statement]:
        """Statements run outside a transaction that belong to no applied revision."""
        return [statement for statement in self.statements if not statement.settled]

    @property
    def failed_outside(self) -> bool:
        """The statement that failed ran outside a transaction (nothing of it was rolled back)."""
        return bool(self.statements) and not self.statements[-1].done

    def index_state(self, connection: Connection, name: str, table: str) -> IndexState | None:
        """The index `name` on `table` (as written in SQL), or None."""
        self._busy = True
        try:
            row = connection.execute(_INDEX_STATE, {"name": name, "table": table}).first()
        finally:
            self._busy = False
        return IndexState(str(row[0]), str(row[1]), bool(row[2]), bool(row[3])) if row is not None else None

    def failure_message(self, connection: Connection, *, what: str, detail: str, where: str) -> str:
        """The one line a failed run is reported with: what failed, what was rolled back, what stays.

        `what` names the failing revision, `detail` is the database's reason, `where` the
        revision the database is at now; `connection` (out of any failed transaction) is
        used to look at the indexes left behind.
        """
        if self.failed_outside:
            head = f"{what} failed in a statement run outside a transaction, so it was not rolled back: {detail}"
        else:
            head = f"{what} failed and its transaction was rolled back: {detail}"
        parts = [head.rstrip(".") + ".", f"The database stays at {where}."]
        others: list[str] = []
        for statement in self.left_behind():
            found = self.index_state(connection, *statement.index) if statement.index else None
            if found is not None and not found.valid and not found.building:
                parts.append(
                    f"Index {found.qualified} is left INVALID (queries do not use it, writes still maintain it): "
                    "fix the cause and run `mountaineer-db migrate apply` again, which drops it and builds it "
                    f"again, or drop it yourself: DROP INDEX CONCURRENTLY IF EXISTS {found.qualified};"
                )
            elif found is not None and found.valid:
                parts.append(
                    f"Index {found.qualified} was built and stays: running the revision again fails on it unless "
                    "it creates the index with if_not_exists=True; or drop it: "
                    f"DROP INDEX CONCURRENTLY IF EXISTS {found.qualified};"
                )
            elif statement.done:
                others.append(statement.summary)
        if others:
            parts.append(f"Run outside a transaction before the failure, and not rolled back: {'; '.join(others)}.")
        return " ".join(parts)

    # -- the listeners ------------------------------------------------------------------------

    def _before(self, conn: Connection, cursor: Any, statement: str, *args: Any) -> None:
        if self._busy:
            return
        if not _autocommit(conn):
            if _WRITE.match(statement) and self._revision_ids.intersection(_QUOTED.findall(statement)):
                self._stamped = True  # Alembic writes version stamps with the ids as literals
            return
        match = _CONCURRENT_INDEX.match(statement)
        index = (_unquote(match["name"]), match["table"]) if match else None
        summary = f"CREATE INDEX CONCURRENTLY {quoted(index[0])}" if index else _summary(statement)
        self.statements.append(Statement(summary, index))
        if index is not None:
            self._drop_invalid_leftover(conn, *index)

    def _after(self, conn: Connection, *args: Any) -> None:
        if not self._busy and _autocommit(conn) and self.statements:
            self.statements[-1].done = True

    def _commit(self, conn: Connection) -> None:
        if self._stamped and not _autocommit(conn):
            for statement in self.statements:
                statement.settled = True
        self._stamped = False

    def _rollback(self, conn: Connection) -> None:
        self._stamped = False

    def _drop_invalid_leftover(self, conn: Connection, name: str, table: str) -> None:
        try:
            found = self.index_state(conn, name, table)
        except SQLAlchemyError:
            return  # e.g. the table does not exist: the statement itself will say so
        if found is None or found.valid or found.building:
            return
        logger.warning(
            "Dropping the INVALID index %s, left by an earlier failed build, before building it again.",
            found.qualified,
            extra=PROGRESS,
        )
        self._busy = True
        try:
            conn.execute(text(f"DROP INDEX CONCURRENTLY IF EXISTS {found.qualified}"))
        finally:
            self._busy = False


def _autocommit(conn: Connection) -> bool:
    return conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
