"""N+1 queries: the warning (DATABASE_N_PLUS_ONE_THRESHOLD), the kit's assertion, and the kit's lazy loads.

The app of `tests/test_lazy_loads.py`: three todos, two owners. `GET /todos?how=awaitable_attrs`
loads each todo's owner with its own query (an N+1: two owners, two identical statements);
`how=selectinload` loads them in one.
"""

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import prometheus_client
import pytest
from sqlalchemy import event

from mountaineer_db import LazyLoadError
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.engines.loading_metrics import loading_metrics, reset_loading_metrics
from mountaineer_db.engines.n_plus_one import statement_shape
from mountaineer_db.engines.request_checks import request_checks_of
from mountaineer_db.observability.prometheus import register_collector
from mountaineer_db.testing import assert_no_n_plus_one, override_app_session, render_controller, rollback_session
from tests.test_lazy_loads import TODOS_ACTION, LlConfig, OwnersController, _make_tables, build_app

OWNER_QUERY = "SELECT lazy_owner.id, lazy_owner.name FROM lazy_owner WHERE lazy_owner.id = $n"


@pytest.fixture
def make_app(pg_server: Any, test_database: str, tmp_path: Path) -> Any:
    async def make(**settings: Any) -> tuple[httpx.AsyncClient, Any, LlConfig]:
        config = LlConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(test_database), **settings)
        await _make_tables(config)
        reset_loading_metrics()
        app = build_app(config, tmp_path)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://testserver")
        return client, app, config

    return make


def _unlabelled(text: str) -> str:
    """SQLAlchemy 2.0 labels selected columns (`lazy_owner.id AS lazy_owner_id`), 2.1 does not."""
    return re.sub(r" AS \w+", "", text)


def _n_plus_one_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        _unlabelled(r.getMessage()) for r in caplog.records if r.name == "mountaineer_db" and "N+1" in r.getMessage()
    ]


async def test_a_statement_repeated_past_the_threshold_in_a_render_logs_one_warning(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mountaineer_db")
    client, _, _ = await make_app(DATABASE_N_PLUS_ONE_THRESHOLD=1)
    async with client:
        response = await client.get("/todos", params={"how": "awaitable_attrs"})
    assert response.json() == {"owners": ["ada", "brian", "ada"]}
    warnings = _n_plus_one_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0] == (
        "N+1 queries in TodosController.render: one statement ran 2 times in this request "
        "(DATABASE_N_PLUS_ONE_THRESHOLD=1); load the related rows with the query that fetches the parents "
        f'(see "Loading related rows"): {OWNER_QUERY}'
    )
    assert loading_metrics().n_plus_one == {"TodosController.render": 1}
    registry = prometheus_client.CollectorRegistry()
    register_collector(registry)
    assert registry.get_sample_value("mountaineer_db_n_plus_one_total", {"origin": "TodosController.render"}) == 1


async def test_an_action_is_named_and_its_rerender_counted_apart(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mountaineer_db")
    client, _, _ = await make_app(DATABASE_N_PLUS_ONE_THRESHOLD=2)
    async with client:
        response = await client.post(f"{TODOS_ACTION}/owners_one_by_one")
    assert response.status_code == 200, response.text
    warnings = _n_plus_one_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("N+1 queries in TodosController.owners_one_by_one: one statement ran 3 times")


async def test_an_action_and_its_rerender_running_the_same_statements_once_each_is_no_n_plus_one(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mountaineer_db")
    client, _, _ = await make_app(DATABASE_N_PLUS_ONE_THRESHOLD=1)
    async with client:
        response = await client.post(f"{TODOS_ACTION}/list_todos")
    assert response.json()["sideeffect"] == {}, "the re-render ran (its explicit response is not serialized)"
    assert _n_plus_one_warnings(caplog) == []


async def test_no_warning_at_or_below_the_threshold_or_with_one_query(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="mountaineer_db")
    client, _, _ = await make_app(DATABASE_N_PLUS_ONE_THRESHOLD=2)
    async with client:
        assert (await client.get("/todos", params={"how": "awaitable_attrs"})).status_code == 200  # 2 runs: not > 2
        assert (await client.get("/todos", params={"how": "selectinload"})).status_code == 200
    assert _n_plus_one_warnings(caplog) == []
    assert loading_metrics().n_plus_one == {}


async def test_off_means_nothing_installed(make_app: Any, caplog: pytest.LogCaptureFixture) -> None:
    """With DATABASE_LAZY_LOADS=allow and no threshold, no listener, no per-request state: no cost."""
    caplog.set_level(logging.WARNING, logger="mountaineer_db")
    client, _, config = await make_app(DATABASE_LAZY_LOADS="allow")
    engine = engine_for(config)
    assert request_checks_of(engine) is None
    from mountaineer_db.engines.n_plus_one import _count

    assert not event.contains(engine.sync_engine, "before_cursor_execute", _count)
    async with client:
        assert (await client.get("/todos", params={"how": "awaitable_attrs"})).status_code == 200
    assert _n_plus_one_warnings(caplog) == []
    on = LlConfig.model_construct(**{**dict(config), "DATABASE_N_PLUS_ONE_THRESHOLD": 1})
    assert event.contains(engine_for(on).sync_engine, "before_cursor_execute", _count)


def test_statement_shapes_ignore_values_and_list_lengths() -> None:
    assert statement_shape("SELECT a FROM t WHERE t.id = $1::INTEGER") == "SELECT a FROM t WHERE t.id = $n"
    assert statement_shape("SELECT a FROM t WHERE t.id IN ($1::INTEGER, $2::INTEGER, $3::INTEGER)") == (
        statement_shape("SELECT a FROM t WHERE t.id IN ($1::INTEGER)")
    )
    assert statement_shape("SELECT a FROM t WHERE t.id = $1") != statement_shape("SELECT b FROM t WHERE t.id = $1")


# -- the kit --------------------------------------------------------------------------------


@pytest.fixture
async def kit(make_app: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The app under the test kit, configured as production would be (ENVIRONMENT=production)."""
    client, app, config = await make_app(ENVIRONMENT="production")
    async with rollback_session(config) as session, client:
        with override_app_session(app, session):
            yield client, session


async def test_the_kit_assertion_fails_on_an_n_plus_one_naming_the_statement_count_and_controller(
    kit: tuple[httpx.AsyncClient, Any],
) -> None:
    client, _ = kit
    with pytest.raises(AssertionError) as caught, assert_no_n_plus_one():
        await client.get("/todos", params={"how": "awaitable_attrs"})
    assert _unlabelled(str(caught.value)) == (
        "N+1 queries: 1 statement ran more than 1 time for one controller/action (threshold=1):\n"
        f"- 2 times in TodosController.render: {OWNER_QUERY}\n"
        'Load the related rows with the query that fetches the parents (see "Loading related rows").'
    )


async def test_the_kit_assertion_passes_with_selectinload_and_with_a_higher_threshold(
    kit: tuple[httpx.AsyncClient, Any],
) -> None:
    client, _ = kit
    with assert_no_n_plus_one() as seen:
        await client.get("/todos", params={"how": "selectinload"})
    assert seen.counts["TodosController.render"], "the render's statements were counted"
    with assert_no_n_plus_one(threshold=2):
        await client.get("/todos", params={"how": "awaitable_attrs"})


async def test_the_kit_groups_by_action_so_an_action_and_its_rerender_do_not_add_up(
    kit: tuple[httpx.AsyncClient, Any],
) -> None:
    client, _ = kit
    expected = r"- 3 times in TodosController.owners_one_by_one: "
    with pytest.raises(AssertionError, match=expected) as caught, assert_no_n_plus_one(threshold=2):
        await client.post(f"{TODOS_ACTION}/owners_one_by_one")
    assert "TodosController.render" not in str(caught.value)


async def test_the_kit_raises_on_lazy_loads_even_where_production_would_warn(
    kit: tuple[httpx.AsyncClient, Any],
) -> None:
    client, _ = kit
    with pytest.raises(LazyLoadError, match=r"^Lazy load of LlTodo.owner in TodosController.render: .*=raise;"):
        await client.get("/todos", params={"how": "identity-map"})


async def test_the_kit_follows_an_explicit_setting(make_app: Any) -> None:
    client, app, config = await make_app(DATABASE_LAZY_LOADS="warn")
    async with rollback_session(config) as session, client:
        with override_app_session(app, session):
            response = await client.get("/todos", params={"how": "identity-map"})
    assert response.json() == {"owners": ["ada", "brian", "ada"]}


async def test_render_controller_checks_lazy_loads_and_names_the_controller(make_app: Any) -> None:
    """The kit's `render_controller` (no HTTP, no frontend build) is a request like any other."""
    client, _, config = await make_app(ENVIRONMENT="production")
    async with client, rollback_session(config) as session:
        with pytest.raises(LazyLoadError, match=r"^Lazy load of LlOwner.todos in OwnersController.render: "):
            await render_controller(OwnersController(), session)
