"""Type-checked usage of the public API (mypy --strict runs over this file; pytest imports it too)."""

from collections.abc import Sequence
from typing import Annotated
from uuid import UUID

from mountaineer import ConfigBase, ControllerBase, Depends, RenderBase, sideeffect
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlmodel import Field, SQLModel, select

from mountaineer_db import (
    ALL_TENANTS,
    AsyncSession,
    DatabaseCheck,
    DatabaseConfig,
    DatabaseDependencies,
    DatabaseNotSetUpError,
    DatabaseStatus,
    InvalidInputError,
    LazyLoadError,
    LazyLoads,
    MountaineerDBError,
    PoolType,
    ReadOnlySessionError,
    ReadRouting,
    ReadSessionDep,
    ResourceAlreadyExistsError,
    ResourceConflictError,
    ResourceNotFoundError,
    SchemaChangedError,
    SessionDep,
    TenantRequiredError,
    check_database,
    database_session,
    dispose_engines,
    get_or_404,
    map_integrity_errors,
    on_commit,
    run_in_transaction,
)
from mountaineer_db.engines.loading_metrics import LoadingMetrics, loading_metrics
from mountaineer_db.engines.origins import work_origin
from mountaineer_db.engines.stale_statements import install_stale_statement_recovery
from mountaineer_db.observability.metrics import EngineMetrics, database_metrics
from mountaineer_db.observability.prometheus import DatabaseCollector, register_collector
from mountaineer_db.observability.tracing import instrument_opentelemetry, uninstrument_opentelemetry
from mountaineer_db.replicas.replica_set import replica_status
from mountaineer_db.testing import (
    QueryLog,
    StatementsByOrigin,
    assert_max_queries,
    assert_no_n_plus_one,
    assert_num_queries,
    captured_on_commit,
    counted_queries,
    plain_role,
    use_tenant,
    wait_for_replicas,
)


class TypedConfig(DatabaseConfig, ConfigBase):
    PACKAGE: str | None = None
    POSTGRES_DB: str | None = "typed"


class TypedTodo(SQLModel, table=True):
    __tablename__ = "typed_todo"

    id: int | None = Field(default=None, primary_key=True)
    description: str


class TodoList(RenderBase):
    descriptions: list[str]


class NewTodo(BaseModel):
    description: str


class TypedController(ControllerBase):  # type: ignore[type-arg]  # Mountaineer types render() by ParamSpec
    url = "/typed"
    view_path = "/app/typed/page.tsx"

    async def render(self, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)) -> TodoList:
        todos: Sequence[TypedTodo] = (await session.exec(select(TypedTodo))).all()
        return TodoList(descriptions=[todo.description for todo in todos])

    @sideeffect
    async def add(self, payload: NewTodo, session: SessionDep) -> None:
        session.add(TypedTodo(description=payload.description))
        await session.commit()


async def typed_job(config: DatabaseConfig) -> int:
    engine: AsyncEngine = await DatabaseDependencies.get_db(config=config)
    assert config.DATABASE_POOL_TYPE in (PoolType.NULL, PoolType.FIXED_PROCESS)
    try:
        async with database_session(config) as session:
            count = len((await session.exec(select(TypedTodo))).all())
    except MountaineerDBError:
        count = -1
    finally:
        await dispose_engines()
    return count if engine is not None else 0


async def notify(todo_id: int) -> None: ...


class TypedDetailController(ControllerBase):  # type: ignore[type-arg]
    url = "/typed/{todo_id}"
    view_path = "/app/typed_detail/page.tsx"

    async def render(self, todo_id: int, session: SessionDep) -> TodoList:
        todo: TypedTodo = await get_or_404(session, TypedTodo, todo_id, with_for_update=True)
        return TodoList(descriptions=[todo.description])

    @sideeffect
    @map_integrity_errors({"uq_typed_todo_description": "Already on the list."})
    async def add(self, payload: NewTodo, session: SessionDep) -> None:
        todo = TypedTodo(description=payload.description)
        session.add(todo)
        on_commit(session, lambda: None)
        on_commit(session, lambda: notify(1), robust=True)
        with map_integrity_errors():
            await session.commit()


async def typed_transactions(config: DatabaseConfig) -> int:
    async def count_todos(session: AsyncSession) -> int:
        return len((await session.exec(select(TypedTodo))).all())

    count: int = await run_in_transaction(count_todos, retries=5, isolation_level="SERIALIZABLE", config=config)
    install_stale_statement_recovery(await DatabaseDependencies.get_db(config=config))
    try:
        with captured_on_commit(execute=True) as callbacks:
            async with database_session(config) as session:
                on_commit(session, lambda: notify(count))
                await session.commit()
    except (ResourceNotFoundError, ResourceConflictError, ResourceAlreadyExistsError, SchemaChangedError) as error:
        status: int = error.status_code
        return -status
    return count + len(callbacks)


async def typed_operations(config: DatabaseConfig) -> dict[str, object]:
    tagged: bool = config.DATABASE_TAG_REQUESTS
    threshold: float | None = config.DATABASE_SLOW_QUERY_THRESHOLD
    result: DatabaseCheck = await check_database(config)
    status: DatabaseStatus = result.status
    ready: bool = result.ok and result.reachable and status in (DatabaseStatus.OK, DatabaseStatus.DATABASE_AHEAD)
    revisions: tuple[str, ...] | None = result.database_revisions
    round_trip: float | None = result.round_trip_ms
    snapshots: list[EngineMetrics] = database_metrics()
    connects: list[float] = [snapshot.connects_per_second for snapshot in snapshots]
    collector: DatabaseCollector = register_collector()
    instrument_opentelemetry()
    uninstrument_opentelemetry()
    with work_origin("typed-job"), assert_max_queries(2) as at_most, assert_num_queries(1) as exactly:
        try:
            async with database_session(config) as session:
                await session.exec(select(TypedTodo))
        except DatabaseNotSetUpError as error:
            return {"error": error.message}
        except InvalidInputError as error:
            kind: str = error.kind
            sqlstate: str | None = error.sqlstate
            return {"status": error.status_code, "kind": kind, "sqlstate": sqlstate, "detail": error.detail}
    with counted_queries(session=None) as log:
        pass
    counted: QueryLog = log
    return {
        "tagged": tagged,
        "threshold": threshold,
        "ready": ready,
        "revisions": revisions,
        "round_trip": round_trip,
        "connects": connects,
        "collector": collector,
        "queries": at_most.statements + exactly.statements + counted.statements,
        **result.as_dict(),
        "details": result.as_dict(details=True),
        "public_error": result.public_error,
    }


class TypedReplicaController(ControllerBase):  # type: ignore[type-arg]
    url = "/typed/replica"
    view_path = "/app/typed_replica/page.tsx"

    async def render(self, session: ReadSessionDep) -> TodoList:
        todos: Sequence[TypedTodo] = (await session.exec(select(TypedTodo))).all()
        return TodoList(descriptions=[todo.description for todo in todos])

    @sideeffect
    async def add(
        self,
        payload: NewTodo,
        session: SessionDep,
        reader: AsyncSession = Depends(DatabaseDependencies.get_db_read_session),
    ) -> None:
        session.add(TypedTodo(description=payload.description))
        await session.commit()
        try:
            reader.add(TypedTodo(description=payload.description))
            await reader.flush()
        except ReadOnlySessionError as error:
            message: str = str(error)
            assert message


async def typed_replicas(config: DatabaseConfig) -> list[str]:
    renders: bool = config.DATABASE_READ_ROUTING is ReadRouting.RENDERS
    await wait_for_replicas(config, timeout=5.0)
    states: list[str] = [str(item["state"]) for item in replica_status(config)]
    return states if renders else [str(url.host) for url in config.DATABASE_REPLICA_URLS]


async def typed_current_tenant() -> UUID | None:
    return None


TypedTenantSession = Annotated[AsyncSession, Depends(DatabaseDependencies.for_tenant(typed_current_tenant))]
TypedTenantReadSession = Annotated[
    AsyncSession, Depends(DatabaseDependencies.for_tenant(typed_current_tenant, read=True))
]


class TypedTenantController(ControllerBase):  # type: ignore[type-arg]
    url = "/tenant"
    view_path = "/app/tenant/page.tsx"

    async def render(self, session: TypedTenantSession, reader: TypedTenantReadSession) -> TodoList:
        todos = (await session.exec(select(TypedTodo))).all()
        return TodoList(descriptions=[todo.description for todo in todos])


async def typed_tenants(config: DatabaseConfig, tenant: UUID) -> int:
    async with database_session(config, tenant=tenant) as session:
        count = len((await session.exec(select(TypedTodo))).all())
    async with database_session(config, tenant=ALL_TENANTS) as session:
        count += len((await session.exec(select(TypedTodo))).all())

    async def work(session: AsyncSession) -> int:
        return len((await session.exec(select(TypedTodo))).all())

    count += await run_in_transaction(work, tenant="acme", config=config)
    with plain_role(config) as app_config:
        async with database_session(app_config) as session:
            await use_tenant(session, 42)
    try:
        raise TenantRequiredError("no tenant")
    except TenantRequiredError as error:
        status: int = error.status_code
    return count + status


async def typed_loading(config: DatabaseConfig) -> dict[str, object]:
    """Lazy loads and N+1 queries (docs/loading.md)."""
    mode: LazyLoads = config.lazy_loads
    setting: LazyLoads | None = config.DATABASE_LAZY_LOADS
    n_plus_one: int | None = config.DATABASE_N_PLUS_ONE_THRESHOLD
    with assert_no_n_plus_one() as seen, assert_no_n_plus_one(threshold=3, session=None):
        try:
            async with database_session(config) as session:
                await session.exec(select(TypedTodo))
        except LazyLoadError as error:
            names: tuple[str, str, str | None] = (error.model, error.attribute, error.origin)
            return {"names": names}
    by_origin: StatementsByOrigin = seen
    figures: LoadingMetrics = loading_metrics()
    lazy: dict[tuple[str, str, str], int] = figures.lazy_loads
    return {"mode": mode, "setting": setting, "threshold": n_plus_one, "counts": by_origin.counts, "lazy": lazy}
