"""Where the database work of the running request comes from: its controller and action.

`get_db_session` records the request's route endpoint (`request_origin`), and the re-render
after a `@sideeffect` records the controller's `render` while it runs. `current_origin()`
names it: `HomeController.add_todo`, `HomeController.render`, or a plain FastAPI
endpoint's qualified name. It is a context variable, so it is per request (per task) and
never outlives the request that set it.

With `DATABASE_TAG_REQUESTS=true`, `MountaineerConnection.transaction()` appends
`SET LOCAL application_name = '<app>:<origin>'` to the transaction's BEGIN (same round
trip, transaction-scoped, so it holds through PgBouncer in transaction mode and is gone
when the transaction ends); the slow-query log and the request session's log lines name
the origin too. No SQL comments: they would make every statement text unique.
"""

import contextlib
import contextvars
import weakref
from collections.abc import Iterator
from typing import Any, Final

from sqlalchemy.engine import Engine
from starlette.requests import HTTPConnection

__all__ = [
    "INTERNAL_STATEMENT",
    "MAX_APPLICATION_NAME_BYTES",
    "application_name_suffix",
    "current_origin",
    "enable_tagging",
    "enter_origin",
    "leave_origin",
    "origin_label",
    "request_origin",
    "tags_requests",
    "work_origin",
]

MAX_APPLICATION_NAME_BYTES: Final = 63
"""PostgreSQL keeps at most NAMEDATALEN - 1 bytes of an application_name."""

INTERNAL_STATEMENT: Final = "mountaineer_db_internal"
"""Execution option on the library's own bookkeeping statements (query counts skip them)."""

# The endpoint (or a ready label) of the request being served in this context.
_origin: contextvars.ContextVar[Any] = contextvars.ContextVar("mountaineer_db_origin", default=None)
_labels: dict[Any, str | None] = {}  # endpoint -> label; endpoints live as long as their routes
_LABELS_LIMIT = 4096
_tagging: "weakref.WeakSet[Engine]" = weakref.WeakSet()


def origin_label(endpoint: Any) -> str | None:
    """`HomeController.add_todo` for a route endpoint (None when it cannot be named).

    - an action: Mountaineer routes the bound method of the controller instance;
    - a page: Mountaineer routes `functools.wraps(controller.render)(partial(...))`, whose
      `__wrapped__` is the bound `render`;
    - anything else (a plain FastAPI route): its `__qualname__`.
    The class is the registered controller's own, so an action inherited from a base
    controller is named after the controller serving it.
    """
    if isinstance(endpoint, str) or endpoint is None:
        return endpoint
    try:
        return _labels[endpoint]
    except (KeyError, TypeError):
        pass
    target = endpoint
    owner = getattr(endpoint, "__self__", None)
    if owner is None:
        wrapped = getattr(endpoint, "__wrapped__", None)
        if wrapped is not None and getattr(wrapped, "__self__", None) is not None:
            target, owner = wrapped, wrapped.__self__
    name = getattr(target, "__name__", None)
    if owner is not None and isinstance(name, str) and not isinstance(owner, type):
        label: str | None = f"{type(owner).__name__}.{name}"
    else:
        qualname = getattr(endpoint, "__qualname__", None)
        label = qualname if isinstance(qualname, str) else None
    with contextlib.suppress(TypeError):  # unhashable endpoints are simply not cached
        if len(_labels) >= _LABELS_LIMIT:
            _labels.clear()
        _labels[endpoint] = label
    return label


def current_origin() -> str | None:
    """The controller and action whose database work runs in this context, if known."""
    return origin_label(_origin.get())


@contextlib.contextmanager
def work_origin(origin: Any) -> Iterator[None]:
    """Attribute the database work inside the block to `origin` (an endpoint, or a label).

    ```python
    with work_origin("nightly-report"):
        async with database_session() as session:
            ...   # tagged `myapp:nightly-report` with DATABASE_TAG_REQUESTS=true
    ```
    """
    token = enter_origin(origin)
    try:
        yield
    finally:
        leave_origin(token)


def enter_origin(origin: Any) -> contextvars.Token[Any]:
    """`work_origin` without the context manager (for a class-based one): pass the token to `leave_origin`."""
    return _origin.set(origin)


def leave_origin(token: contextvars.Token[Any]) -> None:
    """End what `enter_origin` began."""
    try:  # noqa: SIM105 - contextlib.suppress would cost three calls per request
        _origin.reset(token)
    except ValueError:  # torn down from another context: leave that context alone
        pass


def request_origin(request: HTTPConnection | None) -> Any:
    """What to record for `request`: its route endpoint (named lazily), or None."""
    if request is None:
        return None
    return request.scope.get("endpoint")


def _literal(text: str) -> str:
    """`text` as a safe SQL string literal of at most 63 bytes.

    Like PostgreSQL itself, characters outside printable ASCII become `?` (so a byte is a
    character and the cut is exact); backslashes too, whatever standard_conforming_strings
    says; quotes are doubled after the cut.
    """
    cleaned = "".join(ch if " " <= ch <= "~" and ch != "\\" else "?" for ch in text)
    return "'" + cleaned[:MAX_APPLICATION_NAME_BYTES].replace("'", "''") + "'"


def application_name_suffix(prefix: str, origin: str) -> str:
    """`; SET LOCAL application_name = 'prefix:origin'`, appended to a BEGIN."""
    return f"; SET LOCAL application_name = {_literal(f'{prefix}:{origin}' if prefix else origin)}"


def enable_tagging(engine: Engine) -> None:
    """Note that `engine` tags requests (called when the engine is built)."""
    _tagging.add(engine)


def tags_requests(engine: Engine) -> bool:
    """True when `engine` was built with DATABASE_TAG_REQUESTS=true."""
    return engine in _tagging
