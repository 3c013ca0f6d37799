"""OpenTelemetry spans for every statement (the `otel` extra: `pip install mountaineer-db[otel]`).

```python
from mountaineer_db.observability.tracing import instrument_opentelemetry

instrument_opentelemetry()   # once at startup, after setting up your TracerProvider
```

This applies opentelemetry-instrumentation-sqlalchemy to the engines mountaineer_db builds,
exactly once each: those already built get it now, each one built later (engines are
created lazily, per event loop) gets it from the instrumentor's own `create_async_engine`
hook, which `mountaineer_db.engines.engine` calls through. Auto-instrumentation
(`opentelemetry-instrument`) reaches our engines the same way.

On SQLAlchemy 2.1 too, although the instrumentation declares `sqlalchemy < 2.1` (it refuses
2.1 when activated by itself, as auto-instrumentation does; ours skips that check: it uses
only SQLAlchemy's public engine events, which 2.1 keeps, and our tests run on both).

One span per statement, also when opentelemetry-instrumentation-asyncpg is active: inside
SQLAlchemy's span for a statement, asyncpg's own span for the same statement is suppressed
(the span SQLAlchemy makes carries the statement text, the operation and the database).
asyncpg still reports what SQLAlchemy does not see as a statement, such as the COMMIT.
"""

import contextlib
import sys
import weakref
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, ExceptionContext
from sqlalchemy.ext.asyncio import AsyncEngine

from mountaineer_db.engines.engine import cached_engines, on_engine_built

__all__ = ["instrument_new_engine", "instrument_opentelemetry", "uninstrument_opentelemetry"]

_SQLALCHEMY_INSTRUMENTATION = "opentelemetry.instrumentation.sqlalchemy"
_SUPPRESSION = "_mdb_otel_suppression"
_suppressing: "weakref.WeakSet[Engine]" = weakref.WeakSet()


def _sqlalchemy_instrumented() -> bool:
    if _SQLALCHEMY_INSTRUMENTATION not in sys.modules:  # never imported: nothing is instrumented
        return False
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    return bool(SQLAlchemyInstrumentor().is_instrumented_by_opentelemetry)


def _suppress(conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
    # Runs after the instrumentation's own listener has opened the statement's span.
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    if context is not None:
        suppression = suppress_instrumentation()
        suppression.__enter__()
        setattr(context, _SUPPRESSION, suppression)


def _end_suppression(context: Any) -> None:
    suppression = getattr(context, _SUPPRESSION, None)
    if suppression is not None:
        delattr(context, _SUPPRESSION)
        with contextlib.suppress(ValueError):  # ended in another context: nothing left to undo here
            suppression.__exit__(None, None, None)


def _after(conn: Connection, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
    _end_suppression(context)


def _failed(context: ExceptionContext) -> None:
    _end_suppression(context.execution_context)


def _add_suppression(engine: Engine) -> None:
    if engine in _suppressing:
        return
    _suppressing.add(engine)
    event.listen(engine, "before_cursor_execute", _suppress)
    event.listen(engine, "after_cursor_execute", _after)
    event.listen(engine, "handle_error", _failed, insert=True)  # before handlers that may raise


def instrument_new_engine(engine: AsyncEngine) -> None:
    """Called for each engine `engine_for` builds (registered below); no cost without OpenTelemetry."""
    if _sqlalchemy_instrumented():
        _add_suppression(engine.sync_engine)


def instrument_opentelemetry(*, tracer_provider: Any = None, meter_provider: Any = None) -> None:
    """Trace every statement of mountaineer_db's engines (see the module docstring). Idempotent.

    `tracer_provider` / `meter_provider` default to OpenTelemetry's global ones.
    """
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    existing = [engine.sync_engine for engine in cached_engines()]
    instrumentor = SQLAlchemyInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        # The instrumentation declares SQLAlchemy < 2.1 and would refuse 2.1; it uses only the
        # public engine events, which 2.1 keeps (tests/test_tracing.py runs on both).
        options: dict[str, Any] = {"engines": existing, "skip_dep_check": True}
        if tracer_provider is not None:
            options["tracer_provider"] = tracer_provider
        if meter_provider is not None:
            options["meter_provider"] = meter_provider
        instrumentor.instrument(**options)
    for engine in existing:
        _add_suppression(engine)


def uninstrument_opentelemetry() -> None:
    """Undo `instrument_opentelemetry()` (for tests and shutdown)."""
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    SQLAlchemyInstrumentor().uninstrument()
    for engine in list(_suppressing):
        event.remove(engine, "before_cursor_execute", _suppress)
        event.remove(engine, "after_cursor_execute", _after)
        event.remove(engine, "handle_error", _failed)
    _suppressing.clear()


# Every engine built from now on. mountaineer_db/__init__.py imports this module, so the hook is in
# place before the first engine, also when the app instruments SQLAlchemy itself.
on_engine_built(instrument_new_engine)
