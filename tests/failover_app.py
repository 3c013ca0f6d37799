"""A Mountaineer app for the failover tests (tests/test_failover.py, tests/test_patroni.py).

`/ledger` renders the number of rows, the server's port and whether it is a standby; its
`add` action reads first, then inserts a row and commits (the shape of most actions). The
`/gate...` pages read a table the test can lock, so a test can catch a request mid-statement:
`/gate` as the request's first statement, `/gate-later` after another statement, and
`/gate-after-commit` after a commit, `/gate-pending` with an added row not flushed yet, and
`/gate-autoflush` with one that its ORM query flushes.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from fastapi.responses import JSONResponse
from mountaineer import AppController, ConfigBase, ControllerBase, Metadata, RenderBase, sideeffect
from pydantic import BaseModel
from sqlalchemy import text
from sqlmodel import Field, SQLModel, select

from mountaineer_db import DatabaseConfig, SessionDep
from tests.core_app import write_stub_views

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS ledger (id serial PRIMARY KEY, note text NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS gate (id int)",
)


class FailoverConfig(DatabaseConfig, ConfigBase):
    """Not pip-installed: the app gets a view_root."""


class Ledger(SQLModel, table=True):
    __tablename__ = "ledger"

    id: int | None = Field(default=None, primary_key=True)
    note: str


class Gate(SQLModel, table=True):
    __tablename__ = "gate"

    id: int | None = Field(default=None, primary_key=True)


class LedgerRender(RenderBase):
    count: int
    port: int
    standby: bool


class Entry(BaseModel):
    note: str


async def _ledger(session: SessionDep, *, explicit: bool = False) -> LedgerRender:
    row = (await session.exec(text("SELECT count(*), inet_server_port(), pg_is_in_recovery() FROM ledger"))).one()  # type: ignore[call-overload]
    body = {"count": row[0], "port": row[1], "standby": row[2]}
    if not explicit:  # an action's re-render
        return LedgerRender(**body)
    return LedgerRender(**body, metadata=Metadata(explicit_response=JSONResponse(body)))


class LedgerController(ControllerBase):
    url = "/ledger"
    view_path = "/app/ledger/page.tsx"

    async def render(self, session: SessionDep) -> LedgerRender:
        return await _ledger(session, explicit=True)

    @sideeffect
    async def add(self, payload: Entry, session: SessionDep) -> None:
        await session.exec(text("SELECT 1"))  # type: ignore[call-overload]  # an action reads first
        session.add(Ledger(note=payload.note))
        await session.commit()


class GateController(ControllerBase):
    url = "/gate"
    view_path = "/app/gate/page.tsx"
    before = "first"

    async def render(self, session: SessionDep) -> LedgerRender:
        if self.before in ("statement", "commit"):
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        if self.before == "commit":
            await session.commit()
        if self.before == "pending":  # a change not flushed yet when the statement runs
            session.add(Ledger(note=f"pending-{id(self)}"))
            with session.no_autoflush:
                await session.exec(text("SELECT count(*) FROM gate"))  # type: ignore[call-overload]
        elif self.before == "autoflush":  # an ORM query: its autoflush sends the change first
            session.add(Ledger(note=f"autoflush-{id(self)}"))
            await session.exec(select(Gate))
        else:
            await session.exec(text("SELECT count(*) FROM gate"))  # type: ignore[call-overload]
        return await _ledger(session, explicit=True)


class GateLaterController(GateController):
    url = "/gate-later"
    view_path = "/app/gate-later/page.tsx"
    before = "statement"


class GateAfterCommitController(GateController):
    url = "/gate-after-commit"
    view_path = "/app/gate-after-commit/page.tsx"
    before = "commit"


class GatePendingController(GateController):
    url = "/gate-pending"
    view_path = "/app/gate-pending/page.tsx"
    before = "pending"


class GateAutoflushController(GateController):
    url = "/gate-autoflush"
    view_path = "/app/gate-autoflush/page.tsx"
    before = "autoflush"


ADD = "/internal/api/ledger_controller/add"


@asynccontextmanager
async def failover_client(config: FailoverConfig, view_root: Path, **kwargs: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the app built for `config` (in process); an unhandled error is a 500."""
    pages = ("ledger", "gate", "gate-later", "gate-after-commit", "gate-pending", "gate-autoflush")
    write_stub_views(view_root, "failover-views", *pages)
    app = AppController(view_root=view_root, config=config)
    controllers = (
        GateController(),
        GateLaterController(),
        GateAfterCommitController(),
        GatePendingController(),
        GateAutoflushController(),
    )
    for controller in (LedgerController(), *controllers):
        app.register(controller)
    transport = httpx.ASGITransport(app=app.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", **kwargs) as client:
        yield client
