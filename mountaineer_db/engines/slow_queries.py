"""The slow-query log: one WARNING per statement slower than DATABASE_SLOW_QUERY_THRESHOLD.

```
WARNING mountaineer_db: Slow query: 0.512 s (DATABASE_SLOW_QUERY_THRESHOLD=0.2 s) in
HomeController.add_todo: SELECT todo.id, todo.description FROM todo WHERE todo.id = $1::INTEGER
```

The statement is the text sent to the server, with placeholders, never the parameters;
the controller and action are named when the statement ran inside a request
(`mountaineer_db.engines.origins`). A statement that fails after the threshold (a statement
timeout, a cancelled query) is logged too, with the error's class. Built on SQLAlchemy's
public `before_cursor_execute` / `after_cursor_execute` / `handle_error` engine events,
registered only on engines built with a threshold: an engine without one pays nothing.
"""

import logging
import time
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Connection, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from mountaineer_db.engines.origins import current_origin

__all__ = ["MAX_STATEMENT_CHARS", "install_slow_query_log", "statement_summary"]

logger = logging.getLogger("mountaineer_db")

MAX_STATEMENT_CHARS: Final = 2000
"""Longer statements are cut (with `…`) in the slow-query log and in query-count reports."""

_STARTED = "_mdb_slow_query_started"


def statement_summary(statement: str) -> str:
    """The statement on one line, whitespace collapsed, cut at MAX_STATEMENT_CHARS."""
    flat = " ".join(statement.split())
    return flat if len(flat) <= MAX_STATEMENT_CHARS else flat[: MAX_STATEMENT_CHARS - 1] + "…"


def install_slow_query_log(engine: AsyncEngine, threshold: float) -> None:
    """Log every statement on `engine` that takes longer than `threshold` seconds."""

    def started(conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if context is not None:
            setattr(context, _STARTED, time.perf_counter())

    def finished(conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        began = getattr(context, _STARTED, None)
        if began is not None:
            elapsed = time.perf_counter() - began
            if elapsed > threshold:
                _log(elapsed, threshold, statement, None)

    def failed(context: ExceptionContext) -> None:
        began = getattr(context.execution_context, _STARTED, None)
        if began is not None and context.statement is not None:
            elapsed = time.perf_counter() - began
            if elapsed > threshold:
                _log(elapsed, threshold, context.statement, context.original_exception)

    sync_engine = engine.sync_engine
    event.listen(sync_engine, "before_cursor_execute", started)
    event.listen(sync_engine, "after_cursor_execute", finished)
    event.listen(sync_engine, "handle_error", failed)


def _log(elapsed: float, threshold: float, statement: str, error: BaseException | None) -> None:
    origin = current_origin()
    where = f" in {origin}" if origin else ""
    # The driver's own error class (QueryCanceledError), not SQLAlchemy's adapter wrapper.
    cause = (error.__cause__ or error) if error is not None else None
    outcome = f"failed ({type(cause).__name__}) after" if cause is not None else ""
    logger.warning(
        "Slow query: %s%.3f s (DATABASE_SLOW_QUERY_THRESHOLD=%g s)%s: %s",
        f"{outcome} " if outcome else "",
        elapsed,
        threshold,
        where,
        statement_summary(statement),
    )
