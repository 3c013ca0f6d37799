"""The Mountaineer app: `build_app(config)` assembles the controllers for a config.

`todo_app.main` builds it from `AppConfig()` (the environment and `.env`); tests build it
for their own database. Building does no I/O: with `DATABASE_EMBEDDED=true` the development
database is started (or reused) by the app's lifespan, when the server starts.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from mountaineer import APIException, AppController

from mountaineer_db import ResourceNotFoundError, check_database, dispose_engines
from mountaineer_db.servers.embedded import ensure_embedded_database
from todo_app.config import AppConfig
from todo_app.controllers.detail import DetailController
from todo_app.controllers.errors import TodoNotFound
from todo_app.controllers.home import HomeController
from todo_app.controllers.not_found import NotFoundController


def build_app(config: AppConfig) -> AppController:
    """The app for `config` (which Mountaineer has registered when it was instantiated)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Development only: start or reuse the local PostgreSQL under .mountaineer_db/ and apply
        # the migrations. Does nothing unless DATABASE_EMBEDDED=true; refuses ENVIRONMENT=production.
        ensure_embedded_database(config)
        yield
        await dispose_engines()

    controller = AppController(
        name="Todos",
        # Mountaineer finds todo_app/views/ through config.PACKAGE, which needs the app
        # pip-installed (editable is fine). A package that is not installed passes view_root=.
        config=config,
        fastapi_args={"lifespan": lifespan},
    )
    controller.register(HomeController())
    controller.register(DetailController())
    controller.register(NotFoundController())

    @controller.app.get("/healthz/ready", include_in_schema=False)
    async def ready() -> JSONResponse:
        """Readiness probe: 200 when the database answers and is migrated, else 503 (see docs/operations.md).

        Not a liveness probe: a database outage takes the pods out of rotation, it must not restart them.
        """
        result = await check_database(config)
        return JSONResponse(result.as_dict(), status_code=200 if result.ok else 503)

    def is_page_request(request: Request) -> bool:
        return request.method == "GET" and not request.url.path.startswith(controller.internal_api_prefix)

    async def not_found_page() -> Response:
        """The NotFoundController's page (it takes no arguments), sent with status 404."""
        definition = controller.graph.get_definitions_for_cls(NotFoundController)[0]
        assert definition.route is not None
        page: Response = await definition.route.view_route()
        page.status_code = 404
        return page

    @controller.app.exception_handler(TodoNotFound)
    @controller.app.exception_handler(ResourceNotFoundError)
    async def todo_not_found(request: Request, error: TodoNotFound | ResourceNotFoundError) -> Response:
        """An unknown id: the 404 page for a page request, the JSON error for an action."""
        if not is_page_request(request):
            content = error.internal_model.model_dump() if isinstance(error, APIException) else {"detail": error.detail}
            return JSONResponse(status_code=error.status_code, content=content)
        return await not_found_page()

    mountaineer_validation_handler = controller.app.exception_handlers[RequestValidationError]

    @controller.app.exception_handler(RequestValidationError)
    async def invalid_page_address(request: Request, error: RequestValidationError) -> Response:
        """`/todos/abc`: a page address whose path parameter does not parse names no page (404).

        Anything else (an action's malformed payload) keeps Mountaineer's own handling: a 422.
        """
        if is_page_request(request) and any(detail.get("loc", ())[:1] == ("path",) for detail in error.errors()):
            return await not_found_page()
        response: Response = await mountaineer_validation_handler(request, error)
        return response

    return controller
