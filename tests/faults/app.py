"""The Mountaineer app the fault tests drive: one controller, actions that write and sleep."""

from pathlib import Path

from mountaineer import ConfigBase, ControllerBase, Depends, RenderBase, sideeffect
from mountaineer.app import AppController
from pydantic import BaseModel, Field
from sqlalchemy import text

from mountaineer_db import AsyncSession, DatabaseConfig, DatabaseDependencies

TABLE = "fault_rows"
APP_NAME = "faults-app"


class FaultsConfig(DatabaseConfig, ConfigBase):
    """The app's config: a `DatabaseConfig` registered with Mountaineer when built."""

    PACKAGE: str | None = None


class RowIn(BaseModel):
    """An action payload: the row id the client chose, and optional server-side sleeps."""

    id: int = Field(ge=1, le=2**63 - 1)  # the column is a bigint: the model says so, not the database
    sleep_before_commit: float = 0.0


class SleepIn(BaseModel):
    seconds: float


class PageRender(RenderBase):
    ok: bool


class FaultController(ControllerBase):
    url = "/"
    view_path = "/app/page.tsx"

    async def render(self) -> PageRender:
        return PageRender(ok=True)

    @sideeffect
    async def insert_row(
        self, payload: RowIn, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)
    ) -> None:
        """Insert a row with the client's id, optionally sleep in the transaction, commit."""
        await session.exec(text(f"INSERT INTO {TABLE} (id) VALUES (:id)").bindparams(id=payload.id))  # type: ignore[call-overload]
        if payload.sleep_before_commit:
            await session.exec(text("SELECT pg_sleep(:s)").bindparams(s=payload.sleep_before_commit))  # type: ignore[call-overload]
        await session.commit()

    @sideeffect
    async def sleep_uncommitted(
        self, payload: RowIn, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)
    ) -> None:
        """Insert a row and sleep, never committing: nothing of it may ever be visible."""
        await session.exec(text(f"INSERT INTO {TABLE} (id) VALUES (:id)").bindparams(id=payload.id))  # type: ignore[call-overload]
        await session.exec(text("SELECT pg_sleep(:s)").bindparams(s=payload.sleep_before_commit))  # type: ignore[call-overload]

    @sideeffect
    async def no_query(self, payload: RowIn) -> None:
        """An action that never touches the database."""


VIEWS = Path(__file__).parent / "views"


def build_app(config: FaultsConfig) -> AppController:
    """A Mountaineer app serving `FaultController` (its view is a stub: actions need no build)."""
    app = AppController(view_root=VIEWS, config=config)
    app.register(FaultController())
    return app


INSERT_PATH = "/internal/api/fault_controller/insert_row"
UNCOMMITTED_PATH = "/internal/api/fault_controller/sleep_uncommitted"
NO_QUERY_PATH = "/internal/api/fault_controller/no_query"
