"""A two-tenant Mountaineer app on row-level security: what docs/tenants.md describes.

The tenant comes from a header here (`X-Tenant`); a real app reads its auth cookie, session or
subdomain. Every handler that touches tenant rows takes `TenantSession`, so every transaction
it runs carries the tenant (`SET LOCAL app.tenant_id` on its BEGIN) and the table's policy
shows it that tenant's rows only.

- `NotesController`: a page (render tests go through the kit) and a `@sideeffect` action;
- `ProbeController`: answers GET with JSON (no frontend build needed): for each of two
  transactions in one request, the tenant setting the server saw and the tenants of the rows
  visible, and whether a replica served it. The leak tests read it; `/probe-read` uses a read
  session, `/probe-plain` and `/probe-plain-read` sessions without a tenant; `?poison=1`
  leaves a session-level value of the setting behind on the server connection (what a
  careless `SET` would do through PgBouncer).
"""

from pathlib import Path
from typing import Annotated, Any

from fastapi import Request
from fastapi.responses import JSONResponse
from mountaineer import AppController, ConfigBase, ControllerBase, Depends, Metadata, RenderBase, sideeffect
from pydantic import BaseModel
from sqlmodel import func, select

from mountaineer_db import AsyncSession, DatabaseConfig, DatabaseDependencies, ReadSessionDep, SessionDep
from tests.sample_apps.tenant_app.models import Note

VIEWS = Path(__file__).parent / "views"
SETTING = "app.tenant_id"


class TenantAppConfig(DatabaseConfig, ConfigBase):
    DATABASE_TENANT_SETTING: str | None = SETTING


async def current_tenant(request: Request) -> str | None:
    """The tenant this request serves, or None when the client did not say (then: 403)."""
    return request.headers.get("x-tenant") or None


TenantSession = Annotated[AsyncSession, Depends(DatabaseDependencies.for_tenant(current_tenant))]
TenantReadSession = Annotated[AsyncSession, Depends(DatabaseDependencies.for_tenant(current_tenant, read=True))]


async def seen(session: AsyncSession) -> dict[str, Any]:
    """What one transaction sees: the setting, and the tenants and number of the visible notes."""
    setting = (await session.exec(select(func.current_setting(SETTING, True)))).one()
    tenants = (await session.exec(select(Note.tenant_id))).all()
    return {"setting": setting, "tenants": sorted(set(tenants)), "rows": len(tenants)}


class NotesRender(RenderBase):
    notes: list[str]
    tenants: list[str]
    setting: str | None


class NewNote(BaseModel):
    body: str


class NotesController(ControllerBase):
    url = "/notes"
    view_path = "/app/notes/page.tsx"

    async def render(self, session: TenantSession) -> NotesRender:
        notes = (await session.exec(select(Note).order_by(Note.id))).all()  # type: ignore[arg-type]
        setting = (await session.exec(select(func.current_setting(SETTING, True)))).one()
        return NotesRender(
            notes=[note.body for note in notes], tenants=sorted({note.tenant_id for note in notes}), setting=setting
        )

    @sideeffect
    async def add_note(self, payload: NewNote, session: TenantSession, tenant: str = Depends(current_tenant)) -> None:
        session.add(Note(tenant_id=tenant, body=payload.body))
        await session.commit()  # the re-render then reads in a new transaction: the tenant again


class ProbeRender(RenderBase):
    pass


async def _probe(session: AsyncSession, request: Request) -> JSONResponse:
    in_recovery = (await session.exec(select(func.pg_is_in_recovery()))).one()  # served by a replica?
    transactions = [await seen(session)]
    await session.commit()
    transactions.append(await seen(session))
    if request.query_params.get("poison"):
        await session.exec(select(func.set_config(SETTING, "poisoned", False)))  # session-level, not LOCAL
        await session.commit()
    return JSONResponse({"transactions": transactions, "in_recovery": in_recovery})


class ProbeController(ControllerBase):
    url = "/probe"
    view_path = "/app/notes/page.tsx"

    async def render(self, request: Request, session: TenantSession) -> ProbeRender:
        return ProbeRender(metadata=Metadata(explicit_response=await _probe(session, request)))


class ReadProbeController(ControllerBase):
    url = "/probe-read"
    view_path = "/app/notes/page.tsx"

    async def render(self, request: Request, session: TenantReadSession) -> ProbeRender:
        return ProbeRender(metadata=Metadata(explicit_response=await _probe(session, request)))


class PlainProbeController(ControllerBase):
    url = "/probe-plain"
    view_path = "/app/notes/page.tsx"

    async def render(self, request: Request, session: SessionDep) -> ProbeRender:
        return ProbeRender(metadata=Metadata(explicit_response=await _probe(session, request)))


class PlainReadProbeController(ControllerBase):
    url = "/probe-plain-read"
    view_path = "/app/notes/page.tsx"

    async def render(self, request: Request, session: ReadSessionDep) -> ProbeRender:
        return ProbeRender(metadata=Metadata(explicit_response=await _probe(session, request)))


def build_app(config: TenantAppConfig) -> AppController:
    app = AppController(view_root=VIEWS, config=config)
    controllers = (
        NotesController(),
        ProbeController(),
        ReadProbeController(),
        PlainProbeController(),
        PlainReadProbeController(),
    )
    for controller in controllers:
        app.register(controller)
    return app


# The setup SQL of docs/tenants.md for this table, run by the migration role (the owner).
POLICY_SQL = (
    "ALTER TABLE tenant_note ENABLE ROW LEVEL SECURITY",
    "ALTER TABLE tenant_note FORCE ROW LEVEL SECURITY",
    "CREATE POLICY tenant_isolation ON tenant_note "
    "USING (tenant_id = nullif(current_setting('app.tenant_id', true), ''))",
)
