"""Tenants on read replicas: a read served by a streaming replica carries the tenant on its BEGIN.

A read session's BEGIN goes out when the read picks its replica (before SQLAlchemy's
`after_begin`), so the tenant is staged there (`read_sessions` → `tenants.stage_for`). Counted
on the wire through a proxy in front of the replica: a tenant read costs what a read without a
tenant costs.
"""

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from mountaineer.config import unregister_config
from sqlalchemy.engine import URL

from bench.wire import CountingProxy
from mountaineer_db import dispose_engines
from mountaineer_db import migrations as migrations_api
from mountaineer_db.servers.cluster import PostgresCluster
from mountaineer_db.servers.replication import streaming_replicas
from mountaineer_db.testing import plain_role, wait_for_replicas
from tests.sample_apps import server_execute
from tests.sample_apps.tenant_app.app import TenantAppConfig, build_app
from tests.sample_apps.tenant_app.config import MigrationsConfig

DB = "tenant_replicas"
EXPECTED = {"a": 2, "b": 4}
SMALL = {"shared_buffers": "16MB", "max_connections": "60", "synchronous_commit": "on"}


@dataclass
class Servers:
    app_url: URL  # the primary, as the plain app role
    replica_port: int


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    with PostgresCluster.temporary(settings=SMALL) as primary:
        asyncio.run(server_execute(primary, f'CREATE DATABASE "{DB}"'))
        admin = MigrationsConfig(SQLALCHEMY_DATABASE_URI=primary.url(DB))

        async def migrate() -> None:
            await migrations_api.apply(config=admin)
            await dispose_engines()

        asyncio.run(migrate())
        rows = ", ".join(f"('{t}', 'note {n}')" for t, count in EXPECTED.items() for n in range(count))
        asyncio.run(server_execute(primary, f"INSERT INTO tenant_note (tenant_id, body) VALUES {rows}", database=DB))
        with (
            plain_role(admin, name=f"tenant_reader_{secrets.token_hex(3)}") as app_config,
            streaming_replicas(primary, count=1) as replicas,
        ):
            # WAL after the clone: right after the base backup's segment switch, the primary's
            # insert position is past the last record, which an idle primary never sends
            # (wait_for_replicas would wait for it).
            asyncio.run(server_execute(primary, "ANALYZE tenant_note", database=DB))
            yield Servers(app_config.database_url, replicas[0].port)


@pytest.fixture
async def proxy(servers: Servers) -> AsyncIterator[CountingProxy]:
    async with CountingProxy("127.0.0.1", servers.replica_port) as counting:
        yield counting


@pytest.fixture
async def client(servers: Servers, proxy: CountingProxy) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """A client of the sample app reading from the replica (through the counting proxy)."""

    async def config(**overrides: Any) -> TenantAppConfig:
        unregister_config()
        built = TenantAppConfig(
            SQLALCHEMY_DATABASE_URI=servers.app_url,
            DATABASE_REPLICA_URLS=[servers.app_url.set(host="127.0.0.1", port=proxy.port)],
            DATABASE_POOL_TYPE="FIXED_PROCESS",
            **overrides,
        )
        await wait_for_replicas(built)
        return built

    clients: list[httpx.AsyncClient] = []

    async def make(**overrides: Any) -> httpx.AsyncClient:
        app = build_app(await config(**overrides))
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://tenant.test")
        clients.append(http)
        return http

    yield make  # type: ignore[misc]
    for http in clients:
        await http.aclose()
    await dispose_engines()


def _own(tenant: str) -> dict[str, Any]:
    return {"setting": tenant, "tenants": [tenant], "rows": EXPECTED[tenant]}


async def test_a_read_session_on_a_replica_serves_its_tenant(client: Callable[..., Any]) -> None:
    http = await client()
    for tenant in ("a", "b", "a"):
        response = await http.get("/probe-read", headers={"x-tenant": tenant})
        assert response.status_code == 200, response.text
        assert response.json() == {"transactions": [_own(tenant), _own(tenant)], "in_recovery": True}


async def test_get_renders_routed_to_a_replica_serve_their_tenant(client: Callable[..., Any]) -> None:
    """DATABASE_READ_ROUTING=renders: `for_tenant`'s ordinary session on a GET reads from the replica."""
    http = await client(DATABASE_READ_ROUTING="renders")
    response = await http.get("/probe", headers={"x-tenant": "b"})
    assert response.json() == {"transactions": [_own("b"), _own("b")], "in_recovery": True}


async def test_the_tenant_costs_no_round_trip_on_a_replica(client: Callable[..., Any], proxy: CountingProxy) -> None:
    """A tenant read and a read without a tenant take the same round trips on the replica."""
    http = await client()

    async def round_trips(path: str, headers: dict[str, str]) -> int:
        for _ in range(3):
            assert (await http.get(path, headers=headers)).status_code == 200
        proxy.reset()
        for _ in range(4):
            response = await http.get(path, headers=headers)
            assert response.json()["in_recovery"] is True
        return sum(log.round_trips for log in proxy.connections)

    without = await round_trips("/probe-plain-read", {})
    with_tenant = await round_trips("/probe-read", {"x-tenant": "a"})
    assert with_tenant == without
