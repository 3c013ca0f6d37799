"""Lazy loads in request sessions: an error that names the model, the attribute, the controller and the fix.

In async code SQLAlchemy cannot load a relationship on first access: it raises
`MissingGreenlet: greenlet_spawn has not been called; can't call await_only() here`, which
names neither the model nor the attribute. In a request session (`get_db_session`,
`get_db_read_session`, the test kit's) that becomes a `LazyLoadError`:

```
LazyLoadError: Lazy load of Todo.owner in HomeController.render: the relationship was not loaded
with the Todo, and async code cannot load it when it is first read. Load it in the query:
select(Todo).options(selectinload(Todo.owner)), or for one object already loaded:
await session.refresh(todo, ["owner"]). (DATABASE_LAZY_LOADS=raise; see "Loading related rows".)
```

with SQLAlchemy's `MissingGreenlet` as its `__cause__`. DATABASE_LAZY_LOADS says what else happens:

- `raise` (default in development and in the test kit): a many-to-one found in the session's
  identity map, which SQLAlchemy returns without a query (so it "works" until the related row
  is not already loaded), fails the same way, at the point of access;
- `warn` (default with ENVIRONMENT=production): that identity-map load goes ahead; every lazy
  load is counted (`loading_metrics().lazy_loads`) and logged once per model, attribute and
  controller/action;
- `allow`: nothing of this module runs; SQLAlchemy's behaviour.

Sync code run through `await session.run_sync(...)`, `await obj.awaitable_attrs.attr` and
SQLAlchemy's own loads for a flush, a cascade or a merge run in a greenlet, where lazy loading
works as designed: they are left alone in every mode.

How: a lazy load that needs a query runs `Session.execute`; called from async code (outside
SQLAlchemy's greenlet, where no I/O is possible) it gets a `do_orm_execute` handler of its own,
which sees the load (`ORMExecuteState.lazy_loaded_from`, `loader_strategy_path`) before any I/O.
Only then: statements from inside the greenlet (all the others) build no `ORMExecuteState` for
it. The handler is passed through `Session.execute`'s `_add_event` argument, and a many-to-one
found in the identity map, which runs no statement, is seen through `Session._identity_lookup`
(both private: `tests/test_compat.py` names the upstream changes that would break them).
"""

import contextlib
import contextvars
import enum
import logging
import re
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.orm import InstanceState, Mapper, ORMExecuteState, PassiveFlag, RelationshipDirection
from sqlalchemy.util import concurrency
from sqlalchemy.util.concurrency import in_greenlet
from sqlmodel import Session

from mountaineer_db.engines.loading_metrics import count_lazy_load
from mountaineer_db.engines.n_plus_one import StatementCounts
from mountaineer_db.engines.origins import current_origin
from mountaineer_db.engines.request_checks import RequestChecks, request_checks_of
from mountaineer_db.exceptions import LazyLoadError
from mountaineer_db.settings.config import LazyLoads

__all__ = ["LazyLoadCheckedSession", "checked", "checked_request", "lazy_load_error", "lazy_load_message"]

logger = logging.getLogger("mountaineer_db")

# The mode of the request running in this context; None outside requests (or with `allow`).
_mode: contextvars.ContextVar[LazyLoads | None] = contextvars.ContextVar("mountaineer_db_lazy_loads", default=None)


def _variable(model: str) -> str:
    """`todo_item` for `TodoItem`: the name the fix's example gives an instance."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", model).lower() or "obj"


def lazy_load_message(
    model: str, attribute: str, origin: str | None, mode: LazyLoads, *, from_identity_map: bool
) -> str:
    """The text of a `LazyLoadError` (and of the `warn` log line)."""
    where = f" in {origin}" if origin else ""
    if from_identity_map:
        why = (
            "it came from the session's identity map this time, but the same line fails in async code "
            "(MissingGreenlet) whenever the related row is not already loaded"
        )
    else:
        why = "async code cannot load it when it is first read"
    return (
        f"Lazy load of {model}.{attribute}{where}: the relationship was not loaded with the {model}, and {why}. "
        f"Load it in the query: select({model}).options(selectinload({model}.{attribute})), or for one object "
        f'already loaded: await session.refresh({_variable(model)}, ["{attribute}"]). '
        f'(DATABASE_LAZY_LOADS={mode.value}; see "Loading related rows".)'
    )


def lazy_load_error(
    model: str, attribute: str, mode: LazyLoads, *, from_identity_map: bool, origin: str | None = None
) -> LazyLoadError:
    """The `LazyLoadError` for a lazy load of `model.attribute` in the current request."""
    origin = origin if origin is not None else current_origin()
    message = lazy_load_message(model, attribute, origin, mode, from_identity_map=from_identity_map)
    return LazyLoadError(message, model=model, attribute=attribute, origin=origin)


async def _nothing() -> None:
    return None


def _missing_greenlet() -> BaseException:
    """The `MissingGreenlet` SQLAlchemy raises when a lazy load starts I/O from async code.

    Raised by SQLAlchemy's own helper, on an awaitable that does nothing (no I/O, no statement
    counted): the exception SQLAlchemy would have raised a moment later, for the `__cause__`.
    """
    wait = getattr(concurrency, "await_", None) or getattr(concurrency, "await_only", None)
    try:
        if wait is None:
            raise sa_exc.MissingGreenlet("greenlet_spawn has not been called; can't call await_only() here.")
        wait(_nothing())
    except sa_exc.MissingGreenlet as error:
        return error
    return sa_exc.MissingGreenlet("greenlet_spawn has not been called; can't call await_only() here.")


def _seen(model: str, attribute: str, mode: LazyLoads, *, from_identity_map: bool) -> None:
    """`warn`: count the load, and log it the first time for its model, attribute and origin."""
    origin = current_origin()
    if count_lazy_load(model, attribute, origin) == 1:
        logger.warning(
            "%s Logged once per model, attribute and controller.",
            lazy_load_message(model, attribute, origin, mode, from_identity_map=from_identity_map),
        )


def _check_statement(state: ORMExecuteState) -> None:
    """`do_orm_execute` of a statement from async code: a lazy load that needs a query fails with the explanation."""
    mode = _mode.get()
    if mode is None or not state.is_select:  # SQLAlchemy 2.0 refuses `lazy_loaded_from` on other statements
        return
    parent = state.lazy_loaded_from
    if parent is None:
        return
    model, attribute = _names(parent, state)
    if mode is LazyLoads.WARN:
        _seen(model, attribute, mode, from_identity_map=False)
    raise lazy_load_error(model, attribute, mode, from_identity_map=False) from _missing_greenlet()


def _names(parent: InstanceState[Any], state: ORMExecuteState) -> tuple[str, str]:
    """The parent's model and the relationship being loaded, from the load path."""
    model = parent.mapper.class_.__name__
    path = state.loader_strategy_path
    prop = getattr(path, "prop", None) if path is not None else None
    key = getattr(prop, "key", None)
    return model, key if isinstance(key, str) else "?"


class LazyLoadCheckedSession(Session):
    """SQLModel's `Session`, seeing the lazy loads the identity map answers without a query.

    The sync session behind every request session (and the test kit's): in a request with
    DATABASE_LAZY_LOADS `raise` such a load fails like any other; with `warn` it is logged.
    A lazy load that needs a query, from async code, is explained before it starts (`execute`).
    """

    def execute(self, statement: Any, params: Any = None, **kwargs: Any) -> Any:
        """SQLAlchemy's `execute`; from async code, with checks on, a lazy load is seen first.

        Inside SQLAlchemy's greenlet (every statement an `AsyncSession` runs) nothing is added:
        one call to `in_greenlet`.
        """
        if not in_greenlet() and _mode.get() is not None and kwargs.get("_add_event") is None:
            kwargs["_add_event"] = _check_statement
        return super().execute(statement, params, **kwargs)

    def _identity_lookup(self, *args: Any, **kwargs: Any) -> Any:
        found = super()._identity_lookup(*args, **kwargs)
        parent = kwargs.get("lazy_loaded_from")
        if parent is None or found is None or isinstance(found, enum.Enum):
            return found
        mode = _mode.get()
        if mode is None or in_greenlet():
            return found
        passive = kwargs.get("passive", PassiveFlag.PASSIVE_OFF)
        # As SQLAlchemy's lazy="raise": never for its own history and cascade lookups.
        if passive & PassiveFlag.NO_RAISE or not passive & PassiveFlag.RELATED_OBJECT_OK:
            return found
        mapper = args[0] if args else kwargs.get("mapper")
        model, attribute = parent.mapper.class_.__name__, _many_to_one_key(parent, mapper, found)
        if mode is LazyLoads.WARN:
            _seen(model, attribute, mode, from_identity_map=True)
            return found
        raise lazy_load_error(model, attribute, mode, from_identity_map=True)


def _many_to_one_key(parent: InstanceState[Any], mapper: Any, found: Any) -> str:
    """Which unloaded many-to-one of `parent` points at `found` (the identity map does not say)."""
    target = mapper if isinstance(mapper, Mapper) else None
    names = []
    for relationship in parent.mapper.relationships:
        if relationship.direction is not RelationshipDirection.MANYTOONE or relationship.key in parent.dict:
            continue
        if target is not None and not (target.isa(relationship.mapper) or relationship.mapper.isa(target)):
            continue
        names.append(relationship.key)
    if len(names) > 1:  # several point at that model: the one whose foreign key holds found's key
        names = [name for name in names if _points_at(parent, name, found)] or names
    return " or ".join(names) or "?"


def _points_at(parent: InstanceState[Any], key: str, found: Any) -> bool:
    relationship = parent.mapper.relationships[key]
    for local, remote in relationship.local_remote_pairs or ():
        try:
            here = parent.dict.get(parent.mapper.get_property_by_column(local).key)
            there = getattr(found, relationship.mapper.get_property_by_column(remote).key)
        except (sa_exc.SQLAlchemyError, AttributeError):
            return False
        if here != there:
            return False
    return True


class _Checked:
    """`checked`'s context manager (a class: cheaper per request than a generator)."""

    __slots__ = ("_counts", "_mode", "_token")

    def __init__(self, mode: LazyLoads | None, threshold: int | None) -> None:
        self._mode = mode if mode is not LazyLoads.ALLOW else None
        self._counts = StatementCounts(threshold) if threshold is not None else None
        self._token: contextvars.Token[LazyLoads | None] | None = None

    def __enter__(self) -> None:
        if self._mode is not None:
            self._token = _mode.set(self._mode)
        if self._counts is not None:
            self._counts.__enter__()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        if self._token is not None:
            try:  # noqa: SIM105 - contextlib.suppress would cost three calls per request
                _mode.reset(self._token)
            except ValueError:  # torn down from another context: leave that one alone
                pass
        if self._counts is not None:
            self._counts.__exit__(kind, error, tb)


def checked(checks: RequestChecks, *, kit: bool = False) -> contextlib.AbstractContextManager[None]:
    """`with checked(checks):` check lazy loads and count statements as `checks` say (see `checked_request`)."""
    mode = checks.lazy_loads if checks.lazy_loads_set or not kit else LazyLoads.RAISE
    return _Checked(mode, checks.n_plus_one_threshold)


def checked_request(
    engine: AsyncEngine | AsyncConnection, *, kit: bool = False
) -> contextlib.AbstractContextManager[None]:
    """`with checked_request(engine):` the request's lazy loads and statement counts are checked,
    as `engine`'s config says (nothing at all with `allow` and no N+1 threshold).

    `kit=True` (the test kit): DATABASE_LAZY_LOADS defaults to `raise` whatever ENVIRONMENT says.
    """
    checks = request_checks_of(engine)
    return contextlib.nullcontext() if checks is None else checked(checks, kit=kit)
