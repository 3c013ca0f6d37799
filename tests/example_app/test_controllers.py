"""The todo app's controllers against a real PostgreSQL, through the testing kit.

Each test's changes (the actions' commits included) are rolled back afterwards.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest
from sqlmodel import func, select

from mountaineer_db import AsyncSession, ResourceNotFoundError
from mountaineer_db.testing import QueryLog, assert_max_queries, render_controller
from tests.example_app._require import require_example_app

require_example_app()

from todo_app.controllers.detail import DetailController  # noqa: E402 - after the installed check
from todo_app.controllers.home import HomeController  # noqa: E402
from todo_app.models import Todo  # noqa: E402

HOME = "/internal/api/home_controller"
DETAIL = "/internal/api/detail_controller"


async def _count(session: AsyncSession) -> int:
    return (await session.exec(select(func.count()).select_from(Todo))).one()


async def _seed(session: AsyncSession, *descriptions: str) -> list[int]:
    """Commit todos; their ids (requests share the session and may expire the objects)."""
    todos = [Todo(description=text) for text in descriptions]
    session.add_all(todos)
    await session.commit()
    return [todo.id for todo in todos if todo.id is not None]


async def _fetch(session: AsyncSession, todo_id: int) -> Todo:
    todo = await session.get(Todo, todo_id, populate_existing=True)
    assert todo is not None
    return todo


def _listed(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    todos: list[dict[str, Any]] = response.json()["sideeffect"]["todos"]
    return todos


async def test_list_page_renders_todos_from_the_database(mdb_session: AsyncSession) -> None:
    await _seed(mdb_session, "first", "second")
    (await mdb_session.exec(select(Todo).where(Todo.description == "second"))).one().done = True
    await mdb_session.commit()

    rendered = await render_controller(HomeController(), mdb_session)

    assert [(t.description, t.done) for t in rendered.todos] == [("first", False), ("second", True)]
    assert all(isinstance(todo, Todo) for todo in rendered.todos)
    assert rendered.remaining == 1
    assert rendered.title == "Todos (1 open)"


async def test_the_list_page_is_one_query_however_many_todos(
    mdb_session: AsyncSession, mdb_assert_num_queries: Callable[[int], AbstractContextManager[QueryLog]]
) -> None:
    await _seed(mdb_session, "first", "second", "third")

    with mdb_assert_num_queries(1) as queries:
        rendered = await render_controller(HomeController(), mdb_session)

    assert len(rendered.todos) == 3
    assert queries.statements[0].startswith("SELECT todo.id, todo.description, todo.done, todo.created_at FROM todo")


async def test_adding_a_todo_is_one_insert_and_one_list_query(
    mdb_client: httpx.AsyncClient, mdb_app_session: AsyncSession
) -> None:
    await _seed(mdb_app_session, "already there")

    with assert_max_queries(2) as queries:
        response = await mdb_client.post(f"{HOME}/add_todo", json={"description": "one more"})

    assert len(_listed(response)) == 2
    assert [statement.split()[0] for statement in queries.statements] == ["INSERT", "SELECT"]


async def test_add_stores_the_todo_and_rerenders_the_list(
    mdb_client: httpx.AsyncClient, mdb_app_session: AsyncSession
) -> None:
    response = await mdb_client.post(f"{HOME}/add_todo", json={"description": "  buy milk  "})

    assert [t["description"] for t in _listed(response)] == ["buy milk"]
    assert response.json()["sideeffect"]["title"] == "Todos (1 open)"  # the page sets the tab title from it
    stored = (await mdb_app_session.exec(select(Todo))).one()
    # The re-render returns the table model: every column, serialized (nothing expired or lazy).
    assert _listed(response) == [
        {
            "id": stored.id,
            "description": "buy milk",
            "done": False,
            "created_at": stored.created_at.isoformat().replace("+00:00", "Z"),
        }
    ]


async def test_empty_description_is_refused_with_a_clear_error(
    mdb_client: httpx.AsyncClient, mdb_app_session: AsyncSession
) -> None:
    response = await mdb_client.post(f"{HOME}/add_todo", json={"description": "   "})

    assert response.status_code == 400
    assert response.json()["detail"] == "Write something first: the description is empty."
    assert await _count(mdb_app_session) == 0


async def test_overlong_description_is_refused_and_nothing_is_written(
    mdb_client: httpx.AsyncClient, mdb_app_session: AsyncSession
) -> None:
    response = await mdb_client.post(f"{HOME}/add_todo", json={"description": "x" * 2000})

    assert response.status_code == 400
    assert response.json()["detail"] == "That description has 2,000 characters; the limit is 500."
    assert await _count(mdb_app_session) == 0


async def test_toggle_marks_done_and_back(mdb_client: httpx.AsyncClient, mdb_app_session: AsyncSession) -> None:
    (todo_id,) = await _seed(mdb_app_session, "water the plants")

    first = await mdb_client.post(f"{HOME}/toggle_todo", json={"id": todo_id})
    assert [t["done"] for t in _listed(first)] == [True]
    assert (await _fetch(mdb_app_session, todo_id)).done is True
    second = await mdb_client.post(f"{HOME}/toggle_todo", json={"id": todo_id})
    assert [t["done"] for t in _listed(second)] == [False]
    assert (await _fetch(mdb_app_session, todo_id)).done is False


async def test_delete_removes_the_todo(mdb_client: httpx.AsyncClient, mdb_app_session: AsyncSession) -> None:
    keep, drop = await _seed(mdb_app_session, "keep", "drop")

    response = await mdb_client.post(f"{HOME}/delete_todo", json={"id": drop})

    assert [t["id"] for t in _listed(response)] == [keep]
    assert (await mdb_app_session.exec(select(Todo.description))).all() == ["keep"]


async def test_actions_on_an_unknown_id_answer_404(mdb_client: httpx.AsyncClient) -> None:
    for action in ("toggle_todo", "delete_todo"):
        response = await mdb_client.post(f"{HOME}/{action}", json={"id": 424242})
        assert response.status_code == 404, action
        assert response.json()["detail"] == "Todo #424242 does not exist (it may have been deleted)."


async def test_detail_page_renders_one_todo(mdb_session: AsyncSession) -> None:
    (todo_id,) = await _seed(mdb_session, "call the plumber")

    rendered = await render_controller(DetailController(), mdb_session, path=f"/todos/{todo_id}")

    assert isinstance(rendered.todo, Todo)  # the table model itself, as the README's Quickstart does
    assert rendered.todo.id == todo_id
    assert rendered.todo.description == "call the plumber"
    assert rendered.todo.created_at == (await _fetch(mdb_session, todo_id)).created_at
    assert rendered.title == f"Todo #{todo_id}"


async def test_rename_updates_the_description(mdb_client: httpx.AsyncClient, mdb_app_session: AsyncSession) -> None:
    (todo_id,) = await _seed(mdb_app_session, "old name")

    response = await mdb_client.post(
        f"{DETAIL}/rename_todo",
        json={"id": todo_id, "description": "new name"},
        headers={"referer": f"http://testserver/todos/{todo_id}"},  # the re-render reads the page URL
    )

    assert response.status_code == 200, response.text
    assert response.json()["sideeffect"]["todo"]["description"] == "new name"
    assert (await _fetch(mdb_app_session, todo_id)).description == "new name"


async def test_rename_to_empty_is_refused_and_keeps_the_old_name(
    mdb_client: httpx.AsyncClient, mdb_app_session: AsyncSession
) -> None:
    (todo_id,) = await _seed(mdb_app_session, "stays")

    response = await mdb_client.post(
        f"{DETAIL}/rename_todo",
        json={"id": todo_id, "description": ""},
        headers={"referer": f"http://testserver/todos/{todo_id}"},
    )

    assert response.status_code == 400
    assert response.json()["detail"] == "Write something first: the description is empty."
    assert (await _fetch(mdb_app_session, todo_id)).description == "stays"


async def test_an_unknown_id_on_the_detail_page_is_a_404(mdb_session: AsyncSession) -> None:
    with pytest.raises(ResourceNotFoundError) as caught:
        await render_controller(DetailController(), mdb_session, path="/todos/424242")
    assert (caught.value.status_code, caught.value.detail) == (404, "Todo not found.")


DUPLICATE = "An open todo with this description already exists."


async def test_the_same_open_todo_twice_is_refused_with_a_409(
    mdb_client: httpx.AsyncClient, mdb_app_session: AsyncSession
) -> None:
    assert _listed(await mdb_client.post(f"{HOME}/add_todo", json={"description": "call mum"}))
    response = await mdb_client.post(f"{HOME}/add_todo", json={"description": "  call mum "})

    assert (response.status_code, response.json()) == (409, {"detail": DUPLICATE})
    assert await _count(mdb_app_session) == 1


async def test_a_done_todo_may_be_added_again_but_not_reopened_beside_its_twin(
    mdb_client: httpx.AsyncClient, mdb_app_session: AsyncSession
) -> None:
    (done_id,) = await _seed(mdb_app_session, "water the plants")
    assert (await mdb_client.post(f"{HOME}/toggle_todo", json={"id": done_id})).status_code == 200
    again = await mdb_client.post(f"{HOME}/add_todo", json={"description": "water the plants"})
    assert [(t["description"], t["done"]) for t in _listed(again)] == [
        ("water the plants", True),
        ("water the plants", False),
    ]

    reopen = await mdb_client.post(f"{HOME}/toggle_todo", json={"id": done_id})

    assert (reopen.status_code, reopen.json()) == (409, {"detail": DUPLICATE})
    assert (await _fetch(mdb_app_session, done_id)).done is True


async def test_renaming_onto_another_open_todo_is_a_409(
    mdb_client: httpx.AsyncClient, mdb_app_session: AsyncSession
) -> None:
    _, second = await _seed(mdb_app_session, "first", "second")

    response = await mdb_client.post(
        f"{DETAIL}/rename_todo",
        json={"id": second, "description": "first"},
        headers={"referer": f"http://testserver/todos/{second}"},
    )

    assert (response.status_code, response.json()) == (409, {"detail": DUPLICATE})
    assert (await _fetch(mdb_app_session, second)).description == "second"
