from fastapi import Depends
from mountaineer import ControllerBase, Metadata, RenderBase, sideeffect
from sqlmodel import select

from mountaineer_db import AsyncSession, DatabaseDependencies
from myapp import models


class HomeRender(RenderBase):
    items: list[models.DetailItem]


class HomeController(ControllerBase):
    url = "/"
    view_path = "/app/home/page.tsx"

    async def render(self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)) -> HomeRender:
        items = (await session.exec(select(models.DetailItem))).all()
        return HomeRender(items=list(items), metadata=Metadata(title="Home"))

    @sideeffect
    async def new_detail(self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)) -> None:
        session.add(models.DetailItem(description="Untitled Item"))
        await session.commit()
