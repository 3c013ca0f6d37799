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
`@sideeffect` gets the action's session (`mountaineer_db.requests.rerender` says how).

With DATABASE_REPLICA_URLS, `get_db_read_session` (and, with DATABASE_READ_ROUTING=renders,
`get_db_session` in GET requests) reads from a replica (`mountaineer_db.requests.read_sessions`), and
commits on the primary are tracked so that each client reads its own writes
(`mountaineer_db.replicas.read_your_writes`). Without replicas nothing of that runs.
"""

import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from contextvars import Token
from types import TracebackType
from typing import Annotated, Any

from fastapi import Depends, params
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.requests import HTTPConnection
from starlette.responses import Response

from mountaineer_db.engines.engine import engine_for
from mountaineer_db.engines.origins import enter_origin, leave_origin, request_origin, work_origin
from mountaineer_db.engines.request_checks import CHECKS_ATTRIBUTE
from mountaineer_db.engines.tenants import bind_tenant
from mountaineer_db.exceptions import ConfigurationError, DatabaseNotSetUpError
from mountaineer_db.replicas.read_your_writes import Positions
from mountaineer_db.replicas.replica_set import remember_replicas, replicas_of
from mountaineer_db.requests.lazy_loads import checked
from mountaineer_db.requests.lifespan import with_development_database
from mountaineer_db.requests.read_sessions import EXPLICIT, RENDERS, is_page_read, is_rerender, read_session
from mountaineer_db.requests.replicated_session import ReplicatedRequestSession
from mountaineer_db.requests.rerender import SharedSession, borrowed, offer, shared_session, withdraw
from mountaineer_db.requests.session import DisconnectGuard, RequestSyncSession, SessionScope
from mountaineer_db.requests.setup_errors import install_setup_page
from mountaineer_db.settings.appconfig import registered_config
from mountaineer_db.settings.config import DatabaseConfig

__all__ = [
    "ReadSessionDep",
    "SessionDep",
    "for_tenant",
    "get_database_config",
    "get_db",
    "get_db_read_session",
    "get_db_session",
]


def _app_config() -> DatabaseConfig:
    # The registered config; with DATABASE_EMBEDDED, on the development database, started on
    # first use when no `database_lifespan` did it at startup.
    return with_development_database(registered_config())


async def get_database_config() -> DatabaseConfig:
    """The registered app config, as a `DatabaseConfig` (async: no thread hop per request).

    With DATABASE_EMBEDDED=true, the config of the development database, which the first
    request starts when the app's lifespan did not (`with_development_database`).
    """
    return _app_config()


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


def _engine(config: DatabaseConfig) -> AsyncEngine:
    engine = engine_for(config)
    remember_replicas(engine, config)  # which replicas its read sessions use (none: nothing happens)
    return engine


async def get_db(config: DatabaseConfig = Depends(get_database_config)) -> AsyncEngine:
    """The engine for `config`, created on first use and cached per process and event loop.

    Outside FastAPI: `engine = await get_db(config=my_config)`, or `await get_db()` for the
    registered app config.
    """
    if not isinstance(config, DatabaseConfig):  # the `Depends` default: called outside FastAPI
        config = _given(config, "config", DatabaseConfig) or _app_config()
    engine = engine_for(config)
    remember_replicas(engine, config)  # which replicas its read sessions use (none: nothing happens)
    return engine


class _RequestWork:
    """`async with _RequestWork(request, engine):` the request's controller and action name its
    work in tags and log lines (`origins`), its lazy loads and repeated statements are checked
    (`lazy_loads`); a table that does not exist yet answers with the "not set up yet" page.

    A class: an `asynccontextmanager` costs a dozen more Python calls per request.
    """

    __slots__ = ("_checked", "_request", "_token")

    def __init__(self, request: HTTPConnection | None, engine: AsyncEngine) -> None:
        self._request = request
        checks = getattr(engine.sync_engine, CHECKS_ATTRIBUTE, None)  # None (nothing to run) unless they are on
        self._checked = checked(checks) if checks is not None else None

    async def __aenter__(self) -> None:
        self._token = _work_begins(self._request, self._checked)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        _work_ends(self._request, self._checked, self._token, error)


def _work_begins(request: HTTPConnection | None, checks: AbstractContextManager[None] | None) -> Token[Any]:
    """`_RequestWork`'s entry: the request's origin set, its checks begun; the origin's token."""
    token = enter_origin(None if request is None else request.scope.get("endpoint"))  # `request_origin`, inline
    if checks is not None:
        try:
            checks.__enter__()
        except BaseException:
            leave_origin(token)
            raise
    return token


def _work_ends(
    request: HTTPConnection | None,
    checks: AbstractContextManager[None] | None,
    token: Token[Any],
    error: BaseException | None,
) -> None:
    """`_RequestWork`'s exit, `error` being what leaves the block."""
    try:
        if checks is not None:
            checks.__exit__(None if error is None else type(error), error, None)
        if isinstance(error, DatabaseNotSetUpError):
            install_setup_page(request)
    finally:
        leave_origin(token)


class _RequestScope(SessionScope):
    """`get_db_session`'s scope: in one context manager what these do nested, in this order,

    ```python
    async with (
        _RequestWork(request, engine),
        DisconnectGuard(request) as guard,
        session_scope(engine, sync_session_class=...) as session,
        offer_to_rerender(session, request, engine=engine),
    ):
        guard.watch(session)
    ```

    each layer seeing on its way out what the layer inside it let out. One context manager
    instead of four is ~10 Python calls fewer per request (`bench/count_calls.py`); the parts
    stay in their modules (`_work_begins`/`_work_ends`, `DisconnectGuard.watch`/`finish`,
    `SessionScope`, `offer`/`withdraw`).
    """

    __slots__ = ("_checked", "_guard", "_offered", "_request", "_token")

    def __init__(self, request: HTTPConnection | None, engine: AsyncEngine, sync_session_class: type[Any]) -> None:
        self._engine = self._bind = engine  # `SessionScope.__init__`, inline
        self._sync_session_class = sync_session_class
        self._request = request
        checks = getattr(engine.sync_engine, CHECKS_ATTRIBUTE, None)  # None (nothing to run) unless they are on
        self._checked = checked(checks) if checks is not None else None
        # The guard listens only once the body was read (`DisconnectGuard`): none otherwise.
        self._guard = DisconnectGuard(request) if hasattr(request, "_body") else None  # type: ignore[arg-type]
        self._offered: tuple[SharedSession, Token[SharedSession | None]] | None = None

    async def __aenter__(self) -> AsyncSession:
        request = self._request
        self._token = _work_begins(request, self._checked)
        try:
            session = self.open_session()  # no I/O: nothing to give back if what follows fails
            if request is not None:  # without a request (mountaineer_di), nothing to share
                state = SharedSession(session, request, self._engine)
                self._offered = (state, offer(state))
        except BaseException as error:
            _work_ends(request, self._checked, self._token, error)
            raise
        return session

    def watch(self, session: AsyncSession) -> None:
        """`DisconnectGuard.watch`: called once the session is set up (a disconnect cancels the work in flight)."""
        if self._guard is not None:
            self._guard.watch(session)

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> bool:
        outcome = error  # what leaves each layer, innermost first
        try:
            try:
                try:
                    if self._offered is not None:
                        withdraw(*self._offered)
                finally:  # the session is given back whatever happens above
                    await super().__aexit__(kind, error, tb)  # never swallows: returns False or raises
            except BaseException as raised:
                outcome = raised
                raise
            finally:
                if self._guard is not None:
                    disconnected = self._guard.finish(outcome)
                    if disconnected is not None:
                        outcome = disconnected
                        raise disconnected from None
        finally:
            _work_ends(self._request, self._checked, self._token, outcome)
        return False


@asynccontextmanager
async def _rerender(state: SharedSession, request: HTTPConnection, engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """The re-render after a @sideeffect: the action's session; its work is the controller's `render`."""
    checks = getattr(engine.sync_engine, CHECKS_ATTRIBUTE, None)
    with work_origin(request_origin(request)), checked(checks) if checks is not None else contextlib.nullcontext():
        async with borrowed(state) as session:
            yield session


async def get_db_session(
    engine: AsyncEngine = Depends(get_db),
    # HTTPConnection, not Request: FastAPI injects the request either way, while mountaineer_di
    # passes it when it has one and otherwise leaves the None default (it insists on a value
    # for parameters annotated Request), so resolving without a request keeps working.
    request: HTTPConnection = None,  # type: ignore[assignment]
    # FastAPI's response for this request: where the read-your-writes cookie goes (replicas only).
    response: Response = None,  # type: ignore[assignment]
) -> AsyncIterator[AsyncSession]:
    """A session with a transaction open. The handler commits; the rest is rolled back.

    One per request: Mountaineer's re-render after a `@sideeffect` gets the action's session,
    and the session keeps one connection across commits. With DATABASE_READ_ROUTING=renders
    and replicas configured, a GET request gets a read-only session on a replica instead.
    """
    if not isinstance(engine, AsyncEngine):  # the `Depends` default: called outside FastAPI
        engine = _given(engine, "engine", AsyncEngine) or _engine(_app_config())
    state = shared_session()
    if state is not None and state.serves(request, engine):
        async with _rerender(state, request, engine) as session:
            yield session
        return
    replicas = replicas_of(engine)
    if replicas is not None and replicas.renders and is_page_read(request):
        async with _RequestWork(request, engine), read_session(engine, replicas, request, label=RENDERS) as session:
            yield session
        return
    scope = _RequestScope(request, engine, RequestSyncSession if replicas is None else ReplicatedRequestSession)
    async with scope as session:
        if replicas is not None:  # note where commits went, for this client's next reads
            session.sync_session._mdb_positions = Positions(replicas.signer, request, response)  # type: ignore[attr-defined]
        scope.watch(session)  # a client disconnect cancels the work in flight (docs/request-sessions.md)
        yield session


async def get_db_read_session(
    engine: AsyncEngine = Depends(get_db),
    request: HTTPConnection = None,  # type: ignore[assignment]  # as in get_db_session
) -> AsyncIterator[AsyncSession]:
    """A read-only session on a replica fit to serve the read, else on the primary.

    It sees this client's own earlier writes (the replica has replayed them, or the read goes
    to the primary). Writes fail with `ReadOnlySessionError`; use `get_db_session` for them.
    Mountaineer's re-render after a `@sideeffect` reads the primary (the action's session).
    Without DATABASE_REPLICA_URLS it is a read-only session on the primary.
    """
    engine = _given(engine, "engine", AsyncEngine) or _engine(_app_config())
    state = shared_session()
    if state is not None and state.serves(request, engine):
        async with _rerender(state, request, engine) as session:
            yield session
        return
    replicas = None if is_rerender(request) else replicas_of(engine)
    async with _RequestWork(request, engine), read_session(engine, replicas, request, label=EXPLICIT) as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_db_session)]
"""`session: SessionDep` in a handler is `session: AsyncSession = Depends(get_db_session)`."""

ReadSessionDep = Annotated[AsyncSession, Depends(get_db_read_session)]
"""`session: ReadSessionDep` is `session: AsyncSession = Depends(get_db_read_session)`."""


def for_tenant(current_tenant: Callable[..., Any], *, read: bool = False) -> Callable[..., Any]:
    """A request-session dependency whose every transaction serves the tenant `current_tenant` names.

    ```python
    async def current_tenant(request: Request) -> UUID | None:   # the app's own: cookie, subdomain...
        ...

    TenantSession = Annotated[AsyncSession, Depends(DatabaseDependencies.for_tenant(current_tenant))]
    ```

    `current_tenant` is any FastAPI dependency returning the tenant's id (a str, int or UUID),
    or None when it does not know it: then the request fails with `TenantRequiredError` (403)
    before any statement runs (raise your own `HTTPException(401)` in it to answer 401 instead).
    The session is `get_db_session`'s (`get_db_read_session`'s with `read=True`), so the
    re-render after an action shares it, and the test kit's session override reaches it.
    Needs DATABASE_TENANT_SETTING; see docs/tenants.md.
    """
    source = get_db_read_session if read else get_db_session

    async def tenant_session(
        tenant: Any = Depends(current_tenant),
        session: AsyncSession = Depends(source),
        config: DatabaseConfig = Depends(get_database_config),
    ) -> AsyncSession:
        bind_tenant(session, tenant, config)  # no I/O: the tenant rides on the next BEGIN
        return session

    tenant_session.__qualname__ = f"for_tenant({getattr(current_tenant, '__qualname__', current_tenant)!s})"
    return tenant_session
