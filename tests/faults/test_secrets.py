"""Scenario 8: the password appears nowhere.

A representative workload (successes, handler errors, lost connections, connect failures,
timeouts; NULL and FIXED_PROCESS pools; direct and through PgBouncer) runs with the cluster's
distinctive password (it contains `@:/%# `) and with a distinctive wrong one. Neither may
appear, raw or percent-encoded, in: log records of every logger at DEBUG with SQL echo on
(tracebacks included), reprs and dumps of config, URL and engine, exception messages and
reprs, error responses, and tracebacks rendered with every frame's local variables over the
whole exception chain.
"""

import asyncio
import logging
import re
import traceback
import urllib.parse
from collections.abc import Callable

import pytest
from mountaineer.config import register_config, unregister_config
from sqlalchemy import text

from mountaineer_db import database_session
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.servers.cluster import PostgresCluster, free_port
from mountaineer_db.servers.pgbouncer import PgBouncer

from .app import TABLE
from .helpers import (
    DATABASE,
    Ledger,
    admin_fetch,
    app_client,
    assert_no_leaks,
    bouncer_url,
    direct_url,
    faults_config,
    post_insert,
    table_ids,
    wait_for,
)

pytestmark = pytest.mark.faults

WRONG_PASSWORD = "wrong-Secret-@:/%# 7e1"


def forms(password: str) -> set[str]:
    """The password as it could appear: raw, percent-encoded in any way, or its distinctive prefix."""
    prefix = re.match(r"[\w-]*", password)
    return {
        *([prefix.group()] if prefix and len(prefix.group()) >= 8 else []),
        password,
        urllib.parse.quote(password),
        urllib.parse.quote(password, safe=""),
        urllib.parse.quote_plus(password),
        urllib.parse.quote_plus(password, safe=""),
        repr(password)[1:-1],
    }


def rendered_with_locals(error: BaseException) -> str:
    """The traceback of `error` and its whole chain, with every frame's locals (repr'd)."""
    return "".join(traceback.TracebackException.from_exception(error, capture_locals=True).format())


class Evidence:
    """Everything a password could leak into, gathered while the workload runs."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, value: object) -> None:
        self.texts.append((where, value if isinstance(value, str) else repr(value)))

    def add_error(self, where: str, error: BaseException) -> None:
        self.add(f"{where}: str", str(error))
        self.add(f"{where}: repr", repr(error))
        self.add(f"{where}: traceback with locals", rendered_with_locals(error))

    def assert_clean(self, *passwords: str) -> None:
        for where, content in self.texts:
            for password in passwords:
                for form in forms(password):
                    assert form not in content, f"the password leaked into {where}"


async def _expect_error(evidence: Evidence, where: str, work: Callable[[], object]) -> None:
    try:
        await work()  # type: ignore[misc]
    except Exception as error:  # noqa: BLE001 - collecting whatever the workload raises
        evidence.add_error(where, error)
    else:
        raise AssertionError(f"{where}: expected an error")


async def test_password_appears_nowhere(
    cluster: PostgresCluster, make_bouncer: Callable[..., PgBouncer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, SQLAlchemy's engine and pool included
    evidence = Evidence()
    bouncer = make_bouncer(cluster)
    configs = {
        "direct": faults_config(direct_url(cluster), DATABASE_ECHO=True),
        "fixed": faults_config(direct_url(cluster), DATABASE_ECHO=True, DATABASE_POOL_TYPE="FIXED_PROCESS"),
        "bouncer": faults_config(bouncer_url(bouncer, cluster), DATABASE_ECHO=True),
        "timeouts": faults_config(
            direct_url(cluster), DATABASE_ECHO=True, DATABASE_STATEMENT_TIMEOUT=0.1, DATABASE_COMMAND_TIMEOUT=5
        ),
    }
    broken = {
        "wrong password": faults_config(cluster.url(DATABASE, password=WRONG_PASSWORD), DATABASE_ECHO=True),
        "wrong port": faults_config(cluster.url(DATABASE).set(port=free_port()), DATABASE_ECHO=True),
        "missing database": faults_config(cluster.url("nope"), DATABASE_ECHO=True),
    }
    for name, config in {**configs, **broken}.items():
        engine = engine_for(config)
        for what, value in {
            "config repr": repr(config),
            "config str": str(config),
            "config dump": config.model_dump(),
            "config json": config.model_dump_json(),
            "url repr": repr(config.database_url),
            "url str": str(config.database_url),
            "engine repr": repr(engine),
            "engine url": repr(engine.url),
            "pool status": engine.pool.status(),
        }.items():
            evidence.add(f"{name}: {what}", value)

    ledger = Ledger()
    for name, config in configs.items():
        unregister_config()
        register_config(config)  # the app's dependencies use the registered config
        async with app_client(config) as client:
            for _ in range(3):
                outcome = await post_insert(client, ledger)
                assert outcome.status == 200, outcome.body
                evidence.add(f"{name}: response", outcome.body)
            duplicate = await client.post("/internal/api/fault_controller/insert_row", json={"id": 1})
            evidence.add(f"{name}: duplicate-key response", duplicate.text)

            # A backend terminated mid-request: a 503, with the asyncpg error chained.
            in_flight = asyncio.create_task(post_insert(client, ledger, sleep=30))

            async def sleeping() -> bool:
                query = "SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'"
                return bool(await admin_fetch(cluster, query))

            await wait_for(sleeping, timeout=5)
            await admin_fetch(
                cluster,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%' "
                "AND pid <> pg_backend_pid()",
            )
            evidence.add(f"{name}: terminated response", (await in_flight).body)

        async def syntax_error(config: object = config) -> None:
            async with database_session(config) as session:  # type: ignore[arg-type]
                await session.exec(text("SELEKT 1"))  # type: ignore[call-overload]

        await _expect_error(evidence, f"{name}: syntax error", syntax_error)

        async def lost(config: object = config) -> None:
            async with database_session(config) as session:  # type: ignore[arg-type]
                await session.exec(text(f"INSERT INTO {TABLE} VALUES (-1)"))  # type: ignore[call-overload]
                await admin_fetch(
                    cluster,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE state = 'idle in transaction'",
                )
                await asyncio.sleep(0.2)
                await session.exec(text("SELECT 1"))  # type: ignore[call-overload]

        await _expect_error(evidence, f"{name}: lost connection", lost)

    async def statement_timeout() -> None:
        async with database_session(configs["timeouts"]) as session:
            await session.exec(text("SELECT pg_sleep(2)"))  # type: ignore[call-overload]

    await _expect_error(evidence, "statement timeout", statement_timeout)

    for name, config in broken.items():

        async def connect(config: object = config) -> None:
            async with database_session(config) as session:  # type: ignore[arg-type]
                await session.exec(text("SELECT 1"))  # type: ignore[call-overload]

        await _expect_error(evidence, f"{name}: connect", connect)
        unregister_config()
        register_config(config)
        async with app_client(config) as client:
            response = await client.post("/internal/api/fault_controller/insert_row", json={"id": 99})
            assert response.status_code == 503
            evidence.add(f"{name}: response", response.text + repr(dict(response.headers)))

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in caplog.records:
        evidence.add(f"log record from {record.name}", formatter.format(record))
        if record.exc_info and record.exc_info[1] is not None:
            evidence.add(f"log traceback from {record.name}", rendered_with_locals(record.exc_info[1]))
    assert any(r.name.startswith("sqlalchemy.engine") for r in caplog.records), "SQL echo was not captured"
    assert any("SELEKT" in r.getMessage() for r in caplog.records)

    evidence.assert_clean(cluster.password, WRONG_PASSWORD)
    assert await table_ids(cluster) == ledger.ok_ids
    await assert_no_leaks(cluster, allow_idle=10)


def test_the_check_catches_a_leak(cluster: PostgresCluster) -> None:
    """The check itself fails on a leaked (percent-encoded) password: guards the guard."""
    evidence = Evidence()
    evidence.add("a URL rendered with its password", cluster.url(DATABASE).render_as_string(hide_password=False))
    with pytest.raises(AssertionError, match="leaked"):
        evidence.assert_clean(cluster.password)


async def test_naive_engine_leaks_through_traceback_locals(cluster: PostgresCluster) -> None:
    """The naive setup: a failed connect from plain `create_async_engine` carries the password in frame locals."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(cluster.url(DATABASE).set(port=free_port()))
    try:
        with pytest.raises(Exception) as caught:
            async with engine.connect():
                pass
    finally:
        await engine.dispose()
    evidence = Evidence()
    evidence.add_error("naive connect failure", caught.value)
    with pytest.raises(AssertionError, match="leaked"):
        evidence.assert_clean(cluster.password)
