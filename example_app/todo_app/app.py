"""The Mountaineer app: config, controllers, and the database's start-up and shut-down.

`controller` is what `mountaineer` builds (`todo-app build`); `todo_app.main:app` is the
ASGI app to serve. Importing this module does no I/O: with `DATABASE_EMBEDDED=true` the
development database is started (or reused) when the app starts, not at import.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from mountaineer import AppController

from mountaineer_db import dispose_engines
from mountaineer_db.embedded import ensure_embedded_database
from todo_app.config import AppConfig
from todo_app.controllers.detail import DetailController
from todo_app.controllers.errors import TodoNotFound
from todo_app.controllers.home import HomeController
from todo_app.controllers.not_found import NotFoundController

config = AppConfig()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Development only: start or reuse the local PostgreSQL under .mountaineer_db/ and apply
    # migrations. Does nothing unless DATABASE_EMBEDDED=true; refuses ENVIRONMENT=production.
    ensure_embedded_database(config)
    yield
    await dispose_engines()


controller = AppController(
    name="Todos",
    config=config,
    # PACKAGE resolves the views when the app is pip-installed (`pip install -e example_app`).
    view_root=Path(__file__).parent / "views",
    fastapi_args={"lifespan": lifespan},
)
controller.register(HomeController())
controller.register(DetailController())
controller.register(NotFoundController())


@controller.app.exception_handler(TodoNotFound)
async def todo_not_found(request: Request, error: TodoNotFound) -> Response:
    """An unknown id: the 404 page for a page request, the JSON error for an action."""
    if request.method != "GET" or request.url.path.startswith(controller.internal_api_prefix):
        return JSONResponse(status_code=error.status_code, content=error.internal_model.model_dump())
    # Render the NotFoundController page (it takes no arguments) and send it with status 404.
    definition = controller.graph.get_definitions_for_cls(NotFoundController)[0]
    assert definition.route is not None
    page: Response = await definition.route.view_route()
    page.status_code = 404
    return page
