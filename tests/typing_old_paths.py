"""The module paths of the flat layout (before issue 24), type-checked: code written against them still passes mypy.

mypy --strict runs over this file (pyproject.toml); tests/test_layout.py imports the same paths at runtime.
"""

from mountaineer_db import admin
from mountaineer_db.admin import createdb, wait_for_database
from mountaineer_db.embedded import ensure_embedded_database, stop_embedded_database
from mountaineer_db.metrics import EngineMetrics, database_metrics
from mountaineer_db.origins import work_origin
from mountaineer_db.pgbouncer import PgBouncer
from mountaineer_db.prometheus import DatabaseCollector, register_collector
from mountaineer_db.replicas import replica_status
from mountaineer_db.stale_statements import install_stale_statement_recovery
from mountaineer_db.tracing import instrument_opentelemetry, uninstrument_opentelemetry

__all__ = [
    "DatabaseCollector",
    "EngineMetrics",
    "PgBouncer",
    "admin",
    "createdb",
    "database_metrics",
    "ensure_embedded_database",
    "install_stale_statement_recovery",
    "instrument_opentelemetry",
    "register_collector",
    "replica_status",
    "stop_embedded_database",
    "uninstrument_opentelemetry",
    "wait_for_database",
    "work_origin",
]


def snapshot_sizes() -> list[int]:
    metrics: list[EngineMetrics] = database_metrics()
    return [snapshot.checked_out for snapshot in metrics]
