"""After-commit hooks: `on_commit(session, callback)` runs `callback` once the data is committed.

```python
from mountaineer_db import on_commit

@sideeffect
async def add_todo(self, payload: NewTodo, session: SessionDep) -> None:
    todo = Todo(description=payload.description)
    session.add(todo)
    on_commit(session, lambda: notify_watchers(payload.description))  # sync or async
    await session.commit()   # the hook runs here, after COMMIT succeeded
```

The rules, all enforced with SQLAlchemy's public session events (so they hold for
`await session.commit()`, `async with session.begin():`, `await transaction.commit()` and a
commit inside `run_sync` alike):

- a hook belongs to the innermost transaction open when it is registered: the session's
  transaction, or the savepoint (`begin_nested()`) in progress. Registered while the session
  has no transaction (right after a commit), it begins one, as the next statement would;
- a savepoint that is released hands its hooks to the enclosing transaction; a savepoint
  that is rolled back drops them, and so does a rollback or close of the whole transaction
  (except the rollback of a replayed first statement, which loses nothing: `hooks_carried_over`);
- when the outermost transaction commits, its hooks run in registration order, inside the
  `commit()` call, after COMMIT succeeded and after the session has left the transaction;
- a hook that raises stops the rest and its exception propagates out of `commit()`; the data
  stays committed. With `robust=True` the failure is logged (the hook's name and the error,
  never its arguments) and the remaining hooks still run.

A session joined to a transaction it did not begin (bound to a connection already in a
transaction, as the test kit's sessions are) never really commits: its hooks are handed to
`mountaineer_db.testing.captured_on_commit` when one is active, and otherwise dropped.
"""

import contextlib
import contextvars
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy.util
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.util.concurrency import in_greenlet

__all__ = ["CommitHook", "capturing", "describe_callback", "hooks_carried_over", "on_commit"]

logger = logging.getLogger("mountaineer_db")

CommitHook = Callable[[], Awaitable[object] | object]
"""What `on_commit` accepts: a callable taking no arguments, sync or async."""

# SQLAlchemy's bridge from the sync session (which runs inside a greenlet during an
# AsyncSession call) back to the event loop: `await_` in 2.1+, `await_only` in 2.0 (2.1 keeps
# it as a deprecated alias). Both are exported by `sqlalchemy.util`; tests/test_commit_hooks.py
# has the canary.
_await: Callable[[Awaitable[Any]], Any] = getattr(sqlalchemy.util, "await_", None) or sqlalchemy.util.await_only

_INFO_KEY = "mountaineer_db.commit_hooks"


@dataclass(slots=True)
class _Hook:
    callback: CommitHook
    robust: bool
    order: int


@dataclass(slots=True)
class _SessionHooks:
    """The hooks of one session, held by the transaction they belong to."""

    by_transaction: dict[SessionTransaction, list[_Hook]] = field(default_factory=dict)
    committed: set[SessionTransaction] = field(default_factory=set)
    counter: Iterator[int] = field(default_factory=itertools.count)


@dataclass(slots=True)
class _Capture:
    execute: bool
    callbacks: list[CommitHook] = field(default_factory=list)


_capture: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar(
    "mountaineer_db_on_commit_capture", default=None
)


def on_commit(session: AsyncSession | Session, callback: CommitHook, *, robust: bool = False) -> None:
    """Run `callback` (sync, or async: it is awaited) after `session`'s outermost transaction commits.

    Dropped if that transaction (or the savepoint it was registered in) rolls back. Hooks run
    inside the `commit()` call, in registration order, once COMMIT has succeeded; a hook's
    exception propagates out of `commit()` (the data stays committed) and skips the hooks after
    it, unless `robust=True`, which logs the failure and carries on.

    ```python
    session.add(order)
    on_commit(session, partial(send_receipt, order_id))          # async def send_receipt(...)
    on_commit(session, lambda: metrics.increment("orders"), robust=True)
    await session.commit()
    ```

    Do slow work (e-mail, webhooks) by handing it to a queue or a background task from the
    hook: the request waits for its hooks. For database work in a hook, open a new
    `database_session()`.
    """
    if not callable(callback):
        raise TypeError(f"on_commit() needs a callable taking no arguments, not {type(callback).__name__}.")
    sync_session = session.sync_session if isinstance(session, AsyncSession) else session
    hooks = _hooks_of(sync_session)
    hook = _Hook(callback, robust, next(hooks.counter))
    transaction = sync_session.get_nested_transaction() or sync_session.get_transaction()
    if transaction is None:
        # What the session's next statement would do (no I/O): a rollback must find the hook.
        transaction = sync_session.begin()
    hooks.by_transaction.setdefault(transaction, []).append(hook)


@contextlib.contextmanager
def hooks_carried_over(session: Session) -> Iterator[None]:
    """Keep the hooks of `session`'s open transaction across a rollback in the block that loses
    nothing: the transaction is run again from its start (a replayed first statement).

    The hooks are taken off the transaction before the block, so its rollback drops none, and
    given to the session's next transaction after it (begun here, as the next statement would,
    when the block left none). If the block raises, they are dropped with what it rolled back.
    """
    hooks = session.info.get(_INFO_KEY)
    if not isinstance(hooks, _SessionHooks) or not hooks.by_transaction:
        yield
        return
    carried = sorted((hook for own in hooks.by_transaction.values() for hook in own), key=lambda hook: hook.order)
    hooks.by_transaction.clear()
    yield
    transaction = session.get_nested_transaction() or session.get_transaction() or session.begin()
    hooks.by_transaction.setdefault(transaction, []).extend(carried)


def _hooks_of(session: Session) -> _SessionHooks:
    """The session's hook registry, with its event listeners installed on first use."""
    hooks = session.info.get(_INFO_KEY)
    if isinstance(hooks, _SessionHooks):
        return hooks
    hooks = session.info[_INFO_KEY] = _SessionHooks()
    event.listen(session, "after_commit", _after_commit)
    event.listen(session, "after_transaction_end", _after_transaction_end)
    return hooks


def _after_commit(session: Session) -> None:
    # Dispatched for the outermost transaction and for savepoints, while the one committing
    # is still the session's innermost.
    hooks: _SessionHooks = session.info[_INFO_KEY]
    committing = session.get_nested_transaction() or session.get_transaction()
    if committing is not None:
        hooks.committed.add(committing)


def _holder(transaction: SessionTransaction) -> SessionTransaction | None:
    """The transaction a released savepoint's hooks move to: the next savepoint out, or the root."""
    parent = transaction.parent
    while parent is not None and not parent.nested and parent.parent is not None:
        parent = parent.parent  # skip SQLAlchemy's internal subtransactions (flush)
    return parent


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    hooks: _SessionHooks = session.info[_INFO_KEY]
    own = hooks.by_transaction.pop(transaction, None)
    committed = transaction in hooks.committed
    hooks.committed.discard(transaction)
    if not own:
        return
    if not committed:
        logger.debug("Dropped %d on_commit hook(s): their transaction was rolled back.", len(own))
        return
    if transaction.parent is not None:  # a released savepoint: the enclosing transaction decides
        holder = _holder(transaction)
        if holder is not None:
            hooks.by_transaction.setdefault(holder, []).extend(own)
        return
    _run(session, sorted(own, key=lambda hook: hook.order))


def _commits_for_real(session: Session) -> bool:
    """False for a session joined to a transaction it did not begin: its commit ended a savepoint."""
    bind = session.bind
    return not (isinstance(bind, Connection) and bind.in_transaction())


def _run(session: Session, hooks: list[_Hook]) -> None:
    capture = _capture.get()
    if capture is not None:
        capture.callbacks.extend(hook.callback for hook in hooks)
    if not _commits_for_real(session) and (capture is None or not capture.execute):
        if capture is None:
            logger.debug("Dropped %d on_commit hook(s): the session never really commits (test kit).", len(hooks))
        return
    for hook in hooks:
        try:
            result = hook.callback()
            if inspect.isawaitable(result):
                _await_hook(result, hook)
        except Exception as error:
            if not hook.robust:
                raise
            logger.error(
                "on_commit hook %s failed (%s: %s); the remaining hooks still run.",
                describe_callback(hook.callback),
                type(error).__name__,
                error,
                exc_info=error,
            )


def _await_hook(awaitable: Awaitable[object], hook: _Hook) -> None:
    if not in_greenlet():
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # never awaited: close it rather than leak a warning
        raise RuntimeError(
            f"The async on_commit hook {describe_callback(hook.callback)} cannot run: the session was "
            "committed synchronously. Commit through the AsyncSession (`await session.commit()`)."
        )
    _await(awaitable)


def describe_callback(callback: object) -> str:
    """A hook's name for log lines: its qualified name, never the arguments bound to it."""
    target = callback
    while hasattr(target, "func"):  # functools.partial and friends hold arguments: skip them
        target = target.func
    name = getattr(target, "__qualname__", None) or type(target).__qualname__
    module = getattr(target, "__module__", None)
    return f"{module}.{name}" if module else str(name)


@contextlib.contextmanager
def capturing(*, execute: bool) -> Iterator[list[CommitHook]]:
    """Collect the hooks of every commit in this context; see `testing.captured_on_commit`."""
    capture = _Capture(execute=execute)
    token = _capture.set(capture)
    try:
        yield capture.callbacks
    finally:
        with contextlib.suppress(ValueError):  # left from another context: leave that one alone
            _capture.reset(token)
