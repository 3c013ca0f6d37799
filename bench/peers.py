"""What a user would pick instead of mountaineer_db, set up as each one's documentation shows.

Each peer is one request: `SELECT 1` in a transaction, committed, on a session the peer's
own way hands out, at the same URL as ours (with the password; no sslmode, so asyncpg's
default applies: it tries SSL first):

- `sqlmodel-docs`: `create_async_engine(url)` and `async with AsyncSession(engine) as session`
  per request, as the SQLModel and FastAPI docs show (SQLModel's session class). Pool: NullPool
  for the connect-per-request setup (SQLAlchemy's advice behind PgBouncer), else a queue pool of
  the same size as ours (POOL_SIZE, no overflow). asyncpg's statement cache stays on (the default).
- `sqlmodel-docs-dependency`: the same session handed out as the SQLModel docs' FastAPI
  tutorial does, by a yield dependency (`async def get_session(): async with AsyncSession(engine)
  as session: yield session`), entered the way FastAPI enters one (`asynccontextmanager`), as
  the scripts call `get_db_session`: the like-for-like line for ours, which pays that wrapper too.
- `mountaineer.database`: the old Mountaineer module (removed in Dec 2024), as it was:
  `create_async_engine(str(url), poolclass=NullPool | AsyncAdaptedQueuePool)` with nothing else
  set, and a session from `async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)`
  per request.
- `advanced-alchemy`: `SQLAlchemyAsyncConfig(connection_string=url, engine_config=...)` and a
  session from its `create_session_maker()` per request, committed by the handler and closed as
  its request handler does (rollback when not committed, then close). Pool as for sqlmodel-docs.

A request that raises is counted, not timed: behind PgBouncer in transaction mode, asyncpg's
named prepared statements fail ("prepared statement ... does not exist"), and the scripts print
the error rate instead of a time for such a peer.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool
from sqlmodel.ext.asyncio.session import AsyncSession

SELECT_1 = text("SELECT 1")
PEERS = ("sqlmodel-docs", "sqlmodel-docs-dependency", "mountaineer.database", "advanced-alchemy")


@dataclass
class Peer:
    """One peer's request for one setup, and what it failed with."""

    name: str
    request: Callable[[], Awaitable[None]]
    close: Callable[[], Awaitable[None]]
    attempts: int = 0
    errors: int = 0
    samples: list[str] = field(default_factory=list)

    async def counted(self) -> None:
        """The request, with failures counted (and the first few kept) instead of raised."""
        self.attempts += 1
        try:
            await self.request()
        except Exception as error:  # noqa: BLE001 - a failing peer is reported as an error rate
            self.errors += 1
            if len(self.samples) < 3:
                self.samples.append(f"{type(error).__name__}: {str(error).splitlines()[0][:160]}")

    @property
    def error_rate(self) -> float:
        return self.errors / self.attempts if self.attempts else 0.0


def peer_pool_args(connect_per_request: bool, pool_size: int) -> dict[str, Any]:
    """The pool a peer's `create_async_engine` gets: NullPool per request, else `pool_size`, no overflow."""
    if connect_per_request:
        return {"poolclass": NullPool}
    return {"pool_size": pool_size, "max_overflow": 0}


def build_peer(name: str, url: URL, *, connect_per_request: bool, pool_size: int) -> Peer:
    """The peer `name` at `url` (the same URL ours uses, password included)."""
    dsn = url.render_as_string(hide_password=False)
    if name == "sqlmodel-docs":
        engine = create_async_engine(dsn, **peer_pool_args(connect_per_request, pool_size))

        async def docs() -> None:
            async with AsyncSession(engine) as session:
                await session.exec(SELECT_1)  # type: ignore[call-overload]
                await session.commit()

        return Peer(name, docs, engine.dispose)
    if name == "sqlmodel-docs-dependency":
        engine = create_async_engine(dsn, **peer_pool_args(connect_per_request, pool_size))

        async def get_session() -> AsyncIterator[AsyncSession]:
            async with AsyncSession(engine) as session:
                yield session

        dependency = asynccontextmanager(get_session)  # as FastAPI enters a yield dependency

        async def docs_dependency() -> None:
            async with dependency() as session:
                await session.exec(SELECT_1)  # type: ignore[call-overload]
                await session.commit()

        return Peer(name, docs_dependency, engine.dispose)
    if name == "mountaineer.database":
        old = create_async_engine(dsn, poolclass=NullPool if connect_per_request else AsyncAdaptedQueuePool)

        async def mountaineer_database() -> None:
            session_maker = async_sessionmaker(old, class_=AsyncSession, expire_on_commit=False)
            async with session_maker() as session:
                await session.exec(SELECT_1)  # type: ignore[call-overload]
                await session.commit()

        return Peer(name, mountaineer_database, old.dispose)
    if name == "advanced-alchemy":
        from advanced_alchemy.config import EngineConfig, SQLAlchemyAsyncConfig

        config = SQLAlchemyAsyncConfig(
            connection_string=dsn, engine_config=EngineConfig(**peer_pool_args(connect_per_request, pool_size))
        )
        make_session = config.create_session_maker()

        async def advanced_alchemy() -> None:
            session = make_session()
            try:
                await session.execute(SELECT_1)
                await session.commit()
            finally:
                await session.rollback()
                await session.close()

        async def close() -> None:
            engine: AsyncEngine | None = getattr(make_session, "kw", {}).get("bind")
            if engine is not None:
                await engine.dispose()

        return Peer(name, advanced_alchemy, close)
    raise ValueError(f"unknown peer {name!r}: use one of {', '.join(PEERS)}")
