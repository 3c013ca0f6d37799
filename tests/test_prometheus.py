"""The Prometheus collector, read through prometheus-client's own registry and text format."""

from collections.abc import Callable

import prometheus_client
from sqlalchemy import text

from mountaineer_db import DatabaseConfig, database_session
from mountaineer_db.observability.prometheus import DatabaseCollector, register_collector


async def test_the_registry_exports_pool_and_connect_figures(make_config: Callable[..., DatabaseConfig]) -> None:
    registry = prometheus_client.CollectorRegistry()
    collector = register_collector(registry)
    assert register_collector(registry) is collector, "registering twice would duplicate every sample"
    assert isinstance(collector, DatabaseCollector)

    config = make_config(DATABASE_APPLICATION_NAME="scraped")
    for _ in range(2):
        async with database_session(config) as session:
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
    url = config.database_url
    labels = {
        "database": f'database "{url.database}" on {url.host}:{url.port}',
        "pool_type": "NULL",
        "application_name": "scraped",
    }
    assert registry.get_sample_value("mountaineer_db_connects_total", labels) == 2
    assert registry.get_sample_value("mountaineer_db_checkouts_total", labels) == 2
    assert registry.get_sample_value("mountaineer_db_connections_checked_out", labels) == 0
    assert registry.get_sample_value("mountaineer_db_pool_waits_total", labels) == 0
    assert (registry.get_sample_value("mountaineer_db_connect_seconds_total", labels) or 0) > 0
    assert registry.get_sample_value("mountaineer_db_pool_size", labels) is None  # NULL pool: no pool size

    exposition = prometheus_client.generate_latest(registry).decode()
    assert "# TYPE mountaineer_db_connects_total counter" in exposition
    assert "# TYPE mountaineer_db_connections_checked_out gauge" in exposition
    assert 'mountaineer_db_connects_total{application_name="scraped",database="database \\"' in exposition


async def test_a_fixed_pool_reports_its_size(make_config: Callable[..., DatabaseConfig]) -> None:
    registry = prometheus_client.CollectorRegistry()
    register_collector(registry)
    config = make_config(DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_POOL_SIZE=3, DATABASE_APPLICATION_NAME="fixed")
    async with database_session(config) as session:
        await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        exposition = prometheus_client.generate_latest(registry).decode()
    assert 'mountaineer_db_pool_size{application_name="fixed",' in exposition
    lines = [line for line in exposition.splitlines() if 'application_name="fixed"' in line]
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in lines}
    assert values["mountaineer_db_pool_size"] == 3
    assert values["mountaineer_db_connections_checked_out"] == 1
