"""`get_or_404` and `map_integrity_errors`: missing rows are 404s, conflicts 409s, values never shown."""

import logging
import pickle
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from mountaineer import AppController, ConfigBase, ControllerBase, Metadata, RenderBase, sideeffect
from pydantic import BaseModel
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlmodel import Field, SQLModel

from mountaineer_db import (
    AsyncSession,
    DatabaseConfig,
    DatabaseDependencies,
    ResourceAlreadyExistsError,
    ResourceConflictError,
    ResourceNotFoundError,
    SessionDep,
    database_session,
    get_or_404,
    map_integrity_errors,
)
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.requests.retries import sqlstate_of
from tests.core_app import write_stub_views


class Shelf(SQLModel, table=True):
    __tablename__ = "http_shelf"

    id: int | None = Field(default=None, primary_key=True)
    label: str


class Book(SQLModel, table=True):
    __tablename__ = "http_book"

    id: int | None = Field(default=None, primary_key=True)
    title: str
    shelf_id: int | None = None


SCHEMA = (
    "DROP TABLE IF EXISTS http_book, http_shelf",
    "CREATE TABLE http_shelf (id serial PRIMARY KEY, label text NOT NULL, "
    "CONSTRAINT uq_http_shelf_label UNIQUE (label))",
    "CREATE TABLE http_book (id serial PRIMARY KEY, title text NOT NULL, shelf_id int, "
    "CONSTRAINT fk_http_book_shelf_id_http_shelf FOREIGN KEY (shelf_id) REFERENCES http_shelf (id))",
)


async def _create(config: DatabaseConfig) -> None:
    async with engine_for(config).begin() as connection:
        for statement in SCHEMA:
            await connection.execute(text(statement))


@pytest.fixture
async def config(make_config: Callable[..., DatabaseConfig]) -> DatabaseConfig:
    config = make_config()
    await _create(config)
    return config


async def test_get_or_404_returns_the_row(config: DatabaseConfig) -> None:
    async with database_session(config) as session:
        shelf = Shelf(label="fiction")
        session.add(shelf)
        await session.commit()
        assert shelf.id is not None
        assert await get_or_404(session, Shelf, shelf.id) is shelf
        fetched = await get_or_404(session, Shelf, shelf.id, populate_existing=True, with_for_update=True)
        assert fetched.label == "fiction"


async def test_get_or_404_with_for_update_locks_the_row_until_the_transaction_ends(config: DatabaseConfig) -> None:
    async with database_session(config) as session:
        shelf = Shelf(label="locked")
        session.add(shelf)
        await session.commit()
        shelf_id = shelf.id

    async def locked_elsewhere() -> bool:
        """Whether another connection's FOR UPDATE NOWAIT on the row fails (lock_not_available, 55P03)."""
        try:
            async with engine_for(config).connect() as other:
                statement = text("SELECT id FROM http_shelf WHERE id = :id FOR UPDATE NOWAIT")
                await other.execute(statement.bindparams(id=shelf_id))
        except DBAPIError as error:
            assert sqlstate_of(error) == "55P03", error
            return True
        return False

    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        sent.append(" ".join(statement.split()))

    engine = engine_for(config).sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        async with database_session(config) as session:
            locked = await get_or_404(session, Shelf, shelf_id, with_for_update=True)
            [select_for_update] = sent
            assert locked.label == "locked"
            assert await locked_elsewhere(), "the row is locked while the session's transaction is open"
            # SQLAlchemy 1.4's ORM labels columns (`http_shelf.id AS http_shelf_id`); 2.0 does not.
            assert select_for_update.startswith("SELECT http_shelf.id"), select_for_update
            assert " FROM http_shelf WHERE http_shelf.id = " in select_for_update, select_for_update
            assert select_for_update.endswith(" FOR UPDATE"), select_for_update
            await session.commit()
            assert not await locked_elsewhere(), "the lock ends with the transaction"
            sent.clear()
            await get_or_404(session, Shelf, shelf_id, populate_existing=True)
            assert "FOR UPDATE" not in sent[0], "without with_for_update: a plain SELECT"
            assert not await locked_elsewhere()
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_get_or_404_raises_a_404_that_names_the_model_but_not_the_key(config: DatabaseConfig) -> None:
    async with database_session(config) as session:
        with pytest.raises(ResourceNotFoundError) as caught:
            await get_or_404(session, Shelf, 424242)
        with pytest.raises(ResourceNotFoundError) as custom:
            await get_or_404(session, Shelf, 424242, detail="No such shelf.")
    error = caught.value
    assert (error.status_code, error.detail) == (404, "Shelf not found.")
    assert str(error) == "No Shelf row has the requested primary key."
    assert "424242" not in str(error) + error.detail + repr(error)
    assert isinstance(error, LookupError), "existing `except LookupError` code keeps working"
    assert custom.value.detail == "No such shelf."


def test_the_library_errors_keep_their_message_and_are_http_errors() -> None:
    missing = ResourceNotFoundError('database "app" on db:5432 does not exist; nothing to drop.')
    assert str(missing) == 'database "app" on db:5432 does not exist; nothing to drop.'
    assert (missing.status_code, missing.detail) == (404, "Not found."), "the message never reaches a client"
    exists = ResourceAlreadyExistsError("migrations already exists")
    assert (exists.status_code, exists.detail, exists.constraint) == (409, "This already exists.", None)
    assert isinstance(exists, ResourceConflictError)
    for error in (missing, exists, ResourceConflictError("m", detail="d", constraint="c")):
        copy = pickle.loads(pickle.dumps(error))
        assert (type(copy), str(copy), copy.detail, copy.status_code) == (
            type(error),
            str(error),
            error.detail,
            error.status_code,
        )
    assert repr(exists) == "ResourceAlreadyExistsError('migrations already exists')"


async def test_a_unique_violation_becomes_a_409_naming_the_constraint_not_the_values(
    config: DatabaseConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mountaineer_db")
    with pytest.raises(ResourceAlreadyExistsError) as caught:
        async with database_session(config) as session:
            with map_integrity_errors():
                session.add_all([Shelf(label="secret-label-value"), Shelf(label="secret-label-value")])
                await session.commit()
    error = caught.value
    assert str(error) == (
        'Unique constraint "uq_http_shelf_label" on table "http_shelf" was violated: a row with the same '
        "values already exists."
    )
    assert (error.status_code, error.detail, error.constraint) == (
        409,
        'A row with the same values already exists (constraint "uq_http_shelf_label").',
        "uq_http_shelf_label",
    )
    assert isinstance(error.__cause__, IntegrityError)
    assert all("secret-label-value" not in r.getMessage() for r in caplog.records)


async def test_foreign_key_violations_become_409_conflicts_from_either_side(config: DatabaseConfig) -> None:
    async with database_session(config) as session:
        with pytest.raises(ResourceConflictError) as missing_parent, map_integrity_errors():
            session.add(Book(title="orphan", shelf_id=999))
            await session.flush()
        await session.rollback()
        shelf = Shelf(label="history")
        session.add(shelf)
        await session.flush()
        session.add(Book(title="kept", shelf_id=shelf.id))
        await session.commit()
        with pytest.raises(ResourceConflictError) as still_referenced, map_integrity_errors():
            await session.exec(text("DELETE FROM http_shelf"))  # type: ignore[call-overload]
    assert type(missing_parent.value) is ResourceConflictError, "not a duplicate: the base class"
    assert str(missing_parent.value) == (
        'Foreign key "fk_http_book_shelf_id_http_shelf" on table "http_book" was violated: the row refers to a '
        "row that does not exist."
    )
    assert missing_parent.value.detail == (
        'The row refers to a row that does not exist (constraint "fk_http_book_shelf_id_http_shelf").'
    )
    assert str(still_referenced.value) == (
        'Foreign key "fk_http_book_shelf_id_http_shelf" on table "http_book" was violated: the row is still '
        "referred to by other rows."
    )
    assert still_referenced.value.status_code == 409


async def test_other_integrity_errors_pass_through_and_details_can_be_given_per_constraint(
    config: DatabaseConfig,
) -> None:
    @map_integrity_errors({"uq_http_shelf_label": "That label is taken."})
    async def add_shelf(session: AsyncSession, label: str | None) -> None:
        session.add(Shelf(label=label))  # type: ignore[arg-type]
        await session.flush()

    async with database_session(config) as session:
        await add_shelf(session, "taken")
        with pytest.raises(ResourceAlreadyExistsError) as caught:
            await add_shelf(session, "taken")
        await session.rollback()
        with pytest.raises(IntegrityError):
            await add_shelf(session, None)  # NOT NULL: a bug, not a conflict
    assert caught.value.detail == "That label is taken."

    @map_integrity_errors()
    def sync_work() -> str:
        return "sync functions too"

    assert sync_work() == "sync functions too"


@pytest.mark.pgbouncer
async def test_through_pgbouncer_the_constraint_is_named_too(
    config: DatabaseConfig, bouncer_config: Callable[..., DatabaseConfig]
) -> None:
    with pytest.raises(ResourceAlreadyExistsError) as caught:
        async with database_session(bouncer_config()) as session, map_integrity_errors():
            session.add_all([Shelf(label="twice"), Shelf(label="twice")])
            await session.commit()
    assert caught.value.constraint == "uq_http_shelf_label"


# --- Over HTTP: Mountaineer and plain FastAPI -----------------------------------------------------


class ShelfConfig(DatabaseConfig, ConfigBase):
    """Not pip-installed: the app gets a view_root."""


class ShelfRender(RenderBase):
    labels: list[str]


class NewShelf(BaseModel):
    label: str


class ShelfController(ControllerBase):
    url = "/shelves/{shelf_id}"
    view_path = "/app/shelf/page.tsx"

    async def render(self, shelf_id: int, session: SessionDep) -> ShelfRender:
        shelf = await get_or_404(session, Shelf, shelf_id)
        return ShelfRender(labels=[shelf.label], metadata=Metadata(title=shelf.label))

    @sideeffect
    async def add_shelf(self, payload: NewShelf, session: SessionDep) -> None:
        with map_integrity_errors({"uq_http_shelf_label": "A shelf with this label exists."}):
            session.add(Shelf(label=payload.label))
            await session.commit()

    @sideeffect
    async def rename_missing(self, session: SessionDep) -> None:
        await get_or_404(session, Shelf, 777)


@pytest.fixture
async def client(config: DatabaseConfig, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    write_stub_views(tmp_path / "views", "shelf-views", "shelf")
    app = AppController(view_root=tmp_path / "views", config=ShelfConfig(SQLALCHEMY_DATABASE_URI=config.database_url))
    app.register(ShelfController())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://testserver") as http:
        yield http


async def test_in_mountaineer_a_missing_row_is_a_404_and_a_duplicate_a_409(client: httpx.AsyncClient) -> None:
    page = await client.get("/shelves/31337")
    assert (page.status_code, page.json()) == (404, {"detail": "Shelf not found."})
    action = await client.post("/internal/api/shelf_controller/rename_missing")
    assert (action.status_code, action.json()) == (404, {"detail": "Shelf not found."})
    page_of_the_new_shelf = {"referer": "http://testserver/shelves/1"}  # the re-render reads the page URL
    first = await client.post(
        "/internal/api/shelf_controller/add_shelf", json={"label": "poetry"}, headers=page_of_the_new_shelf
    )
    assert (first.status_code, first.json()["sideeffect"]["labels"]) == (200, ["poetry"])
    again = await client.post(
        "/internal/api/shelf_controller/add_shelf", json={"label": "poetry"}, headers=page_of_the_new_shelf
    )
    assert (again.status_code, again.json()) == (409, {"detail": "A shelf with this label exists."})


async def test_in_plain_fastapi_too(config: DatabaseConfig) -> None:
    ShelfConfig(SQLALCHEMY_DATABASE_URI=config.database_url)
    api = FastAPI()

    @api.get("/shelves/{shelf_id}")
    async def read_shelf(
        shelf_id: int, session: AsyncSession = Depends(DatabaseDependencies.get_db_session)
    ) -> dict[str, Any]:
        shelf = await get_or_404(session, Shelf, shelf_id)
        return {"label": shelf.label}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://testserver") as http:
        response = await http.get("/shelves/5")
    assert (response.status_code, response.json()) == (404, {"detail": "Shelf not found."})
