"""Per-test sessions that roll back, and handing one to a Mountaineer app.

```python
async with rollback_session(config) as session:
    with override_app_session(app, session):
        ...  # GET renders, actions and the re-render after a @sideeffect all use `session`
```
"""

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import HTTPConnection, Request

from mountaineer_db.engines.data_errors import invalid_input_error_for
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.engines.origins import request_origin, work_origin
from mountaineer_db.engines.tenants import bind_tenant, bound_tenant, unbind_tenant
from mountaineer_db.requests.dependencies import get_db_read_session, get_db_session
from mountaineer_db.requests.lazy_loads import LazyLoadCheckedSession, checked_request
from mountaineer_db.requests.rerender import borrowed, end_transaction, offer_to_rerender, shared_session, track_writes
from mountaineer_db.requests.session import run_shielded
from mountaineer_db.settings.config import DatabaseConfig

__all__ = ["override_app_session", "render_controller", "rollback_session", "session_provider"]

logger = logging.getLogger("mountaineer_db")

_OVERRIDES_ATTR = "__mountaineer_dependency_overrides__"  # what mountaineer_di reads (its overrides.py)


@contextlib.asynccontextmanager
async def rollback_session(config_or_engine: DatabaseConfig | AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session whose every change is rolled back on exit, even what the code under test commits.

    It runs inside a transaction on one connection that is rolled back at the end; the
    session works in savepoints (`join_transaction_mode="create_savepoint"`), so `commit()`
    and `rollback()` in the code under test behave as usual in between.
    """
    engine = engine_for(config_or_engine) if isinstance(config_or_engine, DatabaseConfig) else config_or_engine
    async with engine.connect() as connection:
        outer = await connection.begin()
        session = AsyncSession(
            bind=connection,
            expire_on_commit=False,
            join_transaction_mode="create_savepoint",
            sync_session_class=LazyLoadCheckedSession,  # lazy loads in requests checked, as in production
        )
        track_writes(session)
        await session.begin()
        try:
            yield session
        finally:
            await run_shielded(session.close())
            if outer.is_active:
                await run_shielded(outer.rollback())


def session_provider(session: AsyncSession) -> Callable[..., AsyncIterator[AsyncSession]]:
    """A replacement for `get_db_session` that hands out `session` with the request semantics.

    Like the real dependency: the session is in a transaction when the handler starts, what
    the handler did not commit is rolled back when it ends (here: to the last commit, inside
    the test's transaction), a value the database cannot take is an `InvalidInputError`
    (422), and a `@sideeffect`'s re-render gets the same session after the action's
    uncommitted changes are rolled back. What the test wrote before the request is
    committed (inside the test's transaction) first, so the handler sees it and it stays.
    Lazy loads and repeated statements are checked as in production (`lazy_loads`), except that
    DATABASE_LAZY_LOADS defaults to `raise` here whatever ENVIRONMENT says.
    """

    outlives_request: list[Any] = []

    async def provide_test_session(
        request: HTTPConnection = None,  # type: ignore[assignment] # as in get_db_session
    ) -> AsyncIterator[AsyncSession]:
        state = shared_session()
        bind = session.bind
        checks = checked_request(bind, kit=True) if isinstance(bind, AsyncEngine | AsyncConnection) else None
        # Asked again for the same session while one of its requests is open: Mountaineer's
        # re-render (however its request looks: the kit knows its own session).
        if state is not None and state.session is session and state.is_open and state.nested(request):
            with work_origin(request_origin(request)), checks or contextlib.nullcontext():
                async with borrowed(state, keep=outlives_request) as borrowed_session:
                    yield borrowed_session
            return
        if session.in_transaction():
            # What the test itself wrote before the request stays: a request starts from a
            # clean slate in production too. (Releases a savepoint; the test's transaction stays.)
            await session.commit()
        # The test's own instances outlive the request: attached again when it ends, with
        # what they hold (a request's own instances end up detached, as in production).
        outlives_request[:] = list(session.identity_map.values())
        # A request starts with no tenant, as in production (`for_tenant` binds its own); the
        # test's own (`use_tenant`) is back once the request ends.
        test_tenant = bound_tenant(session)
        unbind_tenant(session)
        await session.begin()
        try:
            with work_origin(request_origin(request)), checks or contextlib.nullcontext():
                async with offer_to_rerender(session, request):
                    yield session
        except Exception as error:
            # As in production: a value the database cannot take is the client's 422 (the
            # driver's error, which quotes the value, not chained).
            invalid = invalid_input_error_for(error)
            if invalid is None:
                raise
            raise invalid from None
        finally:
            await run_shielded(end_transaction(session, keep=outlives_request))
            outlives_request.clear()
            unbind_tenant(session)
            if test_tenant is not None:
                bind_tenant(session, test_tenant)

    return provide_test_session


def _controllers(target: Any) -> list[Any]:
    graph = getattr(target, "graph", None)
    if graph is not None:  # an AppController
        return [definition.controller for definition in graph.controllers]
    return [target]


@contextlib.contextmanager
def override_app_session(target: Any, session: AsyncSession) -> Iterator[AsyncSession]:
    """Hand `session` to every `get_db_session` and `get_db_read_session` of a Mountaineer app (or one controller).

    - FastAPI-resolved dependencies (GET renders, actions): through the app's
      `dependency_overrides` (only when `target` is an `AppController`);
    - `render()` re-run by Mountaineer after a `@sideeffect`, which `mountaineer_di` resolves
      outside FastAPI: through the callable-level override `mountaineer_di` reads on each
      controller's `render`, and the request session sharing of `get_db_session` itself.

    Read sessions get the test's session too: a replica could not see what the test's
    transaction holds. (So writes on them are not refused here; see docs/replicas.md.)
    Requests are expected one at a time (an `AsyncSession` is not safe for concurrent use).
    Everything is restored on exit.
    """
    provider = session_provider(session)
    replaced = {get_db_session: provider, get_db_read_session: provider}
    fastapi_app = getattr(target, "app", None)
    overrides: dict[Any, Any] | None = getattr(fastapi_app, "dependency_overrides", None)
    previous_fastapi = {key: overrides.get(key) for key in replaced} if overrides is not None else {}
    if overrides is not None:
        overrides.update(replaced)
    patched: list[tuple[Any, dict[Any, Any] | None]] = []
    for controller in _controllers(target):
        # The outermost function: mountaineer_di merges overrides along `__wrapped__`, outermost last.
        render = getattr(type(controller), "render", None)
        if render is None:
            continue
        existing = getattr(render, _OVERRIDES_ATTR, None)
        patched.append((render, existing))
        setattr(render, _OVERRIDES_ATTR, {**(existing or {}), **replaced})
    try:
        yield session
    finally:
        for render, existing in reversed(patched):
            if existing is None:
                with contextlib.suppress(AttributeError):
                    delattr(render, _OVERRIDES_ATTR)
            else:
                setattr(render, _OVERRIDES_ATTR, existing)
        if overrides is not None:
            for key, previous in previous_fastapi.items():
                if previous is None:
                    overrides.pop(key, None)
                else:
                    overrides[key] = previous


async def render_controller(controller: Any, session: AsyncSession, *, path: str | None = None) -> Any:
    """Run `controller.render()` with its dependencies resolved as Mountaineer does, using `session`.

    For render tests without a frontend build: returns what `render()` returns (its
    `RenderBase` model). `path` is the page URL, for controllers with path parameters.
    """
    from mountaineer_di import get_function_dependencies

    url = getattr(controller, "url", None)
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": path or url or "/",
        "query_string": b"",
        "headers": [],
        "http_version": "1.1",
        "scheme": "http",
        "client": ("127.0.0.1", 0),
        "server": ("testserver", 80),
        "path_params": {},
        "endpoint": controller.render,  # names the work `NotesController.render`, as a page request does
    }
    request = Request(scope)
    provider = session_provider(session)
    async with get_function_dependencies(
        callable=controller.render,
        url=url,
        request=request,
        dependency_overrides={get_db_session: provider, get_db_read_session: provider},
    ) as values:
        result = controller.render(**values)
        if inspect.isawaitable(result):
            result = await result
        return result
