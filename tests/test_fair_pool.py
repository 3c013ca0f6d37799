"""FIXED_PROCESS's pool serves waiting requests in the order they came (`mountaineer_db.engines.fair_pool`)."""

import asyncio
from typing import Any

import pytest
from sqlalchemy import event, exc, text
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.util.queue import Empty

from mountaineer_db import DatabaseUnavailableError, database_session
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.engines.fair_pool import FairAsyncAdaptedQueuePool, FairQueue
from mountaineer_db.requests.dependencies import get_db
from tests.handovers import OneStep, assert_nothing_stranded, backends


def _fixed(make_config: Any, **settings: Any) -> Any:
    return make_config(
        **{"DATABASE_POOL_TYPE": "FIXED_PROCESS", "DATABASE_POOL_SIZE": 1, "DATABASE_MAX_OVERFLOW": 0, **settings}
    )


async def _until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError("timed out waiting for the pool's waiters")


async def test_waiters_get_the_connection_in_arrival_order_and_a_newcomer_never_overtakes(make_config: Any) -> None:
    """One connection, three waiters queued in order. A newcomer whose step is already scheduled when the
    holder gives the connection back (the way busy servers interleave) asks for it in that very loop
    iteration: the waiters are still served first, in order, and the newcomer last."""
    config = _fixed(make_config)
    engine = engine_for(config)
    assert isinstance(engine.pool, FairAsyncAdaptedQueuePool)
    queue = engine.pool._pool  # type: ignore[attr-defined]
    assert isinstance(queue, FairQueue)
    order: list[str] = []

    async def request(name: str) -> None:
        async with database_session(config) as session:
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
            order.append(name)

    release = asyncio.Event()
    returned: list[bool] = []
    event.listen(engine.sync_engine.pool, "checkin", lambda *_: returned.append(True))

    async def holder() -> None:
        async with database_session(config) as session:
            await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
            await release.wait()

    async def newcomer() -> None:
        while not returned:
            await asyncio.sleep(0)  # always scheduled: runs right after the step that returned it
        await request("newcomer")

    held = asyncio.ensure_future(holder())
    await _until(lambda: engine.pool.checkedout() == 1)
    waiters = []
    for index, name in enumerate(("first", "second", "third")):
        waiters.append(asyncio.ensure_future(request(name)))
        await _until(lambda n=index + 1: queue.waiting() == n)
    late = asyncio.ensure_future(newcomer())
    release.set()
    await asyncio.gather(held, *waiters, late)
    assert order == ["first", "second", "third", "newcomer"]
    assert queue.waiting() == 0 and engine.pool.checkedout() == 0


async def test_the_queue_hands_a_returned_item_to_the_oldest_waiter_not_to_a_newcomer() -> None:
    """The same at the queue level: the item is put back in one task's step while a newcomer's step is
    already scheduled; SQLAlchemy's own AsyncAdaptedQueue lets that newcomer take it."""
    queue: FairQueue[str] = FairQueue(2)
    got: list[tuple[str, str]] = []

    async def take(name: str) -> None:
        got.append((name, await greenlet_spawn(queue.get, True, None)))

    waiters = [asyncio.ensure_future(take(name)) for name in ("first", "second")]
    await asyncio.sleep(0.01)
    assert queue.waiting() == 2

    async def give_back() -> None:
        queue.put("a", False)

    giver, late = asyncio.ensure_future(give_back()), asyncio.ensure_future(take("newcomer"))
    await giver
    queue.put("b", False)
    await asyncio.sleep(0.01)
    queue.put("c", False)
    await asyncio.gather(*waiters, late)
    assert got == [("first", "a"), ("second", "b"), ("newcomer", "c")]


async def test_a_waiter_past_the_pool_timeout_gets_a_503_and_leaves_the_line(make_config: Any) -> None:
    config = _fixed(make_config, DATABASE_POOL_TIMEOUT=0.2)
    engine = engine_for(config)
    queue = engine.pool._pool  # type: ignore[attr-defined]
    async with database_session(config) as session:
        await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        with pytest.raises(DatabaseUnavailableError, match="DATABASE_POOL_TIMEOUT") as raised:
            async with database_session(config) as other:
                await other.exec(text("SELECT 1"))  # type: ignore[call-overload]
        assert isinstance(raised.value.__cause__, exc.TimeoutError)
        assert queue.waiting() == 0
    async with database_session(config) as session:  # the connection came back to the pool
        assert (await session.exec(text("SELECT 2"))).one()[0] == 2  # type: ignore[call-overload]


async def test_each_waiter_gives_up_at_its_own_deadline_with_one_timer_for_the_line() -> None:
    """The line has one timer, due at the soonest deadline. A waiter served in time is never
    expired; one that came later gives up at its own deadline, not at the first one's (the timer
    is set again for it); a later waiter with a shorter timeout gives up first, while the one
    before it keeps waiting. Elapsed times are only bounded below: a busy machine runs timers late,
    never early."""
    queue: FairQueue[str] = FairQueue(1)
    loop = asyncio.get_running_loop()
    started: dict[str, float] = {}

    async def take(name: str, timeout: float) -> tuple[str, float]:
        started[name] = loop.time()
        try:
            item = await greenlet_spawn(queue.get, True, timeout)
        except Empty:
            return "gave up", loop.time() - started[name]
        return item, loop.time() - started[name]

    first = asyncio.ensure_future(take("first", 0.4))
    await _until(lambda: queue.waiting() == 1)
    await _until(lambda: loop.time() - started["first"] >= 0.2)  # halfway to the first deadline
    second = asyncio.ensure_future(take("second", 0.4))
    await _until(lambda: queue.waiting() == 2)
    queue.put_nowait("a")
    assert (await first)[0] == "a"
    outcome, waited = await second
    assert outcome == "gave up"
    assert waited >= 0.39, f"gave up after {waited:.3f} s: at the first waiter's deadline, not its own"
    assert queue.waiting() == 0

    patient = asyncio.ensure_future(take("patient", 30))
    await _until(lambda: queue.waiting() == 1)
    hasty = asyncio.ensure_future(take("hasty", 0.1))
    outcome, waited = await hasty
    assert (outcome, waited >= 0.09) == ("gave up", True)
    assert not patient.done() and queue.waiting() == 1
    queue.put_nowait("b")
    assert (await patient)[0] == "b"
    queue.put_nowait("c")  # nobody waits: it stays idle
    assert (queue.waiting(), queue.qsize()) == (0, 1)


async def test_a_cancelled_waiter_leaves_the_line_and_loses_no_connection(make_config: Any) -> None:
    config = _fixed(make_config)
    engine = engine_for(config)
    queue = engine.pool._pool  # type: ignore[attr-defined]

    async def request() -> int:
        async with database_session(config) as session:
            return int((await session.exec(text("SELECT 3"))).one()[0])  # type: ignore[call-overload]

    async with database_session(config) as session:
        await session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        doomed = asyncio.ensure_future(request())
        await _until(lambda: queue.waiting() == 1)
        doomed.cancel()
        with pytest.raises(asyncio.CancelledError):
            await doomed
        assert queue.waiting() == 0
    assert await request() == 3
    assert engine.pool.checkedout() == 0 and queue.qsize() == 1


async def test_an_item_handed_to_a_waiter_cancelled_before_it_ran_goes_to_the_next_waiter() -> None:
    """The race the hand-off must survive: the item is set on the waiter's future, then its task is
    cancelled before it resumes. The item is passed on, not lost."""
    queue: FairQueue[str] = FairQueue(1)
    first = asyncio.ensure_future(greenlet_spawn(queue.get, True, None))
    second = asyncio.ensure_future(greenlet_spawn(queue.get, True, None))
    await _until(lambda: queue.waiting() == 2)
    queue.put_nowait("connection")
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 10) == "connection"
    assert queue.waiting() == 0 and queue.qsize() == 0


async def _taken(engine: Any) -> Any:
    """A connection checked out of `engine`'s pool, with no transaction open (so giving it back is no I/O)."""
    connection = await engine.connect().start()
    await connection.execute(text("SELECT 1"))
    await connection.commit()
    return connection


async def test_a_waiter_cancelled_after_its_hand_over_while_another_connection_comes_back_strands_nothing(
    make_config: Any, pg_server: Any, test_database: str
) -> None:
    """Issue 31, row 1. Pool size 1, overflow 1, both connections taken, one request waiting. In one
    loop step: the first connection comes back (handed to the waiter), the waiter is cancelled before
    it runs, the second comes back (into the idle queue, now full). The waiter gets its
    CancelledError, not `sqlalchemy.util.queue.Full`; the unused connection goes back the way any
    surplus connection does (closed, overflow given back); two connections at once work again."""
    name = "mdb-handover-pool"
    config = _fixed(make_config, DATABASE_MAX_OVERFLOW=1, DATABASE_APPLICATION_NAME=name)
    engine = await get_db(config=config)
    queue = engine.pool._pool  # type: ignore[attr-defined]
    first, second = await _taken(engine), await _taken(engine)

    async def request() -> int:
        async with database_session(config) as session:
            return int((await session.exec(text("SELECT 3"))).one()[0])  # type: ignore[call-overload]

    waiter = asyncio.ensure_future(request())
    await _until(lambda: queue.waiting() == 1)
    with OneStep():
        await first.close()
        waiter.cancel()
        await second.close()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await assert_nothing_stranded(engine, pg_server, test_database, name)
    assert engine.pool.checkedin() == 1 and engine.pool.overflow() == 0

    async def hold_one(release: asyncio.Event) -> int:
        async with database_session(config) as session:
            value = int((await session.exec(text("SELECT 4"))).one()[0])  # type: ignore[call-overload]
            await release.wait()
            return value

    release = asyncio.Event()
    both = [asyncio.ensure_future(hold_one(release)) for _ in range(2)]
    await _until(lambda: engine.pool.checkedout() == 2)
    release.set()
    assert await asyncio.gather(*both) == [4, 4]
    await assert_nothing_stranded(engine, pg_server, test_database, name)


async def test_a_waiter_cancelled_after_its_hand_over_passes_the_connection_to_the_next_waiter(
    make_config: Any, pg_server: Any, test_database: str
) -> None:
    """The same window with another request waiting behind: in one loop step the connection comes back
    (handed to the first waiter) and the first waiter is cancelled. The connection goes on to the second
    waiter, through the pool's own return path; nothing is closed, nothing stranded."""
    name = "mdb-handover-next"
    config = _fixed(make_config, DATABASE_APPLICATION_NAME=name)
    engine = await get_db(config=config)
    queue = engine.pool._pool  # type: ignore[attr-defined]
    holder = await _taken(engine)
    backend = (await backends(pg_server, test_database, name))[0]["pid"]

    async def request() -> int:
        async with database_session(config) as session:
            return int((await session.exec(text("SELECT pg_backend_pid()"))).one()[0])  # type: ignore[call-overload]

    first = asyncio.ensure_future(request())
    await _until(lambda: queue.waiting() == 1)
    second = asyncio.ensure_future(request())
    await _until(lambda: queue.waiting() == 2)
    with OneStep():
        await holder.close()
        first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await asyncio.wait_for(second, 10) == backend, "the second waiter got the same connection"
    await assert_nothing_stranded(engine, pg_server, test_database, name)
