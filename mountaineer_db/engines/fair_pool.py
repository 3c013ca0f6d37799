"""`FIXED_PROCESS`'s pool: SQLAlchemy's asyncio queue pool, with waiters served first come, first served.

SQLAlchemy's `AsyncAdaptedQueuePool` keeps its idle connections in an `asyncio.Queue`. When
a connection comes back, the queue wakes its oldest waiter, but the connection stays in the
queue until that waiter runs: a request arriving meanwhile takes it (SQLAlchemy 2.1 and
`asyncio.Queue.get()` both look for a free item before waiting), and the woken waiter goes
back to the end of the line. Under overload some requests are overtaken again and again:
in `bench/bench_http.py --scale` (4 workers, 500 clients) p99 was 2.6 s and the slowest
request 5.9 s, where asyncpg's own pool had 0.73 s and 1.6 s.

`FairQueue` hands a returned connection straight to the oldest waiter, and a newcomer waits
whenever someone already does. A wait costs a future, awaited from SQLAlchemy's greenlet; the
pool timeout is one timer for the whole line, due at the soonest deadline (SQLAlchemy's
`wait_for` started a timeout per wait). Everything else is SQLAlchemy's
`QueuePool`: sizes, overflow, timeouts (`sqlalchemy.exc.TimeoutError`), events, recycling.

A hand-over has one window: the connection is set on the waiter's future, and the waiter's
task is cancelled before it runs. The waiter then gives the connection back through the
pool's own return path (`QueuePool._do_return_conn`): to the next waiter, else idle, else,
when other connections came back meanwhile and the pool is full, closed with its overflow
slot released. The waiter's `CancelledError` propagates unchanged.

What this relies on in SQLAlchemy (2.0 and 2.1, `sqlalchemy/pool/impl.py`): `QueuePool`
builds its queue from the class attribute `_queue_class(pool_size, use_lifo=...)` and calls
`get(block, timeout)`, `put(item, False)`, `qsize()` and `maxsize` on it; `get` raises
`sqlalchemy.util.queue.Empty` when nothing came in time; `_do_return_conn(record)` puts a
record back or, on `Full`, closes it and releases its overflow slot. `tests/test_compat.py` has the canary.
"""

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import sqlalchemy.util
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util.queue import Empty, Full, QueueCommon

__all__ = ["FairAsyncAdaptedQueuePool", "FairQueue"]

_T = TypeVar("_T")

# SQLAlchemy's way for sync code inside its greenlet to await: `await_` in 2.1, `await_only` in 2.0.
_await: Callable[[Awaitable[Any]], Any] = getattr(sqlalchemy.util, "await_", None) or sqlalchemy.util.await_only


_INFINITY = float("inf")
# A deadline this close counts as reached: the loop may run a timer a clock tick early.
_EARLY = 0.001


class FairQueue(QueueCommon[_T]):
    """A FIFO hand-off queue for one event loop: items go to waiters in the order they came."""

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        self.maxsize = maxsize
        self.use_lifo = use_lifo  # which idle connection a newcomer gets; waiters stay FIFO
        self._items: deque[_T] = deque()
        # The waiters in arrival order, each with the loop time at which it gives up (inf: never).
        self._waiters: deque[tuple[asyncio.Future[_T], float]] = deque()
        # One timer for all the waiters' timeouts, due at the soonest deadline (see `_expire_due`).
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _INFINITY
        # Where an item handed to a waiter that never used it goes (cancelled before it ran).
        # The pool sets its own return path, which closes a connection the pool has no room for.
        self.return_unused: Callable[[_T], None] = self.put_nowait

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._items)

    def qsize(self) -> int:
        return len(self._items)

    def waiting(self) -> int:
        """How many callers wait for an item (for tests and diagnostics)."""
        return sum(1 for waiter, _ in self._waiters if not waiter.done())

    def put_nowait(self, item: _T) -> None:
        while self._waiters:
            waiter, _ = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return
        if self.full():
            raise Full()
        self._items.append(item)

    def put(self, item: _T, block: bool = True, timeout: float | None = None) -> None:
        # The pool only puts back what it took out, so there is always room: never blocks.
        self.put_nowait(item)

    def get_nowait(self) -> _T:
        if not self._items:
            raise Empty()
        return self._items.pop() if self.use_lifo else self._items.popleft()

    def get(self, block: bool = True, timeout: float | None = None) -> _T:
        if self._items or not block:
            return self.get_nowait()  # items are only ever idle while nobody waits
        # A wait is a future in the line, awaited from SQLAlchemy's greenlet: no coroutine, no
        # timer of its own (the queue's one timer expires it, `_expire_due`).
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_T] = loop.create_future()
        deadline = _INFINITY if timeout is None else loop.time() + timeout
        entry = (waiter, deadline)
        self._waiters.append(entry)
        if deadline < self._timer_at:
            self._arm(loop, deadline)
        try:
            result: _T = _await(waiter)
        except BaseException:
            if not waiter.done():
                waiter.cancel()
            if waiter.cancelled():
                # Cancelled in line: leave it (unless the timer already dropped it). Only then:
                # `deque.remove` of an absent item formats its repr into the error, ~15 µs.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
            elif waiter.exception() is None:
                # Cancelled (or interrupted) after an item was handed over, before this waiter
                # ran: give it back as if it had been used. Here, in SQLAlchemy's greenlet,
                # where the pool's return path may close a surplus connection.
                self.return_unused(waiter.result())
            raise  # expired: `_expire_due` set `Empty` on it and dropped it from the line
        return result

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = loop.call_at(when, self._expire_due, loop)

    def _expire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """The timer: every waiter past its deadline gets `Empty` (SQLAlchemy's pool timeout) and
        leaves the line; the timer is set again for the soonest deadline left.

        One timer for all: with the pool's one timeout, deadlines come in arrival order, so while
        waiters are served in time it fires about once per timeout, not once per wait.
        """
        self._timer, self._timer_at = None, _INFINITY
        now = loop.time() + _EARLY
        waiting: deque[tuple[asyncio.Future[_T], float]] = deque()
        soonest = _INFINITY
        for entry in self._waiters:
            waiter, deadline = entry
            if waiter.done():
                continue  # handed over, or cancelled: its own `get` is done with the line
            if deadline <= now:
                waiter.set_exception(Empty())
                continue
            waiting.append(entry)
            soonest = min(soonest, deadline)
        self._waiters = waiting
        if soonest < _INFINITY:
            self._arm(loop, soonest)


class FairAsyncAdaptedQueuePool(AsyncAdaptedQueuePool):
    """SQLAlchemy's `AsyncAdaptedQueuePool` with `FairQueue`: no waiter is overtaken."""

    _queue_class = FairQueue  # type: ignore[assignment]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        queue = self._pool
        # The idle connections (empty: a checkout may have to wait), read without a call per checkout.
        self._mdb_idle: deque[Any] | None = queue._items if isinstance(queue, FairQueue) else None
        if isinstance(queue, FairQueue):
            # A connection handed to a waiter cancelled before it ran comes back like any other:
            # to the next waiter, else idle, else (the pool is full) closed, overflow given back.
            queue.return_unused = self._do_return_conn
