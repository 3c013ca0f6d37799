"""`captured_on_commit`: after-commit hooks in the kit's sessions, which never really commit."""

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from mountaineer import AppController, ConfigBase, ControllerBase, RenderBase, sideeffect
from pydantic import BaseModel
from sqlalchemy import MetaData
from sqlmodel import Field, SQLModel, select

from mountaineer_db import DatabaseConfig, SessionDep, database_session, on_commit
from mountaineer_db.testing import (
    Server,
    ThrowawayDatabase,
    captured_on_commit,
    create_schema,
    override_app_session,
    rollback_session,
    throwaway_database,
)
from tests.core_app import write_stub_views


class CaptureConfig(DatabaseConfig, ConfigBase):
    """Not pip-installed: the app gets a view_root."""


class Signup(SQLModel, table=True):
    __tablename__ = "capture_signup"

    id: int | None = Field(default=None, primary_key=True)
    email: str


OUTBOX: list[str] = []


def welcome(email: str) -> Callable[[], None]:
    def send() -> None:
        OUTBOX.append(email)

    return send


@pytest.fixture(scope="module")
def capture_database(mdb_server: Server) -> Iterator[ThrowawayDatabase]:
    with throwaway_database(mdb_server) as database:
        metadata = MetaData()
        Signup.__table__.to_metadata(metadata)  # type: ignore[attr-defined]
        create_schema(database.config(), metadata)
        yield database


@pytest.fixture(autouse=True)
def _empty_outbox() -> None:
    OUTBOX.clear()


async def test_outside_a_capture_the_kit_session_runs_no_hooks(capture_database: ThrowawayDatabase) -> None:
    async with rollback_session(capture_database.config()) as session:
        session.add(Signup(email="a@example.com"))
        on_commit(session, welcome("a@example.com"))
        await session.commit()
    assert OUTBOX == [], "the per-test transaction never commits, so neither do its hooks"


async def test_a_capture_lists_the_committed_hooks_without_running_them(capture_database: ThrowawayDatabase) -> None:
    first, second, rolled_back = welcome("first"), welcome("second"), welcome("rolled back")
    async with rollback_session(capture_database.config()) as session:
        with captured_on_commit() as callbacks:
            on_commit(session, first)
            await session.commit()
            on_commit(session, rolled_back)
            await session.rollback()
            on_commit(session, second)
            await session.commit()
    assert callbacks == [first, second]
    assert OUTBOX == []


async def test_execute_runs_each_hook_where_the_code_under_test_commits(capture_database: ThrowawayDatabase) -> None:
    async with rollback_session(capture_database.config()) as session:
        with captured_on_commit(execute=True) as callbacks:
            on_commit(session, welcome("b@example.com"))
            async with session.begin_nested():
                on_commit(session, welcome("in a savepoint"))
            assert OUTBOX == []
            await session.commit()
            assert OUTBOX == ["b@example.com", "in a savepoint"]
    assert len(callbacks) == 2


async def test_sessions_that_really_commit_run_their_hooks_and_are_listed_too(
    capture_database: ThrowawayDatabase,
) -> None:
    config = capture_database.config()
    hook = welcome("real")
    with captured_on_commit() as callbacks:
        async with database_session(config) as session:
            on_commit(session, hook)
            await session.commit()
    assert callbacks == [hook]
    assert OUTBOX == ["real"]


class NewSignup(BaseModel):
    email: str


class SignupRender(RenderBase):
    emails: list[str]
    sent: list[str]


class SignupController(ControllerBase):
    url = "/"
    view_path = "/app/signup/page.tsx"

    async def render(self, session: SessionDep) -> SignupRender:
        emails = (await session.exec(select(Signup.email).order_by(Signup.id))).all()  # type: ignore[arg-type]
        return SignupRender(emails=list(emails), sent=list(OUTBOX))

    @sideeffect
    async def sign_up(self, payload: NewSignup, session: SessionDep) -> None:
        session.add(Signup(email=payload.email))
        on_commit(session, welcome(payload.email))
        await session.commit()


async def test_an_action_through_the_app_with_the_fixture(
    capture_database: ThrowawayDatabase, tmp_path: Any, mdb_captured_on_commit: Any
) -> None:
    write_stub_views(tmp_path / "views", "capture-views", "signup")
    app = AppController(view_root=tmp_path / "views", config=capture_database.config(CaptureConfig))
    app.register(SignupController())
    async with rollback_session(capture_database.config()) as session:
        with override_app_session(app, session), mdb_captured_on_commit(execute=True) as callbacks:
            transport = httpx.ASGITransport(app=app.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                response = await client.post("/internal/api/signup_controller/sign_up", json={"email": "c@example.com"})
    assert response.status_code == 200, response.text
    assert response.json()["sideeffect"] == {"emails": ["c@example.com"], "sent": ["c@example.com"]}
    assert len(callbacks) == 1
    assert mdb_captured_on_commit is captured_on_commit
