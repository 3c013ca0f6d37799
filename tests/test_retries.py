"""`run_in_transaction`: real serialization failures and deadlocks are retried; nothing else is."""

import asyncio
import itertools
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError

from mountaineer_db import AsyncSession, DatabaseConfig, database_session, on_commit, run_in_transaction
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.requests import retries
from mountaineer_db.requests.retries import sqlstate_of

WARNING_PREFIX = "mountaineer_db"


@pytest.fixture
async def direct(make_config: Callable[..., DatabaseConfig]) -> DatabaseConfig:
    config = make_config()
    async with engine_for(config).begin() as connection:
        await connection.execute(text("DROP TABLE IF EXISTS retry_doctor, retry_counter"))
        await connection.execute(text("CREATE TABLE retry_doctor (name text PRIMARY KEY, on_call boolean NOT NULL)"))
        await connection.execute(text("INSERT INTO retry_doctor VALUES ('alice', true), ('bob', true)"))
        await connection.execute(text("CREATE TABLE retry_counter (id int PRIMARY KEY, n int NOT NULL)"))
        await connection.execute(text("INSERT INTO retry_counter VALUES (1, 0), (2, 0)"))
    return config


def _retry_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == WARNING_PREFIX and r.levelno == logging.WARNING]


_retry_in_ms = re.compile(r"retrying in (\d+) ms")


def _without_delay(message: str) -> str:
    """The warning with its jittered delay replaced by N."""
    head, _, tail = message.partition("retrying in ")
    return head + "retrying in N" + tail[tail.index(" ms") :]


async def _write_skew(config: DatabaseConfig) -> tuple[dict[str, int], list[str], list[tuple[str, bool]]]:
    """Two doctors each leave if the other is still on call: a textbook SERIALIZABLE conflict.

    Both read before either writes; bob writes only once alice's transaction has committed,
    so bob's first attempt is the one PostgreSQL aborts. Returns attempts, hooks run, and rows.
    """
    attempts = {"alice": 0, "bob": 0}
    hooks_ran: list[str] = []
    both_read = asyncio.Barrier(2)
    alice_committed = asyncio.Event()

    def leave(name: str) -> Callable[[AsyncSession], Any]:
        async def take_leave(session: AsyncSession) -> int:
            attempts[name] += 1
            on_call = (await session.exec(text("SELECT count(*) FROM retry_doctor WHERE on_call"))).one()[0]  # type: ignore[call-overload]
            if attempts[name] == 1:
                await both_read.wait()
                if name == "bob":
                    await alice_committed.wait()
                else:
                    on_commit(session, alice_committed.set)
            if on_call >= 2:
                await session.exec(  # type: ignore[call-overload]
                    text("UPDATE retry_doctor SET on_call = false WHERE name = :name").bindparams(name=name)
                )
            on_commit(session, lambda: hooks_ran.append(f"{name} attempt {attempts[name]}"))
            return int(on_call)

        take_leave.__qualname__ = f"take_leave_{name}"
        return take_leave

    results = await asyncio.wait_for(
        asyncio.gather(
            run_in_transaction(leave("alice"), isolation_level="SERIALIZABLE", config=config),
            run_in_transaction(leave("bob"), isolation_level="serializable", config=config),
        ),
        30,
    )
    assert results == [2, 1], "bob's retry saw alice's committed leave"
    async with engine_for(config).connect() as connection:
        rows = [(row[0], row[1]) for row in await connection.execute(text("SELECT * FROM retry_doctor ORDER BY name"))]
    return attempts, hooks_ran, rows


async def test_a_serialization_failure_is_retried_and_the_retry_sees_the_committed_data(
    direct: DatabaseConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mountaineer_db")
    attempts, hooks_ran, rows = await _write_skew(direct)
    assert attempts == {"alice": 1, "bob": 2}
    assert rows == [("alice", False), ("bob", True)], "one doctor stays on call: the conflict was resolved"
    assert hooks_ran == ["alice attempt 1", "bob attempt 2"], "the aborted attempt's hooks never ran"
    [warning] = _retry_warnings(caplog)
    assert _without_delay(warning) == (
        "tests.test_retries.take_leave_bob hit a serialization failure "
        "(SQLSTATE 40001); rolled back, retrying in N ms (retry 1 of 3)."
    )
    errors = [r for r in caplog.records if r.name == "mountaineer_db" and r.levelno >= logging.ERROR]
    assert errors == [], "a retried attempt is not logged as a failed transaction"


@pytest.mark.pgbouncer
async def test_through_pgbouncer_a_serialization_failure_is_retried(
    direct: DatabaseConfig, bouncer_config: Callable[..., DatabaseConfig], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mountaineer_db")
    attempts, hooks_ran, rows = await _write_skew(bouncer_config())
    assert attempts == {"alice": 1, "bob": 2}
    assert rows == [("alice", False), ("bob", True)]
    assert hooks_ran == ["alice attempt 1", "bob attempt 2"]
    assert len(_retry_warnings(caplog)) == 1


async def _deadlock(config: DatabaseConfig) -> dict[str, int]:
    """Two transactions lock rows 1 and 2 in opposite orders; the victim is retried.

    Both take their first lock before either asks for its second. The victim is chosen by
    giving its session the shorter deadlock_timeout, so its deadlock check runs first.
    """
    attempts = {"first": 0, "second": 0}
    both_locked = asyncio.Barrier(2)

    def bump(name: str, order: tuple[int, int], deadlock_timeout: str) -> Callable[[AsyncSession], Any]:
        async def work(session: AsyncSession) -> str:
            attempts[name] += 1
            await session.exec(text(f"SET LOCAL deadlock_timeout = '{deadlock_timeout}'"))  # type: ignore[call-overload]
            for position, row in enumerate(order):
                await session.exec(text("UPDATE retry_counter SET n = n + 1 WHERE id = :id").bindparams(id=row))  # type: ignore[call-overload]
                if position == 0 and attempts[name] == 1:
                    await both_locked.wait()
            return name

        return work

    results = await asyncio.wait_for(
        asyncio.gather(
            run_in_transaction(bump("first", (1, 2), "10s"), config=config),
            run_in_transaction(bump("second", (2, 1), "50ms"), config=config),
        ),
        30,
    )
    assert results == ["first", "second"]
    async with engine_for(config).connect() as connection:
        counters = {row[0]: row[1] for row in await connection.execute(text("SELECT id, n FROM retry_counter"))}
    assert counters == {1: 2, 2: 2}, "both transactions applied exactly once"
    return attempts


async def test_a_deadlock_is_retried(direct: DatabaseConfig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mountaineer_db")
    assert await _deadlock(direct) == {"first": 1, "second": 2}
    [warning] = _retry_warnings(caplog)
    assert "work hit a deadlock (SQLSTATE 40P01); rolled back, retrying in " in warning
    assert warning.endswith(" ms (retry 1 of 3).")


@pytest.mark.pgbouncer
async def test_through_pgbouncer_a_deadlock_is_retried(
    direct: DatabaseConfig, bouncer_config: Callable[..., DatabaseConfig]
) -> None:
    assert await _deadlock(bouncer_config()) == {"first": 1, "second": 2}


FORCED_SERIALIZATION_FAILURE = "DO $$ BEGIN RAISE EXCEPTION 'forced' USING ERRCODE = 'serialization_failure'; END $$"


async def test_when_the_retries_are_used_up_the_last_error_propagates(
    direct: DatabaseConfig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mountaineer_db")
    attempts: list[float] = []
    hooks_ran: list[int] = []

    async def always_conflicts(session: AsyncSession) -> None:
        attempts.append(asyncio.get_running_loop().time())
        on_commit(session, lambda: hooks_ran.append(1))
        await session.exec(text(FORCED_SERIALIZATION_FAILURE))  # type: ignore[call-overload]

    with pytest.raises(DBAPIError) as caught:
        await run_in_transaction(always_conflicts, retries=2, config=direct)
    assert sqlstate_of(caught.value) == "40001"
    assert caught.value.__notes__ == [
        "run_in_transaction: gave up on tests.test_retries.test_when_the_retries_are_used_up_the_last_error_"
        "propagates.<locals>.always_conflicts after 3 attempts."
    ]
    assert len(attempts) == 3 and hooks_ran == []
    waits = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert 0.0125 <= waits[0] < 0.5 and 0.025 <= waits[1] < 0.5, f"jittered backoff, bounded: {waits}"
    retried = [_without_delay(w).rsplit("(", 1)[1] for w in _retry_warnings(caplog)]
    assert retried == ["retry 1 of 2).", "retry 2 of 2)."]
    errors = [r for r in caplog.records if r.name == "mountaineer_db" and r.levelno >= logging.ERROR]
    assert len(errors) == 1, "the final failure is logged once, like any failed transaction"


class _RecordedWaits:
    """`asyncio` as mountaineer_db.requests.retries sees it, except that `sleep` records the wait instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def sleep(self, delay: float) -> None:
        self.waits.append(delay)
        await asyncio.sleep(0)


async def test_waits_double_from_25_ms_and_never_exceed_one_second_however_many_retries(
    direct: DatabaseConfig, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/transactions.md: half to all of 25 ms, 50 ms, 100 ms, ... and never more than 1 s."""
    caplog.set_level(logging.INFO, logger="mountaineer_db")
    clock = _RecordedWaits()
    monkeypatch.setattr(retries, "asyncio", clock)

    async def always_conflicts(session: AsyncSession) -> None:
        await session.exec(text(FORCED_SERIALIZATION_FAILURE))  # type: ignore[call-overload]

    with pytest.raises(DBAPIError):
        await run_in_transaction(always_conflicts, retries=12, config=direct)
    ceilings = [min(1.0, 0.025 * 2**retry) for retry in range(12)]
    assert len(clock.waits) == 12
    for wait, ceiling in zip(clock.waits, ceilings, strict=True):
        assert ceiling / 2 <= wait <= ceiling, (
            f"{wait:.3f}s is not within [{ceiling / 2:g}, {ceiling:g}]: {clock.waits}"
        )
    logged = [int(_retry_in_ms.search(warning)[1]) for warning in _retry_warnings(caplog)]  # type: ignore[index]
    assert logged == [round(wait * 1000) for wait in clock.waits], "the warnings say the waits taken"


async def test_nothing_is_retried_once_the_attempt_has_committed(direct: DatabaseConfig) -> None:
    attempts: list[str] = []

    async def commits_then_conflicts(session: AsyncSession) -> None:
        attempts.append("commits then conflicts")
        await session.exec(text("UPDATE retry_counter SET n = n + 1 WHERE id = 1"))  # type: ignore[call-overload]
        await session.commit()
        await session.exec(text(FORCED_SERIALIZATION_FAILURE))  # type: ignore[call-overload]

    async def hook_conflicts(session: AsyncSession) -> None:
        attempts.append("hook conflicts")
        await session.exec(text("UPDATE retry_counter SET n = n + 1 WHERE id = 1"))  # type: ignore[call-overload]

        async def hook() -> None:
            await run_in_transaction(
                lambda other: other.exec(text(FORCED_SERIALIZATION_FAILURE)), retries=0, config=direct
            )

        on_commit(session, hook)

    with pytest.raises(DBAPIError) as partly_committed:
        await run_in_transaction(commits_then_conflicts, config=direct)
    with pytest.raises(DBAPIError) as failed_hook:
        await run_in_transaction(hook_conflicts, config=direct)
    assert attempts == ["commits then conflicts", "hook conflicts"], "each ran once"
    assert partly_committed.value.__notes__[-1].startswith("run_in_transaction: not retried, ")
    assert failed_hook.value.__notes__[-1].endswith("hook_conflicts had already committed.")
    async with engine_for(direct).connect() as connection:
        assert (await connection.execute(text("SELECT n FROM retry_counter WHERE id = 1"))).scalar_one() == 2


async def test_other_errors_propagate_at_once(direct: DatabaseConfig, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mountaineer_db")
    attempts: list[str] = []

    async def duplicate(session: AsyncSession) -> None:
        attempts.append("duplicate")
        await session.exec(text("INSERT INTO retry_doctor VALUES ('alice', false)"))  # type: ignore[call-overload]

    async def buggy(session: AsyncSession) -> None:
        attempts.append("buggy")
        raise KeyError("not a database error")

    with pytest.raises(IntegrityError):
        await run_in_transaction(duplicate, config=direct)
    with pytest.raises(KeyError):
        await run_in_transaction(buggy, config=direct)
    assert attempts == ["duplicate", "buggy"]
    assert _retry_warnings(caplog) == []


async def test_returns_the_result_commits_and_uses_the_isolation_level(direct: DatabaseConfig) -> None:
    async def work(session: AsyncSession) -> str:
        await session.exec(text("UPDATE retry_counter SET n = 7 WHERE id = 1"))  # type: ignore[call-overload]
        return str((await session.exec(text("SHOW transaction_isolation"))).one()[0])  # type: ignore[call-overload]

    assert await run_in_transaction(work, isolation_level="REPEATABLE READ", config=direct) == "repeatable read"
    assert await run_in_transaction(work, config=direct) == "read committed"
    async with engine_for(direct).connect() as connection:
        assert (await connection.execute(text("SELECT n FROM retry_counter WHERE id = 1"))).scalar_one() == 7


async def test_uses_the_registered_app_config_by_default(direct: DatabaseConfig) -> None:
    from mountaineer import ConfigBase

    class RetryAppConfig(DatabaseConfig, ConfigBase):
        pass

    RetryAppConfig(SQLALCHEMY_DATABASE_URI=direct.SQLALCHEMY_DATABASE_URI)

    async def database_name(session: AsyncSession) -> str:
        return str((await session.exec(text("SELECT current_database()"))).one()[0])  # type: ignore[call-overload]

    assert await run_in_transaction(database_name) == direct.database_url.database


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"isolation_level": "SNAPSHOT"},
            "isolation_level='SNAPSHOT' is not a transaction isolation level; use one of 'SERIALIZABLE', "
            "'REPEATABLE READ', 'READ COMMITTED', 'READ UNCOMMITTED'.",
        ),
        ({"retries": -1}, "retries=-1: give the number of retries after the first attempt, 0 or more."),
    ],
)
async def test_bad_arguments_are_refused_before_any_work(kwargs: dict[str, Any], message: str) -> None:
    async def never(session: AsyncSession) -> None:
        raise AssertionError("must not run")

    with pytest.raises(ValueError) as caught:
        await run_in_transaction(never, **kwargs)
    assert str(caught.value) == message


@pytest.mark.parametrize("pool", ["NULL", "FIXED_PROCESS"])
async def test_every_transaction_of_an_attempt_runs_at_the_isolation_level(
    make_config: Callable[..., DatabaseConfig], pool: str
) -> None:
    """Issue 31, row 2: `work` commits part-way, then rolls back part-way; each transaction after that
    (the last one ended by run_in_transaction's own commit) begins at the level asked for too. The
    level does not outlive the call on a pooled connection."""
    sizes = {"DATABASE_POOL_SIZE": 1, "DATABASE_MAX_OVERFLOW": 0} if pool == "FIXED_PROCESS" else {}
    config = make_config(DATABASE_POOL_TYPE=pool, **sizes)
    levels: list[str] = []

    async def show(session: AsyncSession) -> None:
        levels.append(str((await session.exec(text("SHOW transaction_isolation"))).one()[0]))  # type: ignore[call-overload]

    async def work(session: AsyncSession) -> None:
        await show(session)
        await session.commit()
        await show(session)
        await session.rollback()
        await show(session)  # committed by run_in_transaction once `work` returns

    await run_in_transaction(work, isolation_level="SERIALIZABLE", config=config)
    assert levels == ["serializable"] * 3
    levels.clear()
    async with database_session(config) as session:
        await show(session)
    assert levels == ["read committed"]
