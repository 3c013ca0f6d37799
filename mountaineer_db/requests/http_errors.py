"""Database outcomes as HTTP errors: `get_or_404` and `map_integrity_errors`.

```python
from mountaineer_db import get_or_404, map_integrity_errors

async def render(self, todo_id: int, session: SessionDep) -> DetailRender:
    todo = await get_or_404(session, Todo, todo_id)          # 404 "Todo not found."
    ...

@sideeffect
async def add_todo(self, payload: NewTodo, session: SessionDep) -> None:
    with map_integrity_errors({"uq_todo_open_description": "This todo is already on your list."}):
        session.add(Todo(description=payload.description))
        await session.commit()                               # duplicate: 409 with that detail
```

Mapping integrity errors is opt-in and local (a context manager or decorator) rather than
an engine-wide setting: code that catches `IntegrityError` on purpose (get-or-create races,
upserts by hand) keeps working, and a 409 is a decision about one handler's input.
"""

import functools
import inspect
from collections.abc import Callable, Coroutine, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, cast

from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm.interfaces import ORMOption
from sqlmodel.ext.asyncio.session import AsyncSession

from mountaineer_db.engines.data_errors import invalid_input_error_for
from mountaineer_db.exceptions import ResourceAlreadyExistsError, ResourceConflictError, ResourceNotFoundError

__all__ = ["get_or_404", "map_integrity_errors"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

UNIQUE_VIOLATION = "23505"
FOREIGN_KEY_VIOLATION = "23503"


async def get_or_404(
    session: AsyncSession,
    model: type[T],
    id: Any,
    *,
    options: Sequence[ORMOption] | None = None,
    populate_existing: bool = False,
    with_for_update: bool = False,
    detail: str | None = None,
) -> T:
    """The `model` row with primary key `id`, or `ResourceNotFoundError` (an HTTP 404).

    ```python
    todo = await get_or_404(session, Todo, todo_id)
    order = await get_or_404(session, Order, (shop_id, number), with_for_update=True)
    ```

    The client sees `detail`, by default "<Model> not found."; the error's message names the
    model but never the key, which may be anything the client sent. A key no row can have
    (an int past the column's range, text where a number goes, a NUL in a text key) is not
    found either, rather than a driver error quoting it; when it was the server that refused
    the key, the transaction is then failed, as after any error. The keyword arguments are
    those of `AsyncSession.get`.
    """
    try:
        instance = await session.get(
            model, id, options=options, populate_existing=populate_existing, with_for_update=with_for_update or None
        )
    except DBAPIError as error:
        if invalid_input_error_for(error) is None:
            raise
        instance = None
    if instance is None:
        name = model.__name__
        raise ResourceNotFoundError(
            f"No {name} row has the requested primary key.", detail=detail or f"{name} not found."
        )
    return instance


def _violation(error: IntegrityError) -> tuple[str, Any] | None:
    """(SQLSTATE, the asyncpg error) for a unique or foreign-key violation, else None."""
    candidate: BaseException | None = error.orig
    for _ in range(2):  # SQLAlchemy's DBAPI adapter error, then asyncpg's (which has the names)
        if candidate is None:
            return None
        code = getattr(candidate, "sqlstate", None)
        if code in (UNIQUE_VIOLATION, FOREIGN_KEY_VIOLATION):
            named = candidate if hasattr(candidate, "constraint_name") else candidate.__cause__
            return code, named
        candidate = candidate.__cause__
    return None


def _conflict(error: IntegrityError, details: Mapping[str, str]) -> ResourceConflictError | None:
    found = _violation(error)
    if found is None:
        return None
    code, driver_error = found
    constraint: str | None = getattr(driver_error, "constraint_name", None)
    table: str | None = getattr(driver_error, "table_name", None)
    named = f'"{constraint}"' if constraint else "(unnamed)"
    on_table = f' on table "{table}"' if table else ""
    detail = details.get(constraint or "")
    if code == UNIQUE_VIOLATION:
        return ResourceAlreadyExistsError(
            f"Unique constraint {named}{on_table} was violated: a row with the same values already exists.",
            detail=detail or f"A row with the same values already exists (constraint {named}).",
            constraint=constraint,
        )
    # PostgreSQL's message tells the two sides of a foreign key apart (without values).
    if str(driver_error).startswith("update or delete on table"):
        what = "the row is still referred to by other rows"
    else:  # "insert or update on table ..."
        what = "the row refers to a row that does not exist"
    return ResourceConflictError(
        f"Foreign key {named}{on_table} was violated: {what}.",
        detail=detail or f"{what.capitalize()} (constraint {named}).",
        constraint=constraint,
    )


class map_integrity_errors:  # named like a function: it is used as one, `with map_integrity_errors():`
    """Turn unique and foreign-key violations raised inside into HTTP 409 errors.

    A unique violation becomes `ResourceAlreadyExistsError`, a foreign-key violation
    `ResourceConflictError` (its base class); both name the constraint in their message and
    `detail`, never the values, and chain the original `IntegrityError` as their cause. Give
    `details` to replace the client-facing text per constraint name. Other errors, including
    other integrity errors (NOT NULL, CHECK), propagate unchanged.

    ```python
    with map_integrity_errors():
        session.add(User(email=payload.email))
        await session.commit()

    @map_integrity_errors({"uq_user_email": "That e-mail address is taken."})
    async def sign_up(...): ...
    ```

    The session still needs a rollback afterwards, as after any failed flush or commit; request
    sessions and `database_session()` do that when the error leaves the handler.
    """

    def __init__(self, details: Mapping[str, str] | None = None) -> None:
        self.details: Mapping[str, str] = dict(details or {})

    def __enter__(self) -> "map_integrity_errors":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if isinstance(error, IntegrityError):
            conflict = _conflict(error, self.details)
            if conflict is not None:
                raise conflict from error

    async def __aenter__(self) -> "map_integrity_errors":
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.__exit__(kind, error, traceback)

    def __call__(self, function: F) -> F:
        """Use as a decorator, on sync or async functions."""
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with self:
                    return await cast(Callable[..., Coroutine[Any, Any, Any]], function)(*args, **kwargs)

            return cast(F, run_async)

        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            with self:
                return function(*args, **kwargs)

        return cast(F, run)
