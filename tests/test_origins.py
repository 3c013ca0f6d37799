"""DATABASE_TAG_REQUESTS: each request's transactions show its controller and action.

Asserted where an operator looks: `pg_stat_activity.application_name` of the backend the
transaction runs on, directly and through PgBouncer in transaction mode, and never left
behind for the next transaction on a reused connection.
"""

import functools
import logging
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from mountaineer.config import unregister_config
from sqlalchemy import text

from mountaineer_db import DatabaseConfig, database_session
from mountaineer_db.engines.origins import application_name_suffix, origin_label, work_origin
from mountaineer_db.servers.pgbouncer import PgBouncer
from tests.conftest import require_pgbouncer
from tests.observed_app import SEEN, ObservedConfig, build_app, create_tables, own_application_name

ACTIONS = "/internal/api/notes_controller"


class _Controller:
    def render(self) -> None: ...

    def act(self) -> None: ...


class _Subclass(_Controller):
    pass


def test_origin_names_actions_pages_and_plain_routes() -> None:
    controller = _Subclass()
    page = functools.wraps(controller.render)(functools.partial(lambda **_: None))  # Mountaineer's page route

    def plain_route() -> None: ...

    assert origin_label(controller.act) == "_Subclass.act"  # the serving class, not the defining one
    assert origin_label(page) == "_Subclass.render"
    assert origin_label(plain_route) == "test_origin_names_actions_pages_and_plain_routes.<locals>.plain_route"
    assert origin_label("nightly-report") == "nightly-report"
    assert origin_label(None) is None


def test_the_tag_is_one_quoted_literal_of_at_most_63_bytes() -> None:
    assert application_name_suffix("myapp", "HomeController.add_todo") == (
        "; SET LOCAL application_name = 'myapp:HomeController.add_todo'"
    )
    assert application_name_suffix("", "HomeController.render") == (
        "; SET LOCAL application_name = 'HomeController.render'"
    )
    # Quotes doubled, backslashes and non-ASCII replaced (as PostgreSQL itself does), cut at 63 bytes.
    assert application_name_suffix("it's", "Ünï\\x") == "; SET LOCAL application_name = 'it''s:?n??x'"
    long = application_name_suffix("app", "C" * 100)
    assert long == "; SET LOCAL application_name = 'app:" + "C" * 59 + "'"


def _config(url: str, **overrides: Any) -> ObservedConfig:
    values: dict[str, Any] = {
        "SQLALCHEMY_DATABASE_URI": url,
        "DATABASE_APPLICATION_NAME": "tagapp",
        "DATABASE_TAG_REQUESTS": True,
    }
    values.update(overrides)
    return ObservedConfig(**values)


@pytest.fixture
def direct(pg_server: Any, test_database: str) -> Callable[..., ObservedConfig]:
    return lambda **overrides: _config(pg_server.url(test_database), **overrides)


@pytest.fixture
def single_server_bouncer(pg_server: Any) -> Any:
    """A PgBouncer (transaction mode) with one server connection: every client lands on it."""
    require_pgbouncer()
    work_dir = Path(tempfile.mkdtemp(prefix="mountaineer-db-tag-bouncer-"))
    work_dir.chmod(0o755)
    bouncer = PgBouncer(
        "127.0.0.1",
        pg_server.port,
        {pg_server.user: pg_server.password},
        work_dir=work_dir,
        settings={"default_pool_size": "1"},
    )
    with bouncer:
        yield bouncer


@pytest.fixture
def bounced(single_server_bouncer: PgBouncer, pg_server: Any, test_database: str) -> Callable[..., ObservedConfig]:
    url = single_server_bouncer.url(test_database, user=pg_server.user, password=pg_server.password)
    return lambda **overrides: _config(url, **overrides)


async def _client(config: ObservedConfig, root: Path) -> AsyncIterator[httpx.AsyncClient]:
    await create_tables(config)
    app = build_app(root / "views", config)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://testserver") as http:
        yield http


async def _tags_seen(http: httpx.AsyncClient) -> list[tuple[str, str]]:
    SEEN.clear()
    page = await http.get("/")
    assert page.status_code == 200, page.text
    action = await http.post(f"{ACTIONS}/add_note", json={"body": "hello"})
    assert action.status_code == 200, action.text
    assert action.json()["sideeffect"]["bodies"] == ["hello"]
    plain = await http.get("/plain")
    return [(seen["where"], seen["application_name"]) for seen in SEEN] + [("plain", plain.json()["application_name"])]


EXPECTED_TAGS = [
    ("render", "tagapp:NotesController.render"),  # GET /
    ("add_note", "tagapp:NotesController.add_note"),  # the action
    ("render", "tagapp:NotesController.render"),  # its re-render, on the action's connection
    ("plain", "tagapp:build_app.<locals>.plain_route"),  # a plain FastAPI route
]


async def test_requests_are_tagged_with_controller_and_action(
    direct: Callable[..., ObservedConfig], tmp_path: Path
) -> None:
    async for http in _client(direct(), tmp_path):
        assert await _tags_seen(http) == EXPECTED_TAGS


@pytest.mark.pgbouncer
async def test_tags_hold_through_pgbouncer_in_transaction_mode(
    bounced: Callable[..., ObservedConfig], tmp_path: Path
) -> None:
    async for http in _client(bounced(), tmp_path):
        assert await _tags_seen(http) == EXPECTED_TAGS


async def _untagged_name(config: DatabaseConfig) -> str:
    """application_name of a transaction outside any request, on the same engine."""
    async with database_session(config) as session:
        return await own_application_name(session)


async def test_a_tag_never_outlives_its_transaction_on_a_pooled_connection(
    direct: Callable[..., ObservedConfig], tmp_path: Path
) -> None:
    config = direct(DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_POOL_SIZE=1, DATABASE_MAX_OVERFLOW=0)
    async for http in _client(config, tmp_path):
        assert await _tags_seen(http) == EXPECTED_TAGS
        assert await _untagged_name(config) == "tagapp"


@pytest.mark.pgbouncer
async def test_a_tag_never_outlives_its_transaction_through_pgbouncer(
    bounced: Callable[..., ObservedConfig], tmp_path: Path
) -> None:
    """PgBouncer copies parameter changes the server reports into its client state: the tag's
    end (COMMIT/ROLLBACK restoring the session value) must reach it too, on both pool types."""
    fixed = {"DATABASE_POOL_TYPE": "FIXED_PROCESS", "DATABASE_POOL_SIZE": 1, "DATABASE_STATEMENT_CACHE_SIZE": 0}
    for pool in ({}, fixed):
        unregister_config()  # one app config at a time
        config = bounced(**pool)
        async for http in _client(config, tmp_path / str(len(pool))):
            assert await _tags_seen(http) == EXPECTED_TAGS
            assert await _untagged_name(config) == "tagapp"
            # Another client on PgBouncer's only server connection sees its own name, not a tag.
            other = config.model_copy(update={"DATABASE_APPLICATION_NAME": "other", "DATABASE_TAG_REQUESTS": False})
            assert await _untagged_name(other) == "other"


async def test_tagging_is_off_by_default(direct: Callable[..., ObservedConfig], tmp_path: Path) -> None:
    async for http in _client(direct(DATABASE_TAG_REQUESTS=False), tmp_path):
        assert {name for _, name in await _tags_seen(http)} == {"tagapp"}


async def test_work_outside_requests_can_name_itself(direct: Callable[..., ObservedConfig]) -> None:
    config = direct()
    with work_origin("nightly-report"):
        async with database_session(config) as session:
            assert await own_application_name(session) == "tagapp:nightly-report"
    assert await _untagged_name(config) == "tagapp"


async def test_request_log_lines_name_the_origin(
    direct: Callable[..., ObservedConfig], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async for http in _client(direct(), tmp_path):
        caplog.set_level(logging.INFO, logger="mountaineer_db")
        with pytest.raises(ValueError, match="on purpose"):
            await http.post(f"{ACTIONS}/add_note", json={"body": "x", "fail": True})
    messages = [r.getMessage() for r in caplog.records if r.name == "mountaineer_db"]
    assert messages == [
        "Rolled back the request's transaction in NotesController.add_note after ValueError"
    ]


async def test_a_session_query_shows_the_tag_in_pg_stat_activity(direct: Callable[..., ObservedConfig]) -> None:
    """What an operator runs: another connection lists the tagged transaction while it is open."""
    config = direct()
    with work_origin("NotesController.add_note"):
        async with database_session(config) as session:
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
            observer = config.model_copy(update={"DATABASE_APPLICATION_NAME": "observer"})
            async with database_session(observer) as obs:
                rows = (
                    await obs.exec(
                        text(  # type: ignore[call-overload]
                            "SELECT application_name, state FROM pg_stat_activity "
                            "WHERE application_name LIKE 'tagapp:%'"
                        )
                    )
                ).all()
    assert [tuple(row) for row in rows] == [("tagapp:NotesController.add_note", "idle in transaction")]
