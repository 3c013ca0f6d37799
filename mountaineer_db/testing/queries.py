"""Counting the statements a block of code runs: catch N+1 queries in tests.

```python
from mountaineer_db.testing import assert_max_queries, assert_num_queries

async def test_list_page_is_one_query(mdb_session):
    with assert_num_queries(1):
        await render_controller(HomeController(), mdb_session)

async def test_add(mdb_client):
    with assert_max_queries(3) as queries:
        await mdb_client.post("/internal/api/home_controller/add_todo", json={...})
    assert queries.statements[0].startswith("INSERT INTO todo")
```

What counts: every statement sent through any engine of this process while the block
runs (or, with `session=`, only through that session's connections), ORM flushes
included. Not counted: transaction bookkeeping (`BEGIN`, `COMMIT`, `ROLLBACK`,
`SAVEPOINT`, `RELEASE SAVEPOINT`, `ROLLBACK TO SAVEPOINT`: the test kit's sessions run in
savepoints) and the library's own internal statements. On failure the error lists the
statements, text only: parameters never appear.
"""

import contextlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, SessionTransaction
from sqlmodel.ext.asyncio.session import AsyncSession

from mountaineer_db.engines.origins import INTERNAL_STATEMENT
from mountaineer_db.engines.slow_queries import statement_summary

__all__ = ["QueryLog", "assert_max_queries", "assert_num_queries", "counted_queries"]

_BOOKKEEPING = re.compile(
    r"\s*(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE|ROLLBACK\s+TO)\b", re.IGNORECASE
)


@dataclass
class QueryLog:
    """The statements counted in a block, in the order they ran (text, no parameters)."""

    statements: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.statements)

    def describe(self) -> str:
        """The statements, numbered, one per line."""
        return "\n".join(f"{number}. {text}" for number, text in enumerate(self.statements, 1))


class _SessionStatements:
    """Statements run through any engine of this process, or only on `session`'s connections.

    The base of the kit's statement listeners (`counted_queries`, `assert_no_n_plus_one`):
    `listening()` installs `on_execute` for the block; `watches` says whether a statement counts
    (the library's own statements never do).
    """

    def __init__(self, session: AsyncSession | None) -> None:
        self.session = session.sync_session if session is not None else None
        self.connections: set[int] = set()
        self.lock = threading.Lock()
        if self.session is not None:
            bind = self.session.bind
            if isinstance(bind, Connection):  # the test kit's sessions
                self.connections.add(id(bind))
            for connection in getattr(self.session, "_kept", {}).values():  # a request session's kept connection
                self.connections.add(id(connection))

    def on_begin(self, session: Session, transaction: SessionTransaction, connection: Connection) -> None:
        self.connections.add(id(connection))

    def watches(self, conn: Connection, context: Any) -> bool:
        if self.session is not None and id(conn) not in self.connections:
            return False
        return not (context is not None and context.execution_options.get(INTERNAL_STATEMENT))

    def on_execute(
        self, conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def listening(self) -> Iterator[None]:
        event.listen(Engine, "before_cursor_execute", self.on_execute)
        if self.session is not None:
            event.listen(self.session, "after_begin", self.on_begin)
        try:
            yield
        finally:
            event.remove(Engine, "before_cursor_execute", self.on_execute)
            if self.session is not None:
                event.remove(self.session, "after_begin", self.on_begin)


class _Counter(_SessionStatements):
    def __init__(self, session: AsyncSession | None) -> None:
        super().__init__(session)
        self.log = QueryLog()

    def on_execute(
        self, conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if not self.watches(conn, context) or _BOOKKEEPING.match(statement):
            return
        with self.lock:
            self.log.statements.append(statement_summary(statement))


@contextlib.contextmanager
def counted_queries(*, session: AsyncSession | None = None) -> Iterator[QueryLog]:
    """Record the statements run in the block (all engines, or only `session`'s)."""
    counter = _Counter(session)
    with counter.listening():
        yield counter.log


def _failure(expectation: str, log: QueryLog) -> AssertionError:
    ran = f"{log.count} {'was' if log.count == 1 else 'were'} run"
    return AssertionError(f"Expected {expectation}, {ran}" + (f":\n{log.describe()}" if log.count else "."))


def _queries(number: int) -> str:
    return f"{number} {'query' if number == 1 else 'queries'}"


@contextlib.contextmanager
def assert_num_queries(expected: int, *, session: AsyncSession | None = None) -> Iterator[QueryLog]:
    """Fail (AssertionError, listing the statements) unless the block runs exactly `expected`."""
    with counted_queries(session=session) as log:
        yield log
    if log.count != expected:
        raise _failure(_queries(expected), log)


@contextlib.contextmanager
def assert_max_queries(maximum: int, *, session: AsyncSession | None = None) -> Iterator[QueryLog]:
    """Fail (AssertionError, listing the statements) if the block runs more than `maximum`."""
    with counted_queries(session=session) as log:
        yield log
    if log.count > maximum:
        raise _failure(f"at most {_queries(maximum)}", log)
