"""A schema change under load: a Mountaineer app on a FIXED_PROCESS pool, concurrent GETs, and
an ALTER from another connection while they run. Used by tests/test_stale_statements.py.

Run directly for the failure counts without and with the recovery (a throwaway PostgreSQL):

    .venv/bin/python -m tests.stale_load
"""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi.responses import JSONResponse
from mountaineer import AppController, ConfigBase, ControllerBase, Metadata, RenderBase
from sqlalchemy import text
from sqlmodel import Field, SQLModel, select

from mountaineer_db import DatabaseConfig, SessionDep
from tests.core_app import write_stub_views
from tests.sample_apps import server_execute

POOL_SIZE = 4
CONCURRENCY = 8

SCHEMA = (
    "DROP TABLE IF EXISTS stale_item, stale_pair",
    "DROP TYPE IF EXISTS stale_point",
    "CREATE TABLE stale_item (id int PRIMARY KEY, name varchar(40), score int NOT NULL)",
    "INSERT INTO stale_item SELECT g, 'item ' || g, g FROM generate_series(1, 20) g",
    "CREATE TYPE stale_point AS (x int, y int)",
    "CREATE TABLE stale_pair (id int PRIMARY KEY, point stale_point)",
    "INSERT INTO stale_pair SELECT g, ROW(g, g)::stale_point FROM generate_series(1, 20) g",
)

# name: (page, schema change). Each changes what a statement the page runs returns; on these
# pages that statement is the transaction's first. LATER[page] runs another statement first.
SCENARIOS = {
    "column_type": ("/items", "ALTER TABLE stale_item ALTER COLUMN score TYPE bigint"),
    "drop_and_add_column": ("/items", "ALTER TABLE stale_item DROP COLUMN name, ADD COLUMN name text"),
    "composite_type": ("/pairs", "ALTER TYPE stale_point ADD ATTRIBUTE z int"),
}


class StaleConfig(DatabaseConfig, ConfigBase):
    """Not pip-installed: the app gets a view_root."""


class StaleItem(SQLModel, table=True):
    __tablename__ = "stale_item"

    id: int = Field(primary_key=True)
    name: str | None = None
    score: int


class JSONRender(RenderBase):
    pass


async def _backend_pid(session: SessionDep) -> int:
    return int((await session.exec(text("SELECT pg_backend_pid()"))).one()[0])  # type: ignore[call-overload]


LATER = {"/items": "/items-later", "/pairs": "/pairs-later"}


class ItemsController(ControllerBase):
    url = "/items"
    view_path = "/app/items/page.tsx"
    first = ""

    async def render(self, session: SessionDep) -> JSONRender:
        if self.first:
            await session.exec(text(self.first))  # type: ignore[call-overload]
        items = (await session.exec(select(StaleItem).where(StaleItem.id <= 5).order_by(StaleItem.id))).all()  # type: ignore[arg-type]
        pid = await _backend_pid(session)
        body = {"pid": pid, "scores": [item.score for item in items]}
        return JSONRender(metadata=Metadata(explicit_response=JSONResponse(body)))


class PairsController(ControllerBase):
    url = "/pairs"
    view_path = "/app/pairs/page.tsx"
    first = ""

    async def render(self, session: SessionDep) -> JSONRender:
        if self.first:
            await session.exec(text(self.first))  # type: ignore[call-overload]
        rows = (await session.exec(text("SELECT id, point FROM stale_pair WHERE id <= 5 ORDER BY id"))).all()  # type: ignore[call-overload]
        pid = await _backend_pid(session)
        body = {"pid": pid, "points": [str(row[1]) for row in rows]}
        return JSONRender(metadata=Metadata(explicit_response=JSONResponse(body)))


class ItemsLaterController(ItemsController):
    """/items, after another statement: the stale one is not the transaction's first."""

    url = "/items-later"
    view_path = "/app/items-later/page.tsx"
    first = "SELECT 1"


class PairsLaterController(PairsController):
    url = "/pairs-later"
    view_path = "/app/pairs-later/page.tsx"
    first = "SELECT 1"


def fixed_pool_config(url: Any, **overrides: Any) -> StaleConfig:
    values = {"DATABASE_POOL_TYPE": "FIXED_PROCESS", "DATABASE_POOL_SIZE": POOL_SIZE, "DATABASE_MAX_OVERFLOW": 0}
    return StaleConfig(SQLALCHEMY_DATABASE_URI=url, **{**values, **overrides})


@asynccontextmanager
async def app_client(config: StaleConfig, view_root: Path) -> AsyncIterator[httpx.AsyncClient]:
    write_stub_views(view_root, "stale-views", "items", "pairs", "items-later", "pairs-later")
    app = AppController(view_root=view_root, config=config)
    for controller in (ItemsController(), PairsController(), ItemsLaterController(), PairsLaterController()):
        app.register(controller)
    # An unhandled error answers 500, as a server would, instead of raising in the client.
    transport = httpx.ASGITransport(app=app.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@dataclass
class Outcome:
    round: int
    started: float
    ended: float
    status: int
    body: Any
    retry_after: str | None


async def run_load(
    client: httpx.AsyncClient,
    server: Any,
    database: str,
    page: str,
    change: str,
    *,
    rounds_before: int = 5,
    rounds_after: int = 15,
) -> list[Outcome]:
    """Rounds of CONCURRENCY concurrent GETs of `page`; `change` runs alongside round `rounds_before`."""
    outcomes: list[Outcome] = []

    async def get(round_number: int) -> None:
        started = time.monotonic()
        response = await client.get(page)
        outcomes.append(
            Outcome(
                round_number,
                started,
                time.monotonic(),
                response.status_code,
                response.json() if response.headers.get("content-type") == "application/json" else response.text,
                response.headers.get("retry-after"),
            )
        )

    for round_number in range(rounds_before + rounds_after):
        requests = [get(round_number) for _ in range(CONCURRENCY)]
        if round_number == rounds_before:
            requests.append(server_execute(server, change, database=database))
        await asyncio.gather(*requests)
    return outcomes


async def _measure() -> None:
    import logging
    import tempfile

    from mountaineer.config import unregister_config

    from mountaineer_db import dispose_engines
    from mountaineer_db.engines.engine import engine_for
    from mountaineer_db.engines.stale_statements import uninstall_stale_statement_recovery
    from mountaineer_db.servers.cluster import PostgresCluster

    logging.disable(logging.CRITICAL)
    with PostgresCluster.temporary() as server:
        await server_execute(server, "CREATE DATABASE stale_load")
        print(
            f"{CONCURRENCY} concurrent GETs per round, FIXED_PROCESS pool of {POOL_SIZE}, 5 rounds, change, 15 rounds"
        )
        for name, (first_page, change) in SCENARIOS.items():
            for recovery, page in ((False, first_page), (True, first_page), (True, LATER[first_page])):
                await server_execute(server, *SCHEMA, database="stale_load")
                unregister_config()
                config = fixed_pool_config(server.url("stale_load"))
                if not recovery:
                    uninstall_stale_statement_recovery(engine_for(config))
                async with app_client(config, Path(tempfile.mkdtemp()) / "views") as client:
                    outcomes = await run_load(client, server, "stale_load", page, change)
                await dispose_engines()
                failed = [o for o in outcomes if o.status != 200]
                statuses = sorted({o.status for o in failed})
                label = ("with recovery" if recovery else "without recovery") + (", later" if "later" in page else "")
                print(f"{name:20} {label:24}: {len(failed):3} of {len(outcomes)} requests failed, statuses {statuses}")


if __name__ == "__main__":
    asyncio.run(_measure())
