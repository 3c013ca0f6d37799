"""FastAPI / Mountaineer dependencies; exported as `mountaineer_db.DatabaseDependencies`.

```python
from mountaineer import ControllerBase, Depends
from mountaineer_db import AsyncSession, DatabaseDependencies

class HomeController(ControllerBase):
    async def render(
        self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)
    ) -> HomeRender:
        ...
```
"""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession

from mountaineer_db.config import DatabaseConfig
from mountaineer_db.engine import engine_for
from mountaineer_db.session import registered_config, session_scope

__all__ = ["get_database_config", "get_db", "get_db_session", "SessionDep"]


async def get_database_config() -> DatabaseConfig:
    """The registered app config, as a `DatabaseConfig` (async: no thread hop per request)."""
    return registered_config()


async def get_db(config: DatabaseConfig = Depends(get_database_config)) -> AsyncEngine:
    """The engine for `config`, created on first use and cached per event loop.

    Outside FastAPI: `engine = await get_db(config=my_config)`.
    """
    return engine_for(config)


async def get_db_session(engine: AsyncEngine = Depends(get_db)) -> AsyncIterator[AsyncSession]:
    """A session with a transaction open. The handler commits; the rest is rolled back."""
    async with session_scope(engine) as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_db_session)]
"""`session: SessionDep` in a handler is `session: AsyncSession = Depends(get_db_session)`."""
