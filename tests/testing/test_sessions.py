"""`mountaineer_db.testing.sessions`: rollback sessions and handing them to an app."""

from collections.abc import Iterator

import pytest
from mountaineer_di import get_function_dependencies
from sqlalchemy import MetaData
from sqlmodel import select

from mountaineer_db import AsyncSession, DatabaseConfig, database_session
from mountaineer_db.requests.dependencies import get_db_session
from mountaineer_db.servers.pgbouncer import PgBouncer
from mountaineer_db.testing import (
    Server,
    ThrowawayDatabase,
    create_schema,
    override_app_session,
    rollback_session,
    throwaway_database,
)
from tests.sample_apps.kit_app.app import KitAppConfig, KitNote, NotesController, build_app, kit_metadata


@pytest.fixture(scope="module")
def kit_database(mdb_server: Server) -> Iterator[ThrowawayDatabase]:
    with throwaway_database(mdb_server) as database:
        metadata: MetaData = kit_metadata()
        create_schema(database.config(), metadata)
        yield database


async def _notes(session: AsyncSession) -> list[str]:
    return list((await session.exec(select(KitNote.text).order_by(KitNote.id))).all())  # type: ignore[arg-type]


async def _committed_notes(config: DatabaseConfig) -> list[str]:
    async with database_session(config) as session:
        return await _notes(session)


async def test_commits_inside_are_kept_until_the_end_then_rolled_back(kit_database: ThrowawayDatabase) -> None:
    config = kit_database.config()
    async with rollback_session(config) as session:
        assert session.in_transaction()
        session.add(KitNote(text="a"))
        await session.commit()
        session.add(KitNote(text="b"))
        await session.flush()
        await session.rollback()  # back to the last commit, as in production
        session.add(KitNote(text="c"))
        await session.commit()
        assert await _notes(session) == ["a", "c"]
        assert await _committed_notes(config) == [], "nothing is visible outside the test's transaction"
    assert await _committed_notes(config) == []


async def test_the_override_is_in_place_inside_and_gone_after(kit_database: ThrowawayDatabase) -> None:
    app = build_app(kit_database.config(KitAppConfig))  # type: ignore[arg-type]
    render = NotesController.render
    async with rollback_session(kit_database.config()) as session:
        with override_app_session(app, session):
            assert get_db_session in app.app.dependency_overrides
            assert get_db_session in render.__mountaineer_dependency_overrides__  # type: ignore[attr-defined]
        assert app.app.dependency_overrides == {}
        assert not hasattr(render, "__mountaineer_dependency_overrides__")


async def test_a_lone_controller_gets_the_session_where_mountaineer_di_resolves_it(
    kit_database: ThrowawayDatabase,
) -> None:
    controller = NotesController()
    async with rollback_session(kit_database.config()) as session:
        session.add(KitNote(text="seen by render"))
        await session.commit()
        with override_app_session(controller, session):
            async with get_function_dependencies(callable=controller.render) as values:
                assert values["session"] is session
                rendered = await controller.render(**values)
        assert rendered.notes == ["seen by render"]


@pytest.mark.pgbouncer
async def test_a_rollback_session_works_through_the_pgbouncer_fixture(
    kit_database: ThrowawayDatabase, mdb_pgbouncer: PgBouncer
) -> None:
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=kit_database.url_via(mdb_pgbouncer))
    assert config.database_url.port == mdb_pgbouncer.port
    async with rollback_session(config) as session:
        session.add(KitNote(text="through the bouncer"))
        await session.commit()
        assert await _notes(session) == ["through the bouncer"]
    assert await _committed_notes(config) == []
