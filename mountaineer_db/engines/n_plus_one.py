"""N+1 detection: one statement run more than DATABASE_N_PLUS_ONE_THRESHOLD times in one request.

```
WARNING mountaineer_db: N+1 queries in HomeController.render: one statement ran 25 times in this
request (DATABASE_N_PLUS_ONE_THRESHOLD=10); load the related rows with the query that fetches the
parents (see "Loading related rows"): SELECT owner.id, owner.name FROM owner WHERE owner.id = $n
```

Each request (and the re-render after a `@sideeffect`, counted on its own as
`HomeController.render`) counts the statements its database work sends, by shape: the text
with placeholders, where the same query with other parameter values is the same shape, and
an `IN` list is one shape whatever its length. When the request ends, each shape run more
than the threshold is logged once, naming the statement (text only, never parameters), the
count and the controller/action, and counted in `loading_metrics().n_plus_one`.

Built on SQLAlchemy's public `before_cursor_execute` engine event, registered only on engines
built with a threshold: without one, nothing is registered and nothing is counted.
"""

import contextlib
import contextvars
import logging
import re
from collections import Counter
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from mountaineer_db.engines.loading_metrics import count_n_plus_one
from mountaineer_db.engines.origins import INTERNAL_STATEMENT, current_origin
from mountaineer_db.engines.slow_queries import statement_summary

__all__ = ["StatementCounts", "install_statement_counts", "repeated_statements", "statement_shape"]

logger = logging.getLogger("mountaineer_db")

_BOOKKEEPING = re.compile(
    r"\s*(BEGIN|START\s+TRANSACTION|COMMIT|END|ROLLBACK|SAVEPOINT|RELEASE|SET\s+LOCAL)\b", re.IGNORECASE
)
_PLACEHOLDER = re.compile(r"(?:\$\d+|%\(\w+\)s|\?|:\w+)(?:::[\w\[\] ]+?(?=[,)\s]|$))?")
_LIST = re.compile(r"\$n(?:\s*,\s*\$n)+")


def statement_shape(statement: str) -> str:
    """`statement` with its placeholders as `$n` and a list of them as one: equal for the same query."""
    shape = _PLACEHOLDER.sub("$n", statement_summary(statement))
    return _LIST.sub("$n", shape)


def repeated_statements(counts: dict[str, int], threshold: int) -> list[tuple[str, int]]:
    """(shape, count) of every statement shape in `counts` (text -> runs) run more than `threshold`
    times, most first; transaction bookkeeping (BEGIN, SAVEPOINT, SET LOCAL ...) left out."""
    shapes: Counter[str] = Counter()
    for statement, count in counts.items():
        if not _BOOKKEEPING.match(statement):
            shapes[statement_shape(statement)] += count
    return [(shape, count) for shape, count in shapes.most_common() if count > threshold]


_counts: contextvars.ContextVar["dict[str, int] | None"] = contextvars.ContextVar(
    "mountaineer_db_statement_counts", default=None
)


def _count(conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
    counts = _counts.get()
    if counts is not None and not (context is not None and context.execution_options.get(INTERNAL_STATEMENT)):
        counts[statement] = counts.get(statement, 0) + 1


def install_statement_counts(engine: AsyncEngine) -> None:
    """Count `engine`'s statements for the request running them (called once, when the engine is built)."""
    event.listen(engine.sync_engine, "before_cursor_execute", _count)


class StatementCounts:
    """`with StatementCounts(threshold):` count the statements of one request; warn at the end."""

    __slots__ = ("_counts", "_threshold", "_token")

    def __init__(self, threshold: int) -> None:
        self._threshold = threshold
        self._counts: dict[str, int] = {}
        self._token: contextvars.Token[dict[str, int] | None] | None = None

    def __enter__(self) -> "StatementCounts":
        self._token = _counts.set(self._counts)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        if self._token is not None:
            with contextlib.suppress(ValueError):  # torn down from another context: leave that context alone
                _counts.reset(self._token)
        self.report()

    def report(self) -> None:
        """Log one warning per statement shape run more than the threshold (and count the request)."""
        # No shape can have run more than the threshold unless all statements together did (one sum, in C).
        if sum(self._counts.values()) <= self._threshold:
            return
        repeated = repeated_statements(self._counts, self._threshold)
        if not repeated:
            return
        origin = current_origin()
        where = f" in {origin}" if origin else ""
        for shape, count in repeated:
            logger.warning(
                "N+1 queries%s: one statement ran %d times in this request (DATABASE_N_PLUS_ONE_THRESHOLD=%d); load "
                'the related rows with the query that fetches the parents (see "Loading related rows"): %s',
                where,
                count,
                self._threshold,
                shape,
            )
        count_n_plus_one(origin)
