"""Table models returned from `render()` serialize with every loaded field (README Quickstart shape).

SQLAlchemy's rollback expires every instance in the session, even with
`expire_on_commit=False`; an expired SQLModel table object serializes as `{}`. These tests
return table models straight from `render()` (a list, an optional single object, and
relationships loaded with `selectinload`) and check the re-render after a `@sideeffect`
(what Mountaineer serializes after the dependencies have ended), with both pool types.
"""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mountaineer import AppController, ConfigBase, ControllerBase, Depends, RenderBase, sideeffect
from pydantic import BaseModel
from sqlalchemy import event, inspect
from sqlalchemy.orm import selectinload
from sqlalchemy.orm.exc import DetachedInstanceError
from sqlmodel import Field, Relationship, SQLModel, select

from mountaineer_db import AsyncSession, DatabaseConfig, DatabaseDependencies, PoolType
from mountaineer_db.engines.engine import engine_for
from tests.core_app import write_stub_views

ACTION = "/internal/api/heroes_controller"


class HeroesConfig(DatabaseConfig, ConfigBase):
    """The test app is not pip-installed: it passes view_root instead of PACKAGE."""


class RmTeam(SQLModel, table=True):
    __tablename__ = "render_models_team"

    id: int | None = Field(default=None, primary_key=True)
    name: str
    heroes: list["RmHero"] = Relationship(back_populates="team")


class RmHero(SQLModel, table=True):
    __tablename__ = "render_models_hero"

    id: int | None = Field(default=None, primary_key=True)
    name: str
    power: int = 0
    team_id: int | None = Field(default=None, foreign_key="render_models_team.id")
    team: RmTeam | None = Relationship(back_populates="heroes")


class HeroPublic(SQLModel):
    id: int
    name: str


class TeamWithHeroes(SQLModel):
    id: int
    name: str
    heroes: list[HeroPublic]


class HeroesRender(RenderBase):
    heroes: list[RmHero]
    newest: RmHero | None
    teams: list[RmTeam]
    rosters: list[TeamWithHeroes]


class NewHero(BaseModel):
    name: str
    team: str


RETURNED: list[HeroesRender] = []


class HeroesController(ControllerBase):
    url = "/"
    view_path = "/app/heroes/page.tsx"

    async def render(self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)) -> HeroesRender:
        heroes = list((await session.exec(select(RmHero).order_by(RmHero.id))).all())  # type: ignore[arg-type]
        teams = list(
            (await session.exec(select(RmTeam).options(selectinload(RmTeam.heroes)).order_by(RmTeam.id))).all()  # type: ignore[arg-type]
        )
        rendered = HeroesRender(
            heroes=heroes,
            newest=heroes[-1] if heroes else None,
            teams=teams,
            rosters=[TeamWithHeroes.model_validate(team) for team in teams],
        )
        RETURNED.append(rendered)
        return rendered

    @sideeffect
    async def add_hero(
        self, payload: NewHero, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)
    ) -> None:
        team = (await session.exec(select(RmTeam).where(RmTeam.name == payload.team))).first()
        if team is None:
            team = RmTeam(name=payload.team)
        session.add(RmHero(name=payload.name, power=len(payload.name), team=team))
        await session.commit()

    @sideeffect
    async def touch(self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)) -> None:
        """An action that changes nothing."""

    @sideeffect
    async def rename_first(self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)) -> None:
        hero = (await session.exec(select(RmHero).order_by(RmHero.id))).first()  # type: ignore[arg-type]
        assert hero is not None
        hero.name = hero.name.upper()
        await session.commit()


@pytest.fixture(params=[PoolType.NULL, PoolType.FIXED_PROCESS], ids=["NULL", "FIXED_PROCESS"])
def config(request: pytest.FixtureRequest, pg_server: Any, test_database: str) -> HeroesConfig:
    return HeroesConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(test_database), DATABASE_POOL_TYPE=request.param)


@pytest.fixture
async def statements(config: HeroesConfig) -> list[str]:
    """Every statement the app's engine runs from now on."""
    seen: list[str] = []
    event.listen(engine_for(config).sync_engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    return seen


@pytest.fixture
async def client(config: HeroesConfig, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with engine_for(config).begin() as connection:
        await connection.run_sync(lambda sync: SQLModel.metadata.drop_all(sync, [RmHero.__table__, RmTeam.__table__]))  # type: ignore[attr-defined]
        await connection.run_sync(lambda sync: SQLModel.metadata.create_all(sync, [RmTeam.__table__, RmHero.__table__]))  # type: ignore[attr-defined]
    RETURNED.clear()
    write_stub_views(tmp_path, "render-models-views", "heroes")
    app = AppController(view_root=tmp_path, config=config)
    app.register(HeroesController())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://testserver") as http:
        yield http


async def test_the_rerender_after_an_action_serializes_every_loaded_field(client: httpx.AsyncClient) -> None:
    for name, team in (("Ada", "red"), ("Brian", "blue"), ("Cleo", "red")):
        response = await client.post(f"{ACTION}/add_hero", json={"name": name, "team": team})
        assert response.status_code == 200, response.text
    rendered = response.json()["sideeffect"]
    heroes = [(h["id"], h["name"], h["power"]) for h in rendered["heroes"]]
    assert heroes == [(1, "Ada", 3), (2, "Brian", 5), (3, "Cleo", 4)]
    assert rendered["heroes"][0]["team_id"] == 1, "foreign keys are fields too"
    assert rendered["newest"] == {"id": 3, "name": "Cleo", "power": 4, "team_id": 1}
    assert rendered["teams"] == [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]
    assert rendered["rosters"] == [
        {"id": 1, "name": "red", "heroes": [{"id": 1, "name": "Ada"}, {"id": 3, "name": "Cleo"}]},
        {"id": 2, "name": "blue", "heroes": [{"id": 2, "name": "Brian"}]},
    ]


async def test_an_update_is_shown_by_the_rerender(client: httpx.AsyncClient) -> None:
    await client.post(f"{ACTION}/add_hero", json={"name": "Ada", "team": "red"})
    response = await client.post(f"{ACTION}/rename_first")
    assert response.status_code == 200, response.text
    assert [h["name"] for h in response.json()["sideeffect"]["heroes"]] == ["ADA"]


async def test_an_empty_optional_object_serializes_as_null(client: httpx.AsyncClient) -> None:
    response = await client.post(f"{ACTION}/touch")
    assert response.status_code == 200, response.text
    assert response.json()["sideeffect"]["newest"] is None
    assert response.json()["sideeffect"]["heroes"] == []


async def test_what_render_returned_stays_readable_after_the_request_without_any_io(
    client: httpx.AsyncClient, statements: list[str]
) -> None:
    await client.post(f"{ACTION}/add_hero", json={"name": "Ada", "team": "red"})
    rendered = RETURNED[-1]
    hero = rendered.heroes[0]
    assert inspect(hero).detached, "the request is over: the instance is detached, not expired"
    statements.clear()
    assert rendered.model_dump()["heroes"][0] == {"id": 1, "name": "Ada", "power": 3, "team_id": 1}
    assert rendered.teams[0].heroes[0] is hero, "the selectinload'ed collection is kept as loaded"
    with pytest.raises(DetachedInstanceError):
        _ = hero.team  # never loaded: an error, never a lazy load
    assert statements == [], "reading what render() returned ran no SQL"
