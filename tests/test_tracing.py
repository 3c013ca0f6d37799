"""OpenTelemetry: one span per statement, on every engine, exactly once, with or without asyncpg's."""

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import text

from mountaineer_db import DatabaseConfig, database_session
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.observability.tracing import instrument_opentelemetry, uninstrument_opentelemetry

SQLALCHEMY_SCOPE = "opentelemetry.instrumentation.sqlalchemy"


@pytest.fixture
def exporter() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter, provider
    uninstrument_opentelemetry()
    AsyncPGInstrumentor().uninstrument()


def _statement_spans(exporter: InMemorySpanExporter, statement: str) -> list[ReadableSpan]:
    def text_of(span: ReadableSpan) -> Any:
        attributes = span.attributes or {}
        return attributes.get("db.statement", attributes.get("db.query.text"))

    return [span for span in exporter.get_finished_spans() if text_of(span) == statement]


async def _run(config: DatabaseConfig, statement: str) -> None:
    async with database_session(config) as session:
        await session.exec(text(statement))  # type: ignore[call-overload]


async def test_engines_built_before_and_after_get_one_span_per_statement(
    make_config: Callable[..., DatabaseConfig], exporter: tuple[InMemorySpanExporter, TracerProvider]
) -> None:
    spans, provider = exporter
    before = make_config()
    engine_for(before)  # built before instrumenting
    instrument_opentelemetry(tracer_provider=provider)
    instrument_opentelemetry(tracer_provider=provider)  # a second call changes nothing
    after = make_config(DATABASE_APPLICATION_NAME="built-later")  # another engine, built lazily after

    await _run(before, "SELECT 'before'")
    await _run(after, "SELECT 'after'")

    for statement in ("SELECT 'before'", "SELECT 'after'"):
        (span,) = _statement_spans(spans, statement)
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == SQLALCHEMY_SCOPE


async def test_with_asyncpg_instrumented_too_a_statement_still_has_one_span(
    make_config: Callable[..., DatabaseConfig], exporter: tuple[InMemorySpanExporter, TracerProvider]
) -> None:
    spans, provider = exporter
    AsyncPGInstrumentor().instrument(tracer_provider=provider)
    instrument_opentelemetry(tracer_provider=provider)
    config = make_config()

    await _run(config, "SELECT 'once'")
    with pytest.raises(Exception, match="division by zero"):
        await _run(config, "SELECT 1 / 0")  # a failing statement ends its suppression too
    await _run(config, "SELECT 'still traced'")

    for statement in ("SELECT 'once'", "SELECT 1 / 0", "SELECT 'still traced'"):
        (span,) = _statement_spans(spans, statement)  # SQLAlchemy's; asyncpg's own is suppressed
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == SQLALCHEMY_SCOPE
    # asyncpg still reports what SQLAlchemy does not trace as a statement: the COMMIT/ROLLBACK.
    assert any(span.name.startswith(("COMMIT", "ROLLBACK")) for span in spans.get_finished_spans())


async def test_without_suppression_asyncpg_would_double_every_statement(
    make_config: Callable[..., DatabaseConfig], exporter: tuple[InMemorySpanExporter, TracerProvider]
) -> None:
    """The control: asyncpg's instrumentation alone traces SQLAlchemy's statements (from its 0.64b0,
    which wraps prepared statements), so with both on and nothing done, each would have two spans."""
    import asyncpg
    import wrapt

    spans, provider = exporter
    AsyncPGInstrumentor().instrument(tracer_provider=provider)
    wraps_prepared = isinstance(asyncpg.prepared_stmt.PreparedStatement.__dict__["fetch"], wrapt.FunctionWrapper)
    await _run(make_config(), "SELECT 'asyncpg alone'")
    found = _statement_spans(spans, "SELECT 'asyncpg alone'")
    assert len(found) == (1 if wraps_prepared else 0)
    for span in found:
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == "opentelemetry.instrumentation.asyncpg"
