"""Lazy loads in request sessions explain themselves (DATABASE_LAZY_LOADS), in the user's shape.

A Mountaineer app with SQLModel table models and `Relationship`s: `LlTodo.owner` (many-to-one)
and `LlOwner.todos` (one-to-many), read in `render()` and in `@sideeffect` actions without being
loaded. Pages answer with explicit JSON responses, so GET renders run without a frontend build.
"""

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
from fastapi.responses import JSONResponse
from mountaineer import AppController, ConfigBase, ControllerBase, Metadata, RenderBase, sideeffect
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncAttrs
from sqlalchemy.orm import selectinload
from sqlmodel import Field, Relationship, SQLModel, select

from mountaineer_db import DatabaseConfig, LazyLoadError, LazyLoads, ReadSessionDep, SessionDep
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.engines.loading_metrics import loading_metrics, reset_loading_metrics
from mountaineer_db.observability.prometheus import register_collector
from tests.core_app import write_stub_views

TODOS_ACTION = "/internal/api/todos_controller"
OWNERS_ACTION = "/internal/api/owners_controller"


class LlConfig(DatabaseConfig, ConfigBase):
    """The test app is not pip-installed: it passes view_root instead of PACKAGE."""


class LlOwner(AsyncAttrs, SQLModel, table=True):
    __tablename__ = "lazy_owner"

    id: int | None = Field(default=None, primary_key=True)
    name: str
    todos: list["LlTodo"] = Relationship(back_populates="owner")


class LlTodo(AsyncAttrs, SQLModel, table=True):
    __tablename__ = "lazy_todo"

    id: int | None = Field(default=None, primary_key=True)
    description: str
    owner_id: int | None = Field(default=None, foreign_key="lazy_owner.id")
    owner: LlOwner | None = Relationship(back_populates="todos")


def _json(payload: Any) -> Metadata:
    return Metadata(explicit_response=JSONResponse(payload))


class PageRender(RenderBase):
    pass


class TodosController(ControllerBase):
    """`/todos?how=...`: each todo with its owner's name, the owner read as `how` says."""

    url = "/todos"
    view_path = "/app/todos/page.tsx"

    async def render(self, session: SessionDep, how: str = "selectinload") -> PageRender:
        owners = []  # held: the identity map keeps only what something else references
        if how == "identity-map":  # the owners are in the session already: no query needed for todo.owner
            owners = (await session.exec(select(LlOwner))).all()
        query = select(LlTodo).order_by(LlTodo.id)  # type: ignore[arg-type]
        if how == "selectinload":
            query = query.options(selectinload(LlTodo.owner))  # type: ignore[arg-type]
        todos = (await session.exec(query)).all()
        names = []
        for todo in todos:
            if how == "refresh":
                await session.refresh(todo, ["owner"])
            if how == "awaitable_attrs":
                owner = await todo.awaitable_attrs.owner
            elif how == "run_sync":
                owner = await session.run_sync(lambda _, todo=todo: todo.owner)  # type: ignore[misc]
            else:
                owner = todo.owner
            names.append(owner.name if owner else None)
        del owners
        return PageRender(metadata=_json({"owners": names}))

    @sideeffect
    async def owner_of_first(self, session: SessionDep) -> None:
        todo = (await session.exec(select(LlTodo).order_by(LlTodo.id))).first()  # type: ignore[arg-type]
        assert todo is not None
        _ = todo.owner

    @sideeffect
    async def owner_after_commit(self, session: SessionDep) -> None:
        """The lazy load is the first statement of the request's second transaction."""
        todo = (await session.exec(select(LlTodo).order_by(LlTodo.id))).first()  # type: ignore[arg-type]
        assert todo is not None
        await session.commit()
        _ = todo.owner

    @sideeffect
    async def list_todos(self, session: SessionDep) -> None:
        """Runs the very statements of the re-render that follows it, once each."""
        query = select(LlTodo).order_by(LlTodo.id).options(selectinload(LlTodo.owner))  # type: ignore[arg-type]
        (await session.exec(query)).all()

    @sideeffect
    async def owners_one_by_one(self, session: SessionDep) -> None:
        """An N+1 written by hand: one query per todo for its owner."""
        for todo in (await session.exec(select(LlTodo))).all():
            (await session.exec(select(LlOwner).where(LlOwner.id == todo.owner_id))).one()


class OwnersController(ControllerBase):
    """`/owners`: each owner with the number of their todos (a one-to-many)."""

    url = "/owners"
    view_path = "/app/owners/page.tsx"

    async def render(self, session: SessionDep, how: str = "lazy") -> PageRender:
        query = select(LlOwner).order_by(LlOwner.id)  # type: ignore[arg-type]
        if how == "selectinload":
            query = query.options(selectinload(LlOwner.todos))  # type: ignore[arg-type]
        owners = (await session.exec(query)).all()
        return PageRender(metadata=_json({"todos": [len(owner.todos) for owner in owners]}))

    @sideeffect
    async def count_todos_of_first(self, session: SessionDep) -> None:
        owner = (await session.exec(select(LlOwner).order_by(LlOwner.id))).first()  # type: ignore[arg-type]
        assert owner is not None
        _ = len(owner.todos)


class ReadTodosController(ControllerBase):
    """`/read-todos`: the owners' names through a read session (`get_db_read_session`)."""

    url = "/read-todos"
    view_path = "/app/read_todos/page.tsx"

    async def render(self, session: ReadSessionDep) -> PageRender:
        todos = (await session.exec(select(LlTodo).order_by(LlTodo.id))).all()  # type: ignore[arg-type]
        return PageRender(metadata=_json({"owners": [todo.owner.name if todo.owner else None for todo in todos]}))


async def _make_tables(config: DatabaseConfig) -> None:
    tables = [LlTodo.__table__, LlOwner.__table__]  # type: ignore[attr-defined]
    async with engine_for(config).begin() as connection:
        await connection.run_sync(lambda sync: SQLModel.metadata.drop_all(sync, tables))
        await connection.run_sync(lambda sync: SQLModel.metadata.create_all(sync, list(reversed(tables))))
    async with engine_for(config).begin() as connection:
        await connection.exec_driver_sql("INSERT INTO lazy_owner (name) VALUES ('ada'), ('brian')")
        await connection.exec_driver_sql(
            "INSERT INTO lazy_todo (description, owner_id) VALUES ('write', 1), ('read', 2), ('walk', 1)"
        )


def build_app(config: DatabaseConfig, view_root: Path) -> AppController:
    write_stub_views(view_root, "lazy-loads-views", "todos", "owners", "read_todos")
    app = AppController(view_root=view_root, config=config)
    app.register(TodosController())
    app.register(OwnersController())
    app.register(ReadTodosController())
    return app


@pytest.fixture
def make_app(pg_server: Any, test_database: str, tmp_path: Path) -> Any:
    async def make(**settings: Any) -> httpx.AsyncClient:
        config = LlConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(test_database), **settings)
        await _make_tables(config)
        reset_loading_metrics()
        app = build_app(config, tmp_path)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://testserver")

    return make


@pytest.fixture
async def client(make_app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app with the default settings (ENVIRONMENT is development: DATABASE_LAZY_LOADS=raise)."""
    async with await make_app() as http:
        yield http


def _fix(model: str, attribute: str, variable: str) -> str:
    return (
        f"Load it in the query: select({model}).options(selectinload({model}.{attribute})), or for one object "
        f'already loaded: await session.refresh({variable}, ["{attribute}"]).'
    )


# -- the error: many-to-one and one-to-many, in render() and in an action ------------------------


async def test_a_many_to_one_read_in_render_names_the_model_attribute_controller_and_fix(
    client: httpx.AsyncClient,
) -> None:
    with pytest.raises(LazyLoadError) as caught:
        await client.get("/todos", params={"how": "lazy"})
    assert str(caught.value) == (
        "Lazy load of LlTodo.owner in TodosController.render: the relationship was not loaded with the LlTodo, "
        "and async code cannot load it when it is first read. "
        + _fix("LlTodo", "owner", "ll_todo")
        + ' (DATABASE_LAZY_LOADS=raise; see "Loading related rows".)'
    )
    assert (caught.value.model, caught.value.attribute, caught.value.origin) == (
        "LlTodo",
        "owner",
        "TodosController.render",
    )
    assert isinstance(caught.value.__cause__, sa_exc.MissingGreenlet), "SQLAlchemy's own error stays as the cause"


async def test_a_one_to_many_read_in_render_names_the_model_attribute_controller_and_fix(
    client: httpx.AsyncClient,
) -> None:
    with pytest.raises(LazyLoadError) as caught:
        await client.get("/owners")
    message = str(caught.value)
    assert message.startswith("Lazy load of LlOwner.todos in OwnersController.render: ")
    assert _fix("LlOwner", "todos", "ll_owner") in message
    assert isinstance(caught.value.__cause__, sa_exc.MissingGreenlet)


async def test_a_many_to_one_read_in_an_action_names_the_action(client: httpx.AsyncClient) -> None:
    with pytest.raises(LazyLoadError) as caught:
        await client.post(f"{TODOS_ACTION}/owner_of_first")
    assert str(caught.value).startswith("Lazy load of LlTodo.owner in TodosController.owner_of_first: ")
    assert _fix("LlTodo", "owner", "ll_todo") in str(caught.value)
    assert isinstance(caught.value.__cause__, sa_exc.MissingGreenlet)


async def test_a_read_session_explains_its_lazy_loads_too(client: httpx.AsyncClient) -> None:
    with pytest.raises(LazyLoadError, match=r"^Lazy load of LlTodo.owner in ReadTodosController.render: "):
        await client.get("/read-todos")


async def test_a_lazy_load_that_starts_a_transaction_after_a_commit_is_explained_too(
    client: httpx.AsyncClient,
) -> None:
    with pytest.raises(LazyLoadError) as caught:
        await client.post(f"{TODOS_ACTION}/owner_after_commit")
    assert str(caught.value).startswith("Lazy load of LlTodo.owner in TodosController.owner_after_commit: ")
    assert isinstance(caught.value.__cause__, sa_exc.MissingGreenlet)


async def test_a_one_to_many_read_in_an_action_names_the_action(client: httpx.AsyncClient) -> None:
    with pytest.raises(LazyLoadError) as caught:
        await client.post(f"{OWNERS_ACTION}/count_todos_of_first")
    assert str(caught.value).startswith("Lazy load of LlOwner.todos in OwnersController.count_todos_of_first: ")
    assert isinstance(caught.value.__cause__, sa_exc.MissingGreenlet)


@pytest.mark.parametrize("how", ["selectinload", "refresh", "awaitable_attrs", "run_sync"])
async def test_the_loading_strategies_the_docs_teach_work_with_raise(client: httpx.AsyncClient, how: str) -> None:
    response = await client.get("/todos", params={"how": how})
    assert response.status_code == 200, response.text
    assert response.json() == {"owners": ["ada", "brian", "ada"]}


async def test_a_collection_loaded_with_selectinload_is_read_without_error(client: httpx.AsyncClient) -> None:
    response = await client.get("/owners", params={"how": "selectinload"})
    assert response.json() == {"todos": [2, 1]}


# -- DATABASE_LAZY_LOADS -----------------------------------------------------------------------


async def test_raise_fails_a_load_that_would_have_worked_from_the_identity_map(client: httpx.AsyncClient) -> None:
    """The owners were loaded first, so SQLAlchemy would answer `todo.owner` without a query (and
    fail the day an owner is not already loaded): `raise` fails it at the point of access."""
    with pytest.raises(LazyLoadError) as caught:
        await client.get("/todos", params={"how": "identity-map"})
    assert str(caught.value) == (
        "Lazy load of LlTodo.owner in TodosController.render: the relationship was not loaded with the LlTodo, "
        "and it came from the session's identity map this time, but the same line fails in async code "
        "(MissingGreenlet) whenever the related row is not already loaded. "
        + _fix("LlTodo", "owner", "ll_todo")
        + ' (DATABASE_LAZY_LOADS=raise; see "Loading related rows".)'
    )


async def test_warn_lets_an_identity_map_load_run_and_logs_it_once_with_a_counter(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mountaineer_db")
    async with await make_app(DATABASE_LAZY_LOADS="warn") as http:
        for _ in range(2):
            response = await http.get("/todos", params={"how": "identity-map"})
            assert response.json() == {"owners": ["ada", "brian", "ada"]}
    warnings = [r.getMessage() for r in caplog.records if r.name == "mountaineer_db" and "Lazy load" in r.getMessage()]
    assert len(warnings) == 1, "once per model, attribute and controller, however often it happens"
    assert warnings[0].startswith("Lazy load of LlTodo.owner in TodosController.render: ")
    assert "DATABASE_LAZY_LOADS=warn" in warnings[0] and "selectinload(LlTodo.owner)" in warnings[0]
    assert loading_metrics().lazy_loads == {("LlTodo", "owner", "TodosController.render"): 6}
    registry = prometheus_client.CollectorRegistry()
    register_collector(registry)
    labels = {"model": "LlTodo", "attribute": "owner", "origin": "TodosController.render"}
    assert registry.get_sample_value("mountaineer_db_lazy_loads_total", labels) == 6


async def test_warn_still_explains_a_load_that_cannot_run(make_app: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mountaineer_db")
    async with await make_app(DATABASE_LAZY_LOADS="warn") as http:
        with pytest.raises(LazyLoadError) as caught:
            await http.get("/owners")
    assert "Lazy load of LlOwner.todos in OwnersController.render" in str(caught.value)
    assert "DATABASE_LAZY_LOADS=warn" in str(caught.value)
    assert isinstance(caught.value.__cause__, sa_exc.MissingGreenlet)
    assert loading_metrics().lazy_loads == {("LlOwner", "todos", "OwnersController.render"): 1}


async def test_production_defaults_to_warn(make_app: Any) -> None:
    async with await make_app(ENVIRONMENT="production") as http:
        response = await http.get("/todos", params={"how": "identity-map"})
    assert response.json() == {"owners": ["ada", "brian", "ada"]}
    assert sum(loading_metrics().lazy_loads.values()) == 3


async def test_allow_keeps_sqlalchemys_behaviour(make_app: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="mountaineer_db")
    async with await make_app(DATABASE_LAZY_LOADS="allow") as http:
        response = await http.get("/todos", params={"how": "identity-map"})
        assert response.json() == {"owners": ["ada", "brian", "ada"]}
        with pytest.raises(sa_exc.MissingGreenlet):
            await http.get("/owners")
    assert [r for r in caplog.records if "Lazy load" in r.getMessage()] == []
    assert loading_metrics().lazy_loads == {}


def test_the_setting_takes_any_case_and_its_default_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = {"POSTGRES_HOST": "h", "POSTGRES_DB": "d"}
    assert DatabaseConfig(**parts, DATABASE_LAZY_LOADS="WARN").lazy_loads is LazyLoads.WARN
    assert DatabaseConfig(**parts).lazy_loads is LazyLoads.RAISE
    monkeypatch.setenv("ENVIRONMENT", "production")  # a plain DatabaseConfig reads it from the environment
    assert DatabaseConfig(**parts).lazy_loads is LazyLoads.WARN
    assert DatabaseConfig(**parts, DATABASE_LAZY_LOADS="raise").lazy_loads is LazyLoads.RAISE
    with pytest.raises(ValueError, match="DATABASE_LAZY_LOADS"):
        DatabaseConfig(**parts, DATABASE_LAZY_LOADS="sometimes")
    with pytest.raises(ValueError, match="DATABASE_N_PLUS_ONE_THRESHOLD is 0; use 1 or more"):
        DatabaseConfig(**parts, DATABASE_N_PLUS_ONE_THRESHOLD=0)
