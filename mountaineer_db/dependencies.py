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

One session, and one server connection, per request: the session keeps the connection it
took across its commits until the request ends, and Mountaineer's re-render after a
`@sideeffect` gets the action's session (`mountaineer_db.rerender` says how).
"""

from collections.abc import AsyncIterator
from typing import Annotated, Any, cast

from fastapi import Depends, params
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import HTTPConnection, Request

from mountaineer_db.appconfig import registered_config
from mountaineer_db.config import DatabaseConfig
from mountaineer_db.engine import engine_for
from mountaineer_db.exceptions import ConfigurationError, DatabaseNotSetUpError
from mountaineer_db.origins import request_origin, work_origin
from mountaineer_db.rerender import borrowed, offer_to_rerender, shared_session
from mountaineer_db.session import DisconnectGuard, RequestSyncSession, session_scope
from mountaineer_db.setup_errors import install_setup_page

__all__ = ["SessionDep", "get_database_config", "get_db", "get_db_session"]


async def get_database_config() -> DatabaseConfig:
    """The registered app config, as a `DatabaseConfig` (async: no thread hop per request)."""
    return registered_config()


def _given(value: Any, name: str, kind: type) -> Any:
    """`value`, or None when it is the `Depends(...)` default (called outside FastAPI)."""
    if isinstance(value, params.Depends):
        return None
    if not isinstance(value, kind):
        raise ConfigurationError(
            f"{name}= must be a {kind.__name__}, not {type(value).__name__}. Outside FastAPI, call "
            f"`await get_db(config=my_config)`, or `await get_db()` for the registered app config."
        )
    return value


async def get_db(config: DatabaseConfig = Depends(get_database_config)) -> AsyncEngine:
    """The engine for `config`, created on first use and cached per process and event loop.

    Outside FastAPI: `engine = await get_db(config=my_config)`, or `await get_db()` for the
    registered app config.
    """
    return engine_for(_given(config, "config", DatabaseConfig) or registered_config())


async def get_db_session(
    engine: AsyncEngine = Depends(get_db),
    # HTTPConnection, not Request: FastAPI injects the request either way, while mountaineer_di
    # passes it when it has one and otherwise leaves the None default (it insists on a value
    # for parameters annotated Request), so resolving without a request keeps working.
    request: HTTPConnection = None,  # type: ignore[assignment]
) -> AsyncIterator[AsyncSession]:
    """A session with a transaction open. The handler commits; the rest is rolled back.

    One per request: Mountaineer's re-render after a `@sideeffect` gets the action's session,
    and the session keeps one connection across commits.
    """
    engine = _given(engine, "engine", AsyncEngine) or engine_for(registered_config())
    state = shared_session()
    if state is not None and state.serves(request, engine):
        # The re-render after a @sideeffect: its work is the controller's `render`.
        with work_origin(request_origin(request)):
            async with borrowed(state) as session:
                yield session
        return
    # The request's controller and action name its work in tags and log lines (`origins`).
    with work_origin(request_origin(request)):
        try:
            async with (
                # FastAPI hands a Request here; without one (None) the guard stays idle.
                DisconnectGuard(cast(Request, request)) as guard,
                session_scope(engine, sync_session_class=RequestSyncSession) as session,
                offer_to_rerender(session, request, engine=engine),
            ):
                guard.watch(session)  # a client disconnect cancels the work in flight (README: Failure behaviour)
                yield session
        except DatabaseNotSetUpError:
            install_setup_page(request)  # the app answers it with the "not set up yet" page
            raise


SessionDep = Annotated[AsyncSession, Depends(get_db_session)]
"""`session: SessionDep` in a handler is `session: AsyncSession = Depends(get_db_session)`."""
