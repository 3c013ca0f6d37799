"""The two HTTP apps the HTTP benchmark serves with uvicorn (imported by its workers).

- `bench_app:ours`: a Mountaineer app using mountaineer_db as an app author would, configured
  from the environment (SQLALCHEMY_DATABASE_URI, DATABASE_POOL_TYPE, ...):
  `GET /` is a render that reads (`SELECT 1`) and does not commit; it answers with an explicit
  JSON response (a Mountaineer feature), so no frontend build is needed and no SSR time is
  mixed into the database figures. `POST /internal/api/bench_controller/ping` is a
  `@passthrough` action that runs the same query and commits.
  `GET /rawpool` and `POST /internal/api/raw_pool_controller/ping` are the same render and
  action on a raw asyncpg pool (RAW_DSN, RAW_POOL_SIZE), without mountaineer_db: what
  Mountaineer itself costs. `GET /peer/sqlmodel-docs` (`.../peer_docs_controller/ping`) and
  `GET /peer/mountaineer-database` (`.../peer_old_controller/ping`): the same on the session
  dependency a user would write instead (bench/peers.py), same URL and pool settings.
  `GET /layer/raw-dependency` and `GET /layer/plain-session`: the render with the raw pool's
  connection from a yield dependency, and with a plain SQLModel session on our engine from a
  yield dependency (profile_http.py --layers: where the gap to the raw pool comes from).
- `bench_app:raw`: a bare FastAPI app with one endpoint per route above doing the same query
  in a transaction on an `asyncpg.create_pool` (RAW_POOL_SIZE, default 10) opened at startup,
  with `ssl=False, statement_cache_size=0` (it sits behind PgBouncer in transaction mode).

Both answer `{"value": 1}`.
"""

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

SELECT_1 = text("SELECT 1")

# bench_roundtrips.py sets this to a list to learn when each handler started and ended.
HANDLER_TIMES: list[tuple[float, float]] | None = None


def _record(started: float) -> None:
    if HANDLER_TIMES is not None:
        HANDLER_TIMES.append((started, time.perf_counter()))


def _build_ours() -> Any:
    from mountaineer import AppController, ConfigBase, ControllerBase, Depends, Metadata, RenderBase, passthrough

    from mountaineer_db import AsyncSession, DatabaseConfig, DatabaseDependencies

    class BenchConfig(DatabaseConfig, ConfigBase):
        """Settings come from the environment the benchmark starts uvicorn with."""

    class HomeRender(RenderBase):
        pass

    class PingResponse(BaseModel):
        value: int

    class BenchController(ControllerBase):
        url = "/"
        view_path = "/app/home/page.tsx"

        async def render(self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)) -> HomeRender:
            started = time.perf_counter()
            value = (await session.exec(SELECT_1)).scalar_one()
            _record(started)
            return HomeRender(metadata=Metadata(explicit_response=JSONResponse({"value": value})))

        @passthrough
        async def ping(self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)) -> PingResponse:
            started = time.perf_counter()
            value = (await session.exec(SELECT_1)).scalar_one()
            await session.commit()
            _record(started)
            return PingResponse(value=value)

    class RawPoolController(ControllerBase):
        """The same render and action on a raw asyncpg pool: Mountaineer's own cost, without us."""

        url = "/rawpool"
        view_path = "/app/rawpool/page.tsx"

        async def render(self) -> HomeRender:
            value = await _raw_select_1()
            return HomeRender(metadata=Metadata(explicit_response=JSONResponse({"value": value})))

        @passthrough
        async def ping(self) -> PingResponse:
            return PingResponse(value=await _raw_select_1())

    class RawDependencyController(ControllerBase):
        """Layer 1: the raw pool's connection handed out by a yield dependency (FastAPI's cost of one)."""

        url = "/layer/raw-dependency"
        view_path = "/app/layerdep/page.tsx"

        async def render(self, connection: Any = Depends(_raw_connection)) -> HomeRender:
            value = await connection.fetchval("SELECT 1")
            return HomeRender(metadata=Metadata(explicit_response=JSONResponse({"value": value})))

    class PlainSessionController(ControllerBase):
        """Layer 2: a plain SQLModel session on our engine, from a yield dependency (SQLAlchemy's cost)."""

        url = "/layer/plain-session"
        view_path = "/app/layerplain/page.tsx"

        async def render(self, session: Any = Depends(_plain_session)) -> HomeRender:
            value = (await session.exec(SELECT_1)).scalar_one()
            return HomeRender(metadata=Metadata(explicit_response=JSONResponse({"value": value})))

    def peer_controller(peer: str, page: str) -> ControllerBase:
        """The same render and action on a peer's session dependency (see `_peer_session`)."""
        session_dependency = _peer_session(peer)

        class PeerController(ControllerBase):
            url = f"/peer/{peer}"
            view_path = f"/app/{page}/page.tsx"

            async def render(self, session: Any = Depends(session_dependency)) -> HomeRender:
                value = (await session.exec(SELECT_1)).scalar_one()
                return HomeRender(metadata=Metadata(explicit_response=JSONResponse({"value": value})))

            @passthrough
            async def ping(self, session: Any = Depends(session_dependency)) -> PingResponse:
                value = (await session.exec(SELECT_1)).scalar_one()
                await session.commit()
                return PingResponse(value=value)

        PeerController.__name__ = PeerController.__qualname__ = PEER_CONTROLLERS[peer]
        return PeerController()

    view_root = Path(tempfile.gettempdir()) / "mountaineer-db-bench-views"
    for page in ("home", "rawpool", "layerdep", "layerplain", *PEER_PAGES.values()):
        (view_root / "app" / page).mkdir(parents=True, exist_ok=True)
        (view_root / "app" / page / "page.tsx").write_text("export default function Page() { return null; }\n")
    (view_root / "package.json").write_text(
        '{"name": "bench-views", "private": true, "dependencies": {"react": "^19.0.0", "react-dom": "^19.0.0"}}\n'
    )
    controller = AppController(view_root=view_root, config=BenchConfig())
    controller.register(BenchController())
    controller.register(RawPoolController())
    controller.register(RawDependencyController())
    controller.register(PlainSessionController())
    for peer, page in PEER_PAGES.items():
        controller.register(peer_controller(peer, page))
    return controller.app


# -- peers over HTTP: the session dependency a user would write instead (see peers.py) --------

PEER_PAGES = {"sqlmodel-docs": "peerdocs", "mountaineer-database": "peerold"}
PEER_CONTROLLERS = {"sqlmodel-docs": "PeerDocsController", "mountaineer-database": "PeerOldController"}
_peer_engines: dict[str, Any] = {}


def _peer_engine(peer: str) -> Any:
    """The peer's engine in this worker, at the URL ours uses, built on first use (as each one does)."""
    engine = _peer_engines.get(peer)
    if engine is None:
        from sqlalchemy.ext.asyncio import create_async_engine
        from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool

        url = os.environ["SQLALCHEMY_DATABASE_URI"]
        fixed = os.environ.get("DATABASE_POOL_TYPE") == "FIXED_PROCESS"
        if peer == "sqlmodel-docs":
            size = int(os.environ.get("DATABASE_POOL_SIZE", "10"))
            pool: dict[str, Any] = {"pool_size": size, "max_overflow": 0} if fixed else {"poolclass": NullPool}
            engine = create_async_engine(url, **pool)
        else:  # the old mountaineer.database: only the pool class was set
            engine = create_async_engine(url, poolclass=AsyncAdaptedQueuePool if fixed else NullPool)
        _peer_engines[peer] = engine
    return engine


def _peer_session(peer: str) -> Any:
    """The yield dependency each peer's docs show: a plain session per request."""
    from sqlalchemy.ext.asyncio import async_sessionmaker
    from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelSession

    if peer == "sqlmodel-docs":

        async def docs_session() -> Any:
            async with SQLModelSession(_peer_engine(peer)) as session:
                yield session

        return docs_session

    async def old_mountaineer_session() -> Any:
        session_maker = async_sessionmaker(_peer_engine(peer), class_=SQLModelSession, expire_on_commit=False)
        async with session_maker() as session:
            yield session

    return old_mountaineer_session


_raw_pool: "asyncpg.Pool[Any] | None" = None
_raw_pool_lock: asyncio.Lock | None = None


async def _open_raw_pool() -> "asyncpg.Pool[Any]":
    """This worker's raw asyncpg pool (RAW_DSN, RAW_POOL_SIZE), opened on first use."""
    global _raw_pool, _raw_pool_lock
    if _raw_pool is None:
        _raw_pool_lock = _raw_pool_lock or asyncio.Lock()
        async with _raw_pool_lock:
            if _raw_pool is None:
                size = int(os.environ.get("RAW_POOL_SIZE", "10"))
                _raw_pool = await asyncpg.create_pool(
                    os.environ["RAW_DSN"], ssl=False, statement_cache_size=0, min_size=size, max_size=size
                )
    return _raw_pool


async def _raw_select_1() -> int:
    """`SELECT 1` in a transaction on this worker's raw asyncpg pool (opened on first use)."""
    pool = _raw_pool or await _open_raw_pool()
    async with pool.acquire() as connection, connection.transaction():
        value: int = await connection.fetchval("SELECT 1")
    return value


async def _close_pools() -> None:
    """Close this process's raw pool and peer engines (profile_http.py runs the app in-process)."""
    global _raw_pool
    if _raw_pool is not None:
        pool, _raw_pool = _raw_pool, None
        await pool.close()
    while _peer_engines:
        await _peer_engines.popitem()[1].dispose()


async def _raw_connection() -> Any:
    """A yield dependency: a connection of the raw pool, in a transaction, for the request."""
    pool = _raw_pool or await _open_raw_pool()
    async with pool.acquire() as connection, connection.transaction():
        yield connection


async def _plain_session() -> Any:
    """A yield dependency: a plain SQLModel session on mountaineer_db's engine (no request semantics)."""
    from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelSession

    from mountaineer_db.engines.engine import engine_for
    from mountaineer_db.settings.appconfig import registered_config

    async with SQLModelSession(engine_for(registered_config()), expire_on_commit=False) as session:
        yield session


def _build_raw() -> FastAPI:
    pool: asyncpg.Pool | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal pool
        size = int(os.environ.get("RAW_POOL_SIZE", "10"))
        pool = await asyncpg.create_pool(
            os.environ["RAW_DSN"], ssl=False, statement_cache_size=0, min_size=size, max_size=size
        )
        yield
        await pool.close()

    app = FastAPI(lifespan=lifespan)

    async def query() -> JSONResponse:
        assert pool is not None
        async with pool.acquire() as connection, connection.transaction():
            value = await connection.fetchval("SELECT 1")
        return JSONResponse({"value": value})

    app.get("/")(query)
    app.post("/internal/api/bench_controller/ping")(query)
    return app


_built: dict[str, Any] = {}


def __getattr__(name: str) -> Any:
    """`bench_app:ours` and `bench_app:raw`, built on first access (once per process)."""
    builders = {"ours": _build_ours, "raw": _build_raw}
    if name not in builders:
        raise AttributeError(name)
    if name not in _built:
        _built[name] = builders[name]()
    return _built[name]
