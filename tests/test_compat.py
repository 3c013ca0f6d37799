"""Canaries: what we rely on in other libraries beyond their documented APIs.

Each test names the upstream change that would break us; docs/compatibility.md lists them.
When one fails after an upgrade, the message says what moved and what of ours depends on it.
"""

import inspect
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi import FastAPI, Request
from mountaineer import AppController, ConfigBase, ControllerBase, Depends, RenderBase, sideeffect
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.util import greenlet_spawn
from sqlmodel import Field, SQLModel, select

from mountaineer_db import AsyncSession, DatabaseConfig, DatabaseDependencies, database_session
from mountaineer_db.engines.connections import MountaineerConnection
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.migrations import migration_engine
from mountaineer_db.migrations.autocommit import OutsideTransactions
from tests.core_app import write_stub_views


async def test_canary_sqlalchemy_begins_asyncpg_transactions_through_connection_transaction(
    make_config: Any,
) -> None:
    """Upstream: `AsyncAdapt_asyncpg_connection._start_transaction` (sqlalchemy/dialects/postgresql/asyncpg.py)
    calling `connection.transaction(isolation=, readonly=, deferrable=).start()`. Ours: the
    per-transaction timeouts ride on that BEGIN (`MountaineerConnection.transaction`)."""
    config = make_config(DATABASE_STATEMENT_TIMEOUT=1.5)
    async with database_session(config) as session:
        connection = await session.connection()
        driver = (await connection.get_raw_connection()).driver_connection
        timeout = (await session.exec(text("SHOW statement_timeout"))).one()[0]  # type: ignore[call-overload]
        assert isinstance(driver, MountaineerConnection), "SQLAlchemy no longer wraps the connection our creator opens"
        assert driver._mdb_open_transaction, (
            "SQLAlchemy's asyncpg adapter no longer starts transactions with asyncpg's Connection.transaction(); "
            "DATABASE_*_TIMEOUT settings are not applied at BEGIN any more"
        )
        assert timeout == "1500ms"


async def test_canary_sqlalchemy_asyncpg_dbapi_takes_adapter_arguments_with_async_creator_fn(
    make_config: Any,
) -> None:
    """Upstream: `AsyncAdapt_asyncpg_dbapi.connect(async_creator_fn=, prepared_statement_cache_size=,
    prepared_statement_name_func=)`, the form SQLAlchemy's `async_creator` docs point to. Ours: every
    connection, unnamed prepared statements (PgBouncer-safe) by default."""
    config = make_config()
    dbapi = engine_for(config).sync_engine.dialect.dbapi
    parameters = inspect.getsource(type(dbapi).connect)  # type: ignore[arg-type]
    for argument in ("async_creator_fn", "prepared_statement_cache_size", "prepared_statement_name_func"):
        assert argument in parameters, f"SQLAlchemy's asyncpg DBAPI connect() no longer takes {argument}"
    async with database_session(config) as session:
        await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        left = (await session.exec(text("SELECT count(*) FROM pg_prepared_statements"))).one()[0]  # type: ignore[call-overload]
    assert left == 0, "named prepared statements were left on the server connection"


async def test_canary_sqlalchemy_in_greenlet() -> None:
    """Upstream: `sqlalchemy.util.concurrency.in_greenlet`. Ours: `RequestSyncSession.get_bind` opens its
    kept connection only where I/O is possible (inside SQLAlchemy's greenlet)."""
    from sqlalchemy.util.concurrency import in_greenlet

    assert in_greenlet() is False
    assert await greenlet_spawn(in_greenlet) is True


def test_canary_starlette_keeps_a_read_body_in_request_body_attribute() -> None:
    """Upstream: Starlette's `Request.body()` caching the body as `Request._body`. Ours: `DisconnectGuard`
    listens for a client disconnect only once the body has been read, so it never takes a message a
    handler waits for; without `_body` it would never listen (no cancellation on disconnect)."""
    app = FastAPI()
    seen: list[bool] = []

    @app.post("/")
    async def handler(request: Request) -> dict[str, bool]:
        before = hasattr(request, "_body")
        await request.body()
        seen.extend([before, hasattr(request, "_body")])
        return {}

    import asyncio

    async def call() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            await client.post("/", content=b"x")

    asyncio.run(call())
    assert seen == [False, True], "Starlette no longer keeps the read body in Request._body"


def test_canary_mountaineer_di_reads_the_callable_override_attribute() -> None:
    """Upstream: mountaineer_di's overrides module reading `__mountaineer_dependency_overrides__` on a
    callable. Ours: `mountaineer_db.testing.override_app_session` reaches the @sideeffect re-render
    through it."""
    from mountaineer_di import overrides

    from mountaineer_db.testing.sessions import _OVERRIDES_ATTR

    assert overrides._DEPENDENCY_OVERRIDES_ATTR == _OVERRIDES_ATTR, (
        "mountaineer_di renamed its callable-level override attribute; the test kit's session no longer "
        "reaches render() re-run after a @sideeffect"
    )


# -- Mountaineer's re-render ---------------------------------------------------------------


class CompatConfig(DatabaseConfig, ConfigBase):
    """The test app is not pip-installed: it passes view_root instead of PACKAGE."""


class CompatNote(SQLModel, table=True):
    __tablename__ = "compat_note"

    id: int | None = Field(default=None, primary_key=True)
    text: str


class NotesRender(RenderBase):
    notes: list[CompatNote]
    has_app_in_scope: bool
    backend_pid: int


SCOPES: list[dict[str, Any]] = []


class NotesController(ControllerBase):
    url = "/"
    view_path = "/app/notes/page.tsx"

    async def render(
        self, request: Request, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)
    ) -> NotesRender:
        notes = (await session.exec(select(CompatNote).order_by(CompatNote.id))).all()  # type: ignore[arg-type]
        pid = (await session.exec(text("SELECT pg_backend_pid()"))).one()[0]  # type: ignore[call-overload]
        return NotesRender(notes=list(notes), has_app_in_scope="app" in request.scope, backend_pid=pid)

    @sideeffect
    async def add(self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)) -> None:
        session.add(CompatNote(text="committed"))
        await session.commit()
        session.add(CompatNote(text="left uncommitted"))
        await session.flush()


@pytest.fixture
async def notes_app(make_config: Any, tmp_path: Path) -> tuple[AppController, CompatConfig]:
    config = CompatConfig(SQLALCHEMY_DATABASE_URI=make_config().database_url)
    async with engine_for(config).begin() as connection:
        await connection.run_sync(lambda sync: CompatNote.__table__.drop(sync, checkfirst=True))  # type: ignore[attr-defined]
        await connection.run_sync(lambda sync: CompatNote.__table__.create(sync))  # type: ignore[attr-defined]
    write_stub_views(tmp_path, "compat-views", "notes")
    app = AppController(view_root=tmp_path, config=config)
    app.register(NotesController())
    return app, config


def _client(app: AppController) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://testserver")


@pytest.fixture
async def client(notes_app: tuple[AppController, CompatConfig]) -> Any:
    async with _client(notes_app[0]) as http:
        yield http


def _rerender_with_app_in_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a future Mountaineer might do: build the re-render's request with `app` in its scope."""
    import mountaineer.actions.sideeffect_dec as sideeffect_module
    from starlette.requests import Request as StarletteRequest

    class RequestWithApp(StarletteRequest):
        def __init__(self, scope: dict[str, Any], *args: Any, **kwargs: Any) -> None:
            super().__init__({**scope, "app": "a future Mountaineer puts the app here"}, *args, **kwargs)

    monkeypatch.setattr(sideeffect_module, "Request", RequestWithApp)


async def test_canary_mountaineer_rerenders_on_a_request_without_app_in_its_scope(client: httpx.AsyncClient) -> None:
    """Upstream: `get_render_parameters` in mountaineer/actions/sideeffect_dec.py building the re-render's
    Request from a plain dict (no `app`). Ours: `mountaineer_db.requests.rerender` recognises the re-render
    that way and hands it the action's session (one connection per request); if this changes, the
    re-render falls back to a session of its own (see the next test)."""
    response = await client.post("/internal/api/notes_controller/add")
    assert response.status_code == 200, response.text
    assert response.json()["sideeffect"]["has_app_in_scope"] is False, (
        "Mountaineer's re-render request now carries `app` in its scope: the re-render no longer shares "
        "the action's session (still correct, one more connection per @sideeffect request)"
    )


async def test_if_mountaineer_changes_its_rerender_the_fallback_is_a_correct_second_session(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulates the upstream change above: the re-render gets its own session and connection, and
    shows committed data only, never the action's uncommitted row."""
    _rerender_with_app_in_scope(monkeypatch)
    response = await client.post("/internal/api/notes_controller/add")
    assert response.status_code == 200, response.text
    rendered = response.json()["sideeffect"]
    assert rendered["has_app_in_scope"] is True, "the simulation did not take effect"
    assert [note["text"] for note in rendered["notes"]] == ["committed"]


async def test_canary_asyncpg_derives_the_scram_key_through_its_protocol_modules_hashlib(make_config: Any) -> None:
    """Upstream: asyncpg 0.32's `SCRAMAuthentication._generate_salted_password` (asyncpg/protocol/scram.pyx,
    compiled into `asyncpg.protocol.protocol`) calling `hashlib.pbkdf2_hmac` through that module's global
    `hashlib`. Ours: the SCRAM cache (`mountaineer_db.engines.scram`) replaces that one global. If asyncpg derives the
    key another way, connections still work but pay ~1 ms of CPU each again: this fails to say so."""
    import hashlib

    from asyncpg.protocol import protocol

    from mountaineer_db.engines.scram import _HashlibForAsyncpg, cache_info, clear_scram_cache

    found = getattr(protocol, "hashlib", None)
    assert found is hashlib or isinstance(found, _HashlibForAsyncpg), (
        "asyncpg.protocol.protocol has no module global `hashlib` any more; the SCRAM cache is bypassed"
    )
    clear_scram_cache()
    config = make_config()  # the suite's server authenticates TCP connections with scram-sha-256
    for _ in range(2):
        async with database_session(config) as session:
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
    assert cache_info().misses == 1, "asyncpg no longer derives the SCRAM key through `protocol.hashlib`"
    assert cache_info().hits == 1, "the second connection derived the SCRAM key again"


async def test_canary_sqlalchemy_queue_pool_builds_its_queue_from_queue_class(make_config: Any) -> None:
    """Upstream: `QueuePool.__init__` building `self._pool = self._queue_class(pool_size, use_lifo=...)` and
    checking out through `_pool.get(wait, timeout)` (sqlalchemy/pool/impl.py, 2.0 and 2.1). Ours: FIXED_PROCESS's
    first-come-first-served waiters (`mountaineer_db.engines.fair_pool`); without it waiters can be overtaken again."""
    from mountaineer_db.engines.fair_pool import FairQueue

    config = make_config(DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_POOL_SIZE=2, DATABASE_MAX_OVERFLOW=0)
    pool = engine_for(config).pool
    queue = getattr(pool, "_pool", None)
    assert isinstance(queue, FairQueue), "SQLAlchemy's QueuePool no longer builds its queue from `_queue_class`"
    for _ in range(2):
        async with database_session(config) as session:
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
    assert queue.qsize() == 1, "connections no longer return to the pool through `_queue_class`'s put()"


async def test_canary_sqlalchemy_queue_pool_returns_a_record_through_do_return_conn(make_config: Any) -> None:
    """Upstream: `QueuePool._do_return_conn(record)` puts a record back in the queue or, when the queue
    raises `Full`, closes it and releases its overflow slot (sqlalchemy/pool/impl.py, 2.0 and 2.1). Ours: a
    connection handed to a pool waiter cancelled before it ran goes back through it (`fair_pool`); without
    it, that connection is never given back."""
    from mountaineer_db.engines.fair_pool import FairQueue

    config = make_config(DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_POOL_SIZE=1, DATABASE_MAX_OVERFLOW=1)
    pool = engine_for(config).pool
    queue = getattr(pool, "_pool", None)
    assert isinstance(queue, FairQueue)
    assert queue.return_unused == pool._do_return_conn, "QueuePool no longer has `_do_return_conn`"  # type: ignore[attr-defined]
    engine = engine_for(config)
    first, second = await engine.connect().start(), await engine.connect().start()
    await first.exec_driver_sql("SELECT 1")
    await second.exec_driver_sql("SELECT 1")
    await first.close()
    record = pool._pool.get_nowait()  # type: ignore[attr-defined]
    assert (pool.checkedout(), pool.overflow()) == (2, 1)
    await second.close()  # into the queue, which is now full
    await greenlet_spawn(pool._do_return_conn, record)  # type: ignore[attr-defined]
    assert (pool.checkedout(), pool.overflow(), pool.checkedin()) == (0, 0, 1), "the surplus record was not closed"
    assert record.dbapi_connection is None, "`_do_return_conn` no longer closes a record the full queue refused"


async def test_if_mountaineer_changes_its_rerender_the_kit_still_reaches_it(
    notes_app: tuple[AppController, CompatConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test kit hands its session to the re-render through mountaineer_di's callable-level override
    as well, so its tests keep seeing their own (never committed) data even if the re-render is
    not recognised as one."""
    from mountaineer_db.testing import override_app_session, rollback_session

    app, config = notes_app
    _rerender_with_app_in_scope(monkeypatch)
    async with rollback_session(config) as session, _client(app) as http:
        session.add(CompatNote(text="seeded by the test"))
        await session.commit()  # inside the test's transaction only
        with override_app_session(app, session):
            response = await http.post("/internal/api/notes_controller/add")
    assert response.status_code == 200, response.text
    texts = [note["text"] for note in response.json()["sideeffect"]["notes"]]
    assert texts == ["seeded by the test", "committed"]


async def test_canary_starlette_exposes_the_apps_exception_handlers_in_the_request_scope() -> None:
    """Upstream: `ExceptionMiddleware.__call__` (starlette/middleware/exceptions.py) putting
    `(exception_handlers, status_handlers)` in `scope["starlette.exception_handlers"]`, read when the
    route's exception is handled (starlette/_exception_handler.py). Ours: the "not set up yet" page is
    installed there when a request first meets a missing table (`setup_errors.install_setup_page`);
    without it, that error is FastAPI's generic JSON 500."""
    from fastapi.responses import PlainTextResponse

    class Late(Exception):
        pass

    app = FastAPI()

    @app.get("/")
    async def route(request: Request) -> None:
        handlers = request.scope.get("starlette.exception_handlers")
        assert isinstance(handlers, tuple) and isinstance(handlers[0], dict), "the scope no longer holds the handlers"
        handlers[0].setdefault(Late, lambda request, error: PlainTextResponse("handled late", 500))
        raise Late()

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.get("/")
    assert (response.status_code, response.text) == (500, "handled late")


def test_canary_mountaineer_routes_name_their_controller(tmp_path: Path) -> None:
    """Upstream: `AppController.register` (mountaineer/app.py) routing a page to
    `functools.wraps(controller.render)(partial(...))` and an action to the controller's bound method.
    Ours: `origins.origin_label` names a request's work `Controller.action` from its route endpoint."""
    from mountaineer.config import unregister_config

    from mountaineer_db.engines.origins import origin_label
    from tests.observed_app import NotesController, ObservedConfig, build_app

    unregister_config()
    app = build_app(tmp_path / "views", ObservedConfig(POSTGRES_HOST="h", POSTGRES_DB="d"))
    (notes,) = app.graph.get_definitions_for_cls(NotesController)
    assert notes.route is not None
    assert origin_label(notes.route.view_route) == "NotesController.render"
    assert [origin_label(route.endpoint) for route in notes.route.router.routes] == ["NotesController.add_note"]


async def test_canary_alembic_runs_autocommit_blocks_on_its_connection_and_stamps_ids_as_literals(
    make_config: Any, tmp_path: Path
) -> None:
    """Upstream: `MigrationContext.autocommit_block()` switches the migration connection itself to
    `isolation_level="AUTOCOMMIT"` (`Connection.execution_options`, in place), and the version
    stamps are written with the revision id as a literal (`literal_column("'%s'" % version)` in
    `alembic/runtime/migration.py`). Ours: `OutsideTransactions` sees the statements run outside a
    transaction on that connection, and recognises a committed stamp by that literal to tell an
    applied revision's statements from those a failure left behind."""
    versions = tmp_path / "versions"
    versions.mkdir()
    (versions / "canary.py").write_text('revision = "abc123def456"\ndown_revision = None\n')
    script = ScriptDirectory(str(tmp_path), version_locations=[str(versions)])
    watch = OutsideTransactions(["abc123def456"])
    engine = migration_engine(make_config())

    def run(connection: Connection) -> None:
        context = MigrationContext.configure(connection, opts={"version_table": "canary_version"})
        with watch.watch(connection), context.begin_transaction():
            with context.autocommit_block():
                context.execute("SELECT 1")
            context.stamp(script, "abc123def456")

    try:
        async with engine.connect() as connection:
            await connection.run_sync(run)
            await connection.execute(text("DROP TABLE canary_version"))
            await connection.commit()
    finally:
        await engine.dispose()
    assert [(statement.summary, statement.done) for statement in watch.statements] == [("SELECT", True)], (
        "Alembic's autocommit_block() no longer runs on the migration connection switched to AUTOCOMMIT"
    )
    assert watch.left_behind() == [], "Alembic no longer writes the version stamp with the revision id as a literal"
async def test_canary_asyncpg_refuses_an_argument_it_cannot_encode_as_its_dataerror_with_the_cause(
    make_config: Any,
) -> None:
    """Upstream: asyncpg's `_encode_bind_msg` (asyncpg/protocol/prepared_stmt.pyx) raising
    `asyncpg.DataError` (SQLSTATE 22000) as `invalid input for query argument $N: <value> (<reason>)`
    with the Python error chained. Ours: such an argument is a 422 naming the kind of problem
    (`mountaineer_db.engines.data_errors`), and our log lines name the argument and the reason, never the
    value. If the message or the chaining change, the 422 stays (SQLSTATE class 22) but loses its
    kind ("A value is not valid for the database (SQLSTATE 22000).")."""
    from sqlalchemy.exc import DBAPIError

    from mountaineer_db.engines.data_errors import describe_error, driver_error_of, invalid_input_error_for

    with pytest.raises(DBAPIError) as caught:
        async with engine_for(make_config()).connect() as connection:
            await connection.execute(text("SELECT CAST(:v AS integer)").bindparams(v=10**20))
    driver = driver_error_of(caught.value)
    assert isinstance(driver, asyncpg.DataError) and driver.sqlstate == "22000", type(driver)
    assert str(driver).startswith(f"invalid input for query argument $1: {10**20} ("), str(driver)
    assert isinstance(driver.__cause__, OverflowError), repr(driver.__cause__)
    invalid = invalid_input_error_for(caught.value)
    assert invalid is not None and invalid.kind == "out_of_range"
    assert "invalid input for query argument $1: value out of int64 range" in describe_error(caught.value)


def test_canary_sqlalchemy_answers_a_many_to_one_lazy_load_through_session_identity_lookup() -> None:
    """Upstream: `LazyLoader._load_for_state` looks a many-to-one up with
    `session._identity_lookup(mapper, identity, passive=..., lazy_loaded_from=state)` before any query.
    Ours: `lazy_loads.LazyLoadCheckedSession` overrides it so that DATABASE_LAZY_LOADS=raise fails, and
    `warn` logs, a lazy load the identity map answers (no statement, so `do_orm_execute` never sees it)."""
    from sqlalchemy.orm import PassiveFlag, make_transient_to_detached

    from mountaineer_db.requests.lazy_loads import LazyLoadCheckedSession
    from tests.test_lazy_loads import LlOwner, LlTodo

    calls: list[dict[str, Any]] = []

    class Recording(LazyLoadCheckedSession):
        def _identity_lookup(self, *args: Any, **kwargs: Any) -> Any:
            calls.append({"args": args, **kwargs})
            return super()._identity_lookup(*args, **kwargs)

    owner, todo = LlOwner(id=1, name="ada"), LlTodo(id=1, description="write", owner_id=1)
    for instance in (owner, todo):
        make_transient_to_detached(instance)
    with Recording() as session:  # no bind: nothing may reach a database
        session.add_all([owner, todo])
        assert todo.owner is owner
    lookups = [call for call in calls if call.get("lazy_loaded_from") is not None]
    assert len(lookups) == 1, "SQLAlchemy no longer asks Session._identity_lookup for a many-to-one lazy load"
    assert lookups[0]["lazy_loaded_from"].obj() is todo
    assert lookups[0]["passive"] & PassiveFlag.RELATED_OBJECT_OK, "the passive flags moved"


def test_canary_sqlalchemy_raises_missing_greenlet_from_its_await_helper_outside_a_greenlet() -> None:
    """Upstream: `sqlalchemy.util.concurrency.await_` (2.1; `await_only` in 2.0) raises `MissingGreenlet`
    outside a greenlet without running the awaitable. Ours: `lazy_loads._missing_greenlet` takes the
    `__cause__` of a `LazyLoadError` from it (a fallback builds one when the helper is gone)."""
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.util import concurrency

    from mountaineer_db.requests.lazy_loads import _missing_greenlet

    assert getattr(concurrency, "await_", None) or getattr(concurrency, "await_only", None), "the helper moved"
    cause = _missing_greenlet()
    assert isinstance(cause, sa_exc.MissingGreenlet)
    assert cause.__traceback__ is not None, "raised by SQLAlchemy's helper, not built by the fallback"


def test_canary_sqlalchemy_session_runs_every_statement_through_execute_scalar_or_scalars() -> None:
    """Upstream: SQLAlchemy's `Session` runs statements only from `execute`, `scalar` and `scalars` (each
    calls `_execute_internal`; `get`, `refresh`, lazy loads and `Query` call `execute`), and SQLModel's
    `exec` calls SQLAlchemy's `execute`. Ours: `RequestSyncSession` overrides those four to replay a
    stale first statement; a fifth way in would run its statements without the replay."""
    from sqlalchemy.orm import Session as SASession
    from sqlmodel import Session as SQLModelSession

    callers = {
        name
        for name, function in inspect.getmembers(SASession, inspect.isfunction)
        if "._execute_internal(" in inspect.getsource(function)
    }
    assert callers == {"execute", "scalar", "scalars"}, f"SQLAlchemy's Session runs statements from {callers}"
    assert "super().execute(" in inspect.getsource(SQLModelSession.exec), "SQLModel's exec no longer calls execute"


def test_canary_sqlalchemy_lazy_loads_run_session_execute_which_takes_an_add_event_handler() -> None:
    """Upstream: a lazy load that needs a query calls `Session.execute(...)` (`LazyLoader._emit_lazyload`,
    `loading.load_on_pk_identity`), whose private `_add_event` argument adds a `do_orm_execute` handler
    for that statement alone, run before any I/O with the `ORMExecuteState` (2.0 and 2.1). Ours:
    `LazyLoadCheckedSession.execute` passes the lazy-load check that way, only for statements from
    async code; if either moves, such a lazy load is SQLAlchemy's bare `MissingGreenlet` again."""
    from sqlalchemy.orm import ORMExecuteState, make_transient_to_detached

    from mountaineer_db.requests.lazy_loads import LazyLoadCheckedSession
    from tests.test_lazy_loads import LlOwner

    seen: list[ORMExecuteState] = []

    class Stop(Exception):
        pass

    def handler(state: ORMExecuteState) -> None:
        seen.append(state)
        raise Stop  # before any I/O: the session has no bind

    class Recording(LazyLoadCheckedSession):
        def execute(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:
            return super().execute(statement, params, **{**kwargs, "_add_event": handler})

    owner = LlOwner(id=1, name="ada")
    make_transient_to_detached(owner)
    with Recording() as session:  # no bind: nothing may reach a database
        session.add(owner)
        with pytest.raises(Stop):
            _ = owner.todos  # a one-to-many: needs a query
    assert len(seen) == 1, "the lazy load did not run Session.execute with the handler"
    assert seen[0].lazy_loaded_from is not None and seen[0].lazy_loaded_from.obj() is owner
