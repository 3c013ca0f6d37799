"""Read replicas against real streaming replication: routing, read-your-writes, lag and failures.

The module starts its own primary (synchronous_commit on, as in production) and two hot
standbys made with `pg_basebackup -R`; tests pause replay, delay it, and stop and restart the
standbys. Which server answered is read on the serving backend itself (`pg_is_in_recovery()`,
`inet_server_port()`), never inferred. Every request must answer 200: no 5xx in any scenario.
"""

import asyncio
import contextlib
import logging
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.responses import JSONResponse
from mountaineer import AppController, ConfigBase, ControllerBase, Metadata, RenderBase, sideeffect
from mountaineer.config import unregister_config
from pydantic import BaseModel
from sqlalchemy import text
from sqlmodel import Field, SQLModel, select

from bench.wire import CountingProxy
from mountaineer_db import (
    AsyncSession,
    DatabaseConfig,
    ReadOnlySessionError,
    ReadSessionDep,
    SessionDep,
    database_session,
    dispose_engines,
)
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.migrations.environment import migration_engine
from mountaineer_db.replicas import replica_set as replicas_module
from mountaineer_db.replicas.read_your_writes import COOKIE_NAME, signer_for
from mountaineer_db.replicas.replica_set import (
    REFRESH_INTERVAL,
    REPLAY_SQL,
    STATUS_SQL,
    ReplicaSet,
    replica_status,
    replicas_of,
)
from mountaineer_db.requests.dependencies import get_db
from mountaineer_db.servers.cluster import PostgresCluster
from mountaineer_db.servers.pgbouncer import PgBouncer
from mountaineer_db.servers.replication import StreamingReplica, streaming_replicas
from mountaineer_db.testing import pause_replay, resume_replay, wait_for_replicas
from tests.conftest import require_pgbouncer
from tests.core_app import write_stub_views
from tests.handovers import HoldingProxy, assert_nothing_stranded, idle_connections
from tests.sample_apps import server_execute

DB = "replica_app"
ACTION = "/internal/api/notes_controller"
SMALL = {"shared_buffers": "16MB", "max_connections": "60"}


class ReplicaAppConfig(DatabaseConfig, ConfigBase):
    """Not pip-installed: the app passes view_root."""


class ReplicaNote(SQLModel, table=True):
    __tablename__ = "replica_note"

    id: int | None = Field(default=None, primary_key=True)
    body: str


class NotesRender(RenderBase):
    bodies: list[str]
    in_recovery: bool
    port: int


class NewNote(BaseModel):
    body: str
    how: str = "orm"


async def _seen(session: AsyncSession) -> dict[str, Any]:
    """What the serving backend holds and which server it is."""
    bodies = list((await session.exec(select(ReplicaNote.body).order_by(ReplicaNote.id))).all())  # type: ignore[arg-type]
    connection = await session.connection()
    row = (await connection.execute(text("SELECT pg_is_in_recovery(), inet_server_port()"))).one()
    return {"bodies": bodies, "in_recovery": row[0], "port": row[1]}


async def _write(session: AsyncSession, how: str) -> None:
    if how == "orm":
        session.add(ReplicaNote(body="not allowed"))
        await session.flush()
    else:
        connection = await session.connection()
        await connection.execute(text("INSERT INTO replica_note (body) VALUES ('not allowed')"))


class NotesController(ControllerBase):
    url = "/"
    view_path = "/app/notes/page.tsx"

    async def render(self, session: SessionDep) -> NotesRender:
        seen = await _seen(session)
        return NotesRender(**seen, metadata=Metadata(explicit_response=JSONResponse(seen)))

    @sideeffect
    async def add_note(self, payload: NewNote, session: SessionDep) -> None:
        session.add(ReplicaNote(body=payload.body))
        await session.commit()

    @sideeffect
    async def write_on_read_session(self, payload: NewNote, session: ReadSessionDep) -> None:
        await _write(session, payload.how)

    @sideeffect
    async def without_database(self) -> None:
        pass

    @sideeffect
    async def add_then_read(self, payload: NewNote, session: SessionDep, reader: ReadSessionDep) -> None:
        session.add(ReplicaNote(body=payload.body))
        await session.commit()
        read_in_action.append(await _seen(reader))


read_in_action: list[dict[str, Any]] = []


class ExplicitRender(RenderBase):
    pass


class ExplicitController(ControllerBase):
    """GET /explicit: a render asking for a replica session (DATABASE_READ_ROUTING=primary works too)."""

    url = "/explicit"
    view_path = "/app/explicit/page.tsx"

    async def render(self, session: ReadSessionDep) -> NotesRender:
        seen = await _seen(session)
        return NotesRender(**seen, metadata=Metadata(explicit_response=JSONResponse(seen)))

    @sideeffect
    async def touch(self, payload: NewNote, session: SessionDep) -> None:
        session.add(ReplicaNote(body=payload.body))
        await session.commit()


class WritingRenderController(ControllerBase):
    """GET /writing?how=orm|sql: a render that tries to write through its get_db_session."""

    url = "/writing"
    view_path = "/app/writing/page.tsx"

    async def render(self, session: SessionDep, how: str = "orm") -> ExplicitRender:
        await _write(session, how)
        return ExplicitRender(metadata=Metadata(explicit_response=JSONResponse({"wrote": True})))


SESSION_KINDS: list[str] = []


class KindController(ControllerBase):
    """GET /kind: which session class the render got."""

    url = "/kind"
    view_path = "/app/kind/page.tsx"

    async def render(self, session: SessionDep) -> ExplicitRender:
        SESSION_KINDS.append(type(session.sync_session).__name__)
        return ExplicitRender(metadata=Metadata(explicit_response=JSONResponse(await _seen(session))))


class TaggedController(ControllerBase):
    """GET /tagged: the application_name the serving backend shows for this transaction."""

    url = "/tagged"
    view_path = "/app/tagged/page.tsx"

    async def render(self, session: ReadSessionDep) -> ExplicitRender:
        connection = await session.connection()
        row = (await connection.execute(text("SELECT pg_is_in_recovery(), current_setting('application_name')"))).one()
        return ExplicitRender(metadata=Metadata(explicit_response=JSONResponse({"in_recovery": row[0], "tag": row[1]})))


def build_app(view_root: Path, config: ReplicaAppConfig) -> AppController:
    write_stub_views(view_root, "replica-app-views", "notes", "explicit", "writing", "kind", "tagged")
    app = AppController(view_root=view_root, config=config)
    for controller in (
        NotesController(),
        ExplicitController(),
        WritingRenderController(),
        KindController(),
        TaggedController(),
    ):
        app.register(controller)
    return app


# -- The servers -------------------------------------------------------------------------


@dataclass
class Replicated:
    primary: PostgresCluster
    replicas: list[StreamingReplica]

    def port_of(self, index: int) -> int:
        return self.replicas[index].port


@pytest.fixture(scope="module")
def replicated() -> Iterator[Replicated]:
    with PostgresCluster.temporary(settings={**SMALL, "synchronous_commit": "on"}) as primary:
        asyncio.run(server_execute(primary, f'CREATE DATABASE "{DB}"'))
        with streaming_replicas(primary, count=2) as replicas:
            yield Replicated(primary, replicas)


@pytest.fixture
async def make_config(replicated: Replicated) -> AsyncIterator[Callable[..., ReplicaAppConfig]]:
    """A fresh `replica_note` table, on every server; then a config factory (renders routing)."""
    await server_execute(
        replicated.primary,
        "DROP TABLE IF EXISTS replica_note",
        "CREATE TABLE replica_note (id serial PRIMARY KEY, body text NOT NULL)",
        database=DB,
    )

    def build(**overrides: Any) -> ReplicaAppConfig:
        unregister_config()
        values: dict[str, Any] = {
            "SQLALCHEMY_DATABASE_URI": replicated.primary.url(DB),
            "DATABASE_REPLICA_URLS": [replica.url(DB) for replica in replicated.replicas],
            "DATABASE_READ_ROUTING": "renders",
            **overrides,
        }
        return ReplicaAppConfig(**values)

    await wait_for_replicas(build())
    yield build


@contextlib.asynccontextmanager
async def client(config: ReplicaAppConfig, view_root: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client (it keeps cookies) of a fresh app on `config`."""
    app = build_app(view_root, config)
    transport = httpx.ASGITransport(app=app.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def get(http: httpx.AsyncClient, path: str = "/") -> dict[str, Any]:
    response = await http.get(path)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def add_note(http: httpx.AsyncClient, body: str) -> dict[str, Any]:
    response = await http.post(f"{ACTION}/add_note", json={"body": body})
    assert response.status_code == 200, response.text
    return dict(response.json()["sideeffect"])


async def until(condition: Callable[[], Any], timeout: float, what: str) -> float:
    """Poll the async `condition` until true; the seconds it took."""
    started = time.monotonic()
    while not await condition():
        assert time.monotonic() - started < timeout, f"{what} within {timeout}s"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


# -- Routing -------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["NULL", "FIXED_PROCESS"])
async def test_renders_are_served_by_the_replicas_in_turn(
    replicated: Replicated, make_config: Callable[..., ReplicaAppConfig], tmp_path: Path, pool: str
) -> None:
    async with client(make_config(DATABASE_POOL_TYPE=pool), tmp_path) as http:
        served = [await get(http) for _ in range(6)]
    assert all(page["in_recovery"] for page in served), "every GET render ran on a standby"
    assert sorted({page["port"] for page in served}) == sorted(r.port for r in replicated.replicas)
    assert {page["port"] for page in served[:2]} == {r.port for r in replicated.replicas}, "one after the other"


async def test_an_action_and_its_rerender_use_the_primary(
    replicated: Replicated, make_config: Callable[..., ReplicaAppConfig], tmp_path: Path
) -> None:
    async with client(make_config(), tmp_path) as http:
        rerender = await add_note(http, "hello")
        assert rerender == {"bodies": ["hello"], "in_recovery": False, "port": replicated.primary.port}
        assert COOKIE_NAME in http.cookies, "the action's response carries the read-your-writes cookie"


async def test_rerenders_read_the_primary_however_the_render_asks_and_whatever_the_action_did(
    replicated: Replicated, make_config: Callable[..., ReplicaAppConfig], tmp_path: Path
) -> None:
    """An action without a session, and a render using ReadSessionDep: their re-renders read the primary."""
    async with client(make_config(), tmp_path) as http:
        response = await http.post(f"{ACTION}/without_database")
        assert response.status_code == 200, response.text
        assert response.json()["sideeffect"]["port"] == replicated.primary.port
        response = await http.post("/internal/api/explicit_controller/touch", json={"body": "touched"})
        assert response.status_code == 200, response.text
        assert response.json()["sideeffect"] == {
            "bodies": ["touched"],
            "in_recovery": False,
            "port": replicated.primary.port,
        }


async def test_a_read_session_sees_a_commit_made_earlier_in_the_same_request(
    replicated: Replicated, make_config: Callable[..., ReplicaAppConfig], tmp_path: Path
) -> None:
    config = make_config()
    for replica in replicated.replicas:
        await pause_replay(config, replica.url(DB))
    read_in_action.clear()
    try:
        async with client(config, tmp_path) as http:
            response = await http.post(f"{ACTION}/add_then_read", json={"body": "just now"})
            assert response.status_code == 200, response.text
    finally:
        for replica in replicated.replicas:
            await resume_replay(config, replica.url(DB))
    assert read_in_action == [{"bodies": ["just now"], "in_recovery": False, "port": replicated.primary.port}]


async def test_routing_primary_keeps_renders_on_the_primary_but_read_sessions_use_replicas(
    replicated: Replicated, make_config: Callable[..., ReplicaAppConfig], tmp_path: Path
) -> None:
    async with client(make_config(DATABASE_READ_ROUTING="primary"), tmp_path) as http:
        assert (await get(http, "/"))["port"] == replicated.primary.port
        explicit = await get(http, "/explicit")
    assert explicit["in_recovery"] and explicit["port"] in {r.port for r in replicated.replicas}


async def test_request_tags_reach_the_replica_with_the_early_begin(
    make_config: Callable[..., ReplicaAppConfig], tmp_path: Path
) -> None:
    config = make_config(DATABASE_TAG_REQUESTS=True, DATABASE_APPLICATION_NAME="replica_app")
    async with client(config, tmp_path) as http:
        tagged = await get(http, "/tagged")
    assert tagged == {"in_recovery": True, "tag": "replica_app:TaggedController.render"}


async def test_migrations_and_scripts_use_the_primary(
    replicated: Replicated, make_config: Callable[..., ReplicaAppConfig]
) -> None:
    config = make_config()
    async with migration_engine(config).connect() as connection:
        assert await connection.scalar(text("SELECT pg_is_in_recovery()")) is False
    async with database_session(config) as session:
        session.add(ReplicaNote(body="from a job"))
        await session.commit()
        connection = await session.connection()
        assert await connection.scalar(text("SELECT inet_server_port()")) == replicated.primary.port


# -- Read-your-writes ---------------------------------------------------------------------------


async def test_a_client_reads_its_own_write_while_replay_is_paused_and_others_keep_the_replicas(
    replicated: Replicated, make_config: Callable[..., ReplicaAppConfig], tmp_path: Path
) -> None:
    config = make_config()
    for replica in replicated.replicas:
        await pause_replay(config, replica.url(DB))
    try:
        async with client(config, tmp_path / "a") as writer, client(config, tmp_path / "b") as other:
            await add_note(writer, "mine")
            started = time.monotonic()
            mine = await get(writer)
            took = time.monotonic() - started
            theirs = await get(other)
        assert mine["bodies"] == ["mine"], "the writer sees its write at once"
        assert not mine["in_recovery"], "replicas are paused behind the write: the primary served it"
        assert took < 0.5, f"no waiting on a paused replica ({took:.3f}s)"
        assert theirs["in_recovery"] and theirs["bodies"] == [], "another client keeps reading the (stale) replicas"
    finally:
        for replica in replicated.replicas:
            await resume_replay(config, replica.url(DB))
    await wait_for_replicas(config)
    async with client(config, tmp_path / "c") as later:
        later.cookies.set(COOKIE_NAME, writer.cookies[COOKIE_NAME])
        caught_up = await get(later)
    assert caught_up["in_recovery"] and caught_up["bodies"] == ["mine"], "once replayed, replicas serve the writer"


async def test_a_read_waits_for_a_replica_that_is_replaying_then_reads_there(
    replicated: Replicated, make_config: Callable[..., ReplicaAppConfig], tmp_path: Path
) -> None:
    """Replay delayed by 0.4 s: the writer's next read waits there (bounded) instead of reading stale data."""
    config = make_config(DATABASE_REPLICA_MAX_WAIT=3.0, DATABASE_REPLICA_MAX_LAG=60)
    for replica in replicated.replicas:
        await server_execute(replica, "ALTER SYSTEM SET recovery_min_apply_delay = '400ms'", "SELECT pg_reload_conf()")
    try:
        async with client(config, tmp_path) as writer:
            await get(writer)
            await get(writer)  # both replicas' status known
            await add_note(writer, "delayed")
            started = time.monotonic()
            page = await get(writer)
            waited = time.monotonic() - started
    finally:
        for replica in replicated.replicas:
            await server_execute(replica, "ALTER SYSTEM RESET recovery_min_apply_delay", "SELECT pg_reload_conf()")
    assert page["in_recovery"] and page["bodies"] == ["delayed"], "served by a replica, after it replayed the write"
    assert 0.1 < waited < 2.0, f"waited {waited:.3f}s for the replica"
    print(f"\nread-your-writes wait on a 0.4 s replay delay: {waited:.3f}s")


async def test_a_read_waits_no_longer_than_the_max_wait_then_reads_its_write_on_the_primary(
    replicated: Replicated, make_config: Callable[..., ReplicaAppConfig], tmp_path: Path
) -> None:
    """Replay delayed by 2 s, DATABASE_REPLICA_MAX_WAIT=0.1: the writer's next read stops waiting for the
    replicas and reads its write on the primary (waiting on, it would have been served by a replica)."""
    config = make_config(DATABASE_REPLICA_MAX_WAIT=0.1, DATABASE_REPLICA_MAX_LAG=60)
    for replica in replicated.replicas:
        await server_execute(replica, "ALTER SYSTEM SET recovery_min_apply_delay = '2s'", "SELECT pg_reload_conf()")
    try:
        async with client(config, tmp_path) as writer:
            await get(writer)
            await get(writer)  # both replicas' status known
            await add_note(writer, "delayed")
            page = await get(writer)
    finally:
        for replica in replicated.replicas:
            await server_execute(replica, "ALTER SYSTEM RESET recovery_min_apply_delay", "SELECT pg_reload_conf()")
    assert page == {"bodies": ["delayed"], "in_recovery": False, "port": replicated.primary.port}


async def test_a_forged_cookie_is_ignored(
    replicated: Replicated, make_config: Callable[..., ReplicaAppConfig], tmp_path: Path
) -> None:
    """A position the client made up (or tampered with) does not move its reads to the primary."""
    config = make_config()
    async with client(config, tmp_path) as http:
        await add_note(http, "signed")
        position, expires, signature = http.cookies[COOKIE_NAME].split(".")
        await wait_for_replicas(config)
        for replica in replicated.replicas:
            await pause_replay(config, replica.url(DB))
        try:
            await add_note(http, "second")  # replicas are now behind the client's real cookie
            forged = f"{int(position, 16) + (1 << 40):x}.{expires}.{signature}"
            http.cookies.clear()
            http.cookies.set(COOKIE_NAME, forged)
            page = await get(http)
        finally:
            for replica in replicated.replicas:
                await resume_replay(config, replica.url(DB))
    assert page["in_recovery"] and page["bodies"] == ["signed"], "the forged cookie was not trusted"


# -- Lag and failure ------------------------------------------------------------------------


async def test_a_lagging_replica_is_skipped_for_everyone_until_it_catches_up(
    replicated: Replicated, make_config: Callable[..., ReplicaAppConfig], tmp_path: Path
) -> None:
    config = make_config(DATABASE_REPLICA_MAX_LAG=0.5)
    lagging, healthy = replicated.replicas
    async with client(config, tmp_path) as http:
        await get(http)
        await pause_replay(config, lagging.url(DB))
        try:
            async with database_session(config) as session:  # another client's write: replay falls behind
                session.add(ReplicaNote(body="elsewhere"))
                await session.commit()
            await asyncio.sleep(1.2)  # older than MAX_LAG, and the status is due to be read again
            served = [await get(http) for _ in range(8)]
            assert {page["port"] for page in served} == {healthy.port}, "only the healthy replica serves"
            states = {item["replica"]: item["state"] for item in replica_status(config)}
            assert list(states.values()).count("lagging") == 1
        finally:
            await resume_replay(config, lagging.url(DB))

        async def lagging_serves_again() -> bool:
            return (await get(http))["port"] == lagging.port

        back = await until(lagging_serves_again, 10, "the caught-up replica serves reads again")
    print(f"\nlagging replica back in rotation {back:.2f}s after replay resumed")


@pytest.mark.parametrize("pool", ["NULL", "FIXED_PROCESS"])
async def test_a_stopped_replica_is_skipped_without_errors_and_used_again_once_it_is_back(
    replicated: Replicated, make_config: Callable[..., ReplicaAppConfig], tmp_path: Path, pool: str
) -> None:
    stopped, running = replicated.replicas
    async with client(make_config(DATABASE_POOL_TYPE=pool), tmp_path) as http:
        await get(http)
        await get(http)  # with FIXED_PROCESS, each replica's pool now holds a connection
        stopped.stop()
        try:
            started = time.monotonic()
            first = await get(http)
            first_took = time.monotonic() - started
            served = [first] + [await get(http) for _ in range(9)]
            rest_took = time.monotonic() - started - first_took
        finally:
            stopped.start()
        assert {page["port"] for page in served} == {running.port}, "the other replica serves every read"
        assert first_took < 0.5 and rest_took < 1.0, (first_took, rest_took)

        async def stopped_serves_again() -> bool:
            return (await get(http))["port"] == stopped.port

        back = await until(stopped_serves_again, 15, "the restarted replica serves reads again")
    print(f"\nstopped replica: first read after the stop {first_took * 1000:.1f} ms; back {back:.2f}s after restart")


async def test_with_no_replica_reachable_reads_go_to_the_primary(
    replicated: Replicated, make_config: Callable[..., ReplicaAppConfig], tmp_path: Path
) -> None:
    """One replica refuses connections, one accepts TCP and never answers: neither costs every request."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    ports = [silent.getsockname()[1], refused.getsockname()[1]]
    try:
        url = replicated.primary.url(DB)
        config = make_config(
            DATABASE_REPLICA_URLS=[url.set(port=port) for port in ports], DATABASE_CONNECT_TIMEOUT=0.5
        )
        async with client(config, tmp_path) as http:
            timings = []
            for _ in range(8):
                started = time.monotonic()
                page = await get(http)
                timings.append(time.monotonic() - started)
                assert page["port"] == replicated.primary.port and not page["in_recovery"]
        assert timings[0] < 1.5, f"the first read pays at most one connect timeout ({timings[0]:.3f}s)"
        assert max(timings[1:]) < 0.25, f"later reads skip the unreachable replicas: {timings}"
        assert {item["state"] for item in replica_status(config)} == {"down"}
    finally:
        silent.close()
        refused.close()
    print(f"\nunreachable replicas: first read {timings[0]:.3f}s, then at most {max(timings[1:]) * 1000:.1f} ms")


async def test_replica_status_is_read_once_per_interval_not_per_read(
    make_config: Callable[..., ReplicaAppConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    statuses: list[str] = []
    record = ReplicaSet.record

    def counting(self: ReplicaSet, replica: Any, row: Any) -> bool:
        statuses.append(replica.name)
        return record(self, replica, row)

    monkeypatch.setattr(ReplicaSet, "record", counting)
    async with client(make_config(), tmp_path) as http:
        started = time.monotonic()
        for _ in range(20):
            await get(http)
        elapsed = time.monotonic() - started
    intervals = 1 + int(elapsed / REFRESH_INTERVAL)
    assert len(set(statuses)) == 2 and len(statuses) <= 2 * intervals, (statuses, elapsed)


async def test_a_replica_refusing_the_password_is_skipped_and_no_password_is_shown(
    replicated: Replicated,
    make_config: Callable[..., ReplicaAppConfig],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "wr0ng-S3CRET-for-replica"
    wrong = replicated.replicas[0].url(DB, password=secret)
    config = make_config(DATABASE_REPLICA_URLS=[wrong, replicated.replicas[1].url(DB)])
    caplog.set_level(logging.DEBUG, logger="mountaineer_db")
    async with client(config, tmp_path) as http:
        served = [await get(http) for _ in range(4)]
    assert {page["port"] for page in served} == {replicated.replicas[1].port}
    assert 'password authentication failed for user "postgres"' in caplog.text, "the reason is logged"
    shown = caplog.text + repr(config) + str(config) + config.model_dump_json() + str(replica_status(config))
    assert secret not in shown and replicated.primary.password not in shown


async def test_a_routed_read_costs_no_extra_round_trip_and_a_commit_one(
    replicated: Replicated,
    make_config: Callable[..., ReplicaAppConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Counted on the wire (pooled connections, after warm-up, replica status already known)."""
    monkeypatch.setattr(replicas_module, "REFRESH_INTERVAL", 3600.0)
    servers = [replicated.primary, *replicated.replicas]
    async with contextlib.AsyncExitStack() as stack:
        proxies = [await stack.enter_async_context(CountingProxy("127.0.0.1", server.port)) for server in servers]
        via = [server.url(DB).set(port=proxy.port) for server, proxy in zip(servers, proxies, strict=True)]

        async def per_request(replica_urls: list[Any], request: Callable[[httpx.AsyncClient], Any]) -> list[int]:
            """Round trips of one request, per server (primary first)."""
            config = make_config(
                SQLALCHEMY_DATABASE_URI=via[0], DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_REPLICA_URLS=replica_urls
            )
            async with client(config, tmp_path) as http:
                for _ in range(4):
                    await request(http)
                for proxy in proxies:
                    proxy.reset()
                for _ in range(6):
                    await request(http)
            counts = [sum(log.round_trips for log in proxy.connections) for proxy in proxies]
            await dispose_engines()
            return [count // 6 for count in counts]

        plain: list[Any] = []
        routed = via[1:]
        reads_plain, reads_routed = await per_request(plain, get), await per_request(routed, get)
        assert reads_plain[1:] == [0, 0] and reads_routed[0] == 0
        assert sum(reads_routed) == reads_plain[0], f"a replica read costs what a primary read did: {reads_routed}"

        async def write(http: httpx.AsyncClient) -> None:
            await add_note(http, "counted")

        writes_plain, writes_routed = await per_request(plain, write), await per_request(routed, write)
        assert writes_routed == [writes_plain[0] + 1, 0, 0], "one statement after COMMIT: the WAL position"
    print(f"\nround trips per request [primary, replica1, replica2]: GET render {reads_plain} without replicas, "
          f"{reads_routed} routed; action {writes_plain} without, {writes_routed} with replicas")


# -- Writes on read sessions ----------------------------------------------------------------

EXPLICIT_WHY = (
    "This session is read-only: it comes from DatabaseDependencies.get_db_read_session, which reads from a "
    "replica. Use DatabaseDependencies.get_db_session (SessionDep) for writes."
)
RENDERS_WHY = (
    "This session is read-only: with DATABASE_READ_ROUTING=renders, GET requests read from a replica. "
    "Write in an action, or set DATABASE_READ_ROUTING=primary."
)


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("orm", f"Cannot write 1 new, 0 changed and 0 deleted object(s). {EXPLICIT_WHY}"),
        ("sql", f"Cannot execute INSERT in a read-only transaction. {EXPLICIT_WHY}"),
    ],
)
@pytest.mark.parametrize("replicas", ["with_replicas", "without_replicas"])
async def test_a_write_on_a_read_session_fails_clearly(
    make_config: Callable[..., ReplicaAppConfig], tmp_path: Path, how: str, expected: str, replicas: str
) -> None:
    config = make_config() if replicas == "with_replicas" else make_config(DATABASE_REPLICA_URLS=[])
    async with client(config, tmp_path) as http:
        with pytest.raises(ReadOnlySessionError) as caught:
            await http.post(f"{ACTION}/write_on_read_session", json={"body": "x", "how": how})
    assert str(caught.value) == expected


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("orm", f"Cannot write 1 new, 0 changed and 0 deleted object(s). {RENDERS_WHY}"),
        ("sql", f"Cannot execute INSERT in a read-only transaction. {RENDERS_WHY}"),
    ],
)
async def test_a_write_in_a_render_routed_to_a_replica_fails_clearly(
    make_config: Callable[..., ReplicaAppConfig], tmp_path: Path, how: str, expected: str
) -> None:
    async with client(make_config(), tmp_path) as http:
        with pytest.raises(ReadOnlySessionError) as caught:
            await http.get(f"/writing?how={how}")
    assert str(caught.value) == expected


async def test_without_replicas_renders_get_the_usual_session(
    replicated: Replicated, make_config: Callable[..., ReplicaAppConfig], tmp_path: Path
) -> None:
    """No replicas: routing=renders changes nothing, no cookie, no position query, writes work in renders."""
    config = make_config(DATABASE_REPLICA_URLS=[])
    SESSION_KINDS.clear()
    async with client(config, tmp_path) as http:
        page = await get(http, "/kind")
        await add_note(http, "plain")
        assert COOKIE_NAME not in http.cookies
        assert (await get(http, "/writing?how=orm")) == {"wrote": True}
    assert SESSION_KINDS == ["RequestSyncSession"]
    assert page["port"] == replicated.primary.port


# -- Cancellation while a read picks its replica (issue 31, row 4) -------------------------------

# What the read has sent, and awaits the answer to, when it is cancelled.
PICKING_STEPS = {
    "begin": b"BEGIN READ ONLY",  # its transaction's BEGIN, sent early on the replica
    "status": b"SELECT pg_is_in_recovery()",  # the replica's status (STATUS_SQL)
    "replay_wait": b"SELECT COALESCE((pg_last_wal_replay_lsn()",  # waiting for the client's last write (REPLAY_SQL)
    "not_admitted": b"ROLLBACK",  # leaving a replica that has not replayed the client's last write
}


@pytest.mark.parametrize("pool", ["NULL", "FIXED_PROCESS"])
@pytest.mark.parametrize("step", list(PICKING_STEPS))
async def test_a_read_cancelled_while_it_picks_its_replica_gives_the_connection_back(
    replicated: Replicated, make_config: Callable[..., ReplicaAppConfig], tmp_path: Path, step: str, pool: str
) -> None:
    """A render routed to a replica is cancelled (a client gone, a timeout) while it begins its
    transaction there, reads the replica's status, waits for the replica to replay the client's last
    write, or rolls back on a replica that had not replayed it (to read the primary instead): the
    replica connection goes back (nothing checked out, nothing left on the replica), the replica is
    not taken for down, and the next read is served there. A proxy in front of the replica holds the
    answer to that step, so the cancellation lands exactly there."""
    assert REPLAY_SQL.encode().startswith(PICKING_STEPS["replay_wait"])
    assert STATUS_SQL.encode().startswith(PICKING_STEPS["status"])
    replica = replicated.replicas[0]
    name = f"mdb-cancel-{step}"
    async with HoldingProxy(replica.port) as proxy:
        url = replica.url(DB).set(port=proxy.port)
        config = make_config(
            DATABASE_REPLICA_URLS=[url],
            DATABASE_POOL_TYPE=pool,
            DATABASE_APPLICATION_NAME=name,
            DATABASE_REPLICA_MAX_WAIT=0 if step == "not_admitted" else 30,
        )
        async with client(config, tmp_path) as http:
            if step == "not_admitted":  # the replica engine has made its first connection (SQLAlchemy's setup)
                assert (await get(http))["port"] == replica.port
            if step in ("replay_wait", "not_admitted"):  # the client's last write: a position not replayed
                http.cookies.set(COOKIE_NAME, signer_for(config).sign(1 << 60))
            answer_held = proxy.hold_answers_to(PICKING_STEPS[step])
            read = asyncio.ensure_future(http.get("/"))
            await asyncio.wait_for(answer_held.wait(), 10)
            read.cancel()
            with pytest.raises(asyncio.CancelledError):
                await read
            proxy.release()
            await assert_nothing_stranded(engine_for(config, url=url), replica, DB, name)
            assert [item["state"] for item in replica_status(config)] != ["down"], "the cancellation was ours"
            http.cookies.clear()
            page = await get(http)
            assert (page["in_recovery"], page["port"]) == (True, replica.port), "served by the replica"
        await assert_nothing_stranded(engine_for(config, url=url), replica, DB, name)


@pytest.mark.parametrize("pool", ["NULL", "FIXED_PROCESS"])
async def test_a_replica_probe_cancelled_while_it_reads_the_status_gives_its_connection_back(
    replicated: Replicated,
    make_config: Callable[..., ReplicaAppConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    pool: str,
) -> None:
    """The background probe of a replica marked down is cancelled (as `dispose_engines()` does at
    shutdown) while it waits for the replica's status: its connection goes back, none is left on the
    replica, and the replica engine serves the next read."""
    monkeypatch.setattr(replicas_module, "_RETRY_FIRST", 0.0)  # probed again at the next read, not in 1 s
    replica = replicated.replicas[0]
    name = "mdb-cancel-probe"
    async with HoldingProxy(replica.port) as proxy:
        url = replica.url(DB).set(port=proxy.port)
        config = make_config(
            DATABASE_REPLICA_URLS=[url],
            DATABASE_POOL_TYPE=pool,
            DATABASE_APPLICATION_NAME=name,
            DATABASE_CONNECT_TIMEOUT=10,
        )
        async with client(config, tmp_path) as http:
            replicas = replicas_of(await get_db(config=config))
            assert replicas is not None
            replicas.mark_down(replicas.replicas[0], ConnectionResetError("reset by the test"))
            answer_held = proxy.hold_answers_to(PICKING_STEPS["status"])
            assert (await get(http))["port"] == replicated.primary.port, "skipped while down; its probe starts"
            await asyncio.wait_for(answer_held.wait(), 10)
            probes = list(replicas_module._probes)
            assert len(probes) == 1
            replicas_module.forget_replicas()
            with pytest.raises(asyncio.CancelledError):
                await probes[0]
            engine = engine_for(config, url=url)
            assert idle_connections(engine) == [], "interrupted mid-statement: dropped, never pooled"
            proxy.release()
            await assert_nothing_stranded(engine_for(config, url=url), replica, DB, name)
            page = await get(http)
            assert (page["in_recovery"], page["port"]) == (True, replica.port), "served by the replica"
        await assert_nothing_stranded(engine_for(config, url=url), replica, DB, name)


@pytest.mark.parametrize("pool", ["NULL", "FIXED_PROCESS"])
async def test_an_action_cancelled_while_it_reads_its_commit_position_gives_the_connection_back(
    replicated: Replicated, make_config: Callable[..., ReplicaAppConfig], tmp_path: Path, pool: str
) -> None:
    """With replicas, an action's commit is followed by reading the primary's WAL position (for the
    client's read-your-writes cookie), on the session's own connection. Cancelled while that answer is
    held: the commit stands, the primary connection goes back, nothing stays open on the primary."""
    name = "mdb-cancel-position"
    async with HoldingProxy(replicated.primary.port) as proxy:
        config = make_config(
            SQLALCHEMY_DATABASE_URI=replicated.primary.url(DB).set(port=proxy.port),
            DATABASE_POOL_TYPE=pool,
            DATABASE_APPLICATION_NAME=name,
        )
        async with client(config, tmp_path) as http:
            answer_held = proxy.hold_answers_to(b"pg_current_wal_insert_lsn()")
            action = asyncio.ensure_future(http.post(f"{ACTION}/add_note", json={"body": "committed"}))
            await asyncio.wait_for(answer_held.wait(), 10)
            action.cancel()
            with pytest.raises(asyncio.CancelledError):
                await action
            proxy.release()
            await assert_nothing_stranded(engine_for(config), replicated.primary, DB, name)
            assert (await add_note(http, "next"))["bodies"] == ["committed", "next"]
        await assert_nothing_stranded(engine_for(config), replicated.primary, DB, name)


# -- Through PgBouncer ------------------------------------------------------------------------


@contextlib.contextmanager
def bouncers(replicated: Replicated) -> Iterator[list[PgBouncer]]:
    """A PgBouncer (transaction mode) in front of the primary and of each replica."""
    root = Path(tempfile.mkdtemp(prefix="mdb-replica-bouncers-"))
    root.chmod(0o755)
    started: list[PgBouncer] = []
    try:
        for number, server in enumerate([replicated.primary, *replicated.replicas]):
            work_dir = root / f"b{number}"
            bouncer = PgBouncer("127.0.0.1", server.port, {server.user: server.password}, work_dir=work_dir)
            bouncer.start()
            started.append(bouncer)
        yield started
    finally:
        for bouncer in started:
            bouncer.stop()


@pytest.mark.pgbouncer
async def test_through_pgbouncer_a_replica_that_stops_is_skipped_and_returns(
    replicated: Replicated, make_config: Callable[..., ReplicaAppConfig], tmp_path: Path
) -> None:
    require_pgbouncer()
    user, password = replicated.primary.user, replicated.primary.password
    with bouncers(replicated) as (to_primary, to_first, to_second):
        config = make_config(
            SQLALCHEMY_DATABASE_URI=to_primary.url(DB, user=user, password=password),
            DATABASE_REPLICA_URLS=[b.url(DB, user=user, password=password) for b in (to_first, to_second)],
            DATABASE_CONNECT_TIMEOUT=1.0,
        )
        stopped, running = replicated.replicas
        async with client(config, tmp_path) as http:
            served = [await get(http) for _ in range(4)]
            assert {page["port"] for page in served} == {stopped.port, running.port}
            await add_note(http, "via bouncer")
            assert (await get(http))["bodies"] == ["via bouncer"]
            stopped.stop()
            try:
                started = time.monotonic()
                after = [await get(http) for _ in range(10)]
                took = time.monotonic() - started
            finally:
                stopped.start()
            assert {page["port"] for page in after} == {running.port}
            assert took < 2.5, f"one bounded wait for the dead server at most ({took:.3f}s for 10 reads)"

            async def stopped_serves_again() -> bool:
                return (await get(http))["port"] == stopped.port

            back = await until(stopped_serves_again, 20, "the replica behind PgBouncer serves again")
    print(f"\nthrough PgBouncer: 10 reads after a replica stopped took {took:.3f}s; back {back:.2f}s after restart")


# -- What we rely on upstream ------------------------------------------------------------------


async def test_canary_sqlalchemy_asyncpg_adapter_starts_its_transaction_when_asked(
    replicated: Replicated, make_config: Callable[..., ReplicaAppConfig]
) -> None:
    """`_start_transaction()` of SQLAlchemy's asyncpg adapter (2.0 and 2.1) sends BEGIN now, once.

    mountaineer_db.requests.read_sessions sends a replica read's BEGIN early through it. If SQLAlchemy
    renames it or makes it lazy, this fails: then BEGIN goes with the first statement again.
    """
    engine = engine_for(make_config(DATABASE_REPLICA_URLS=[]))
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        notices: list[str] = []
        raw.driver_connection.add_log_listener(lambda _, message: notices.append(str(message)))  # type: ignore[union-attr]
        await raw.dbapi_connection._start_transaction()  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
        began_earlier = await connection.scalar(text("SELECT now() < statement_timestamp()"))
        await connection.rollback()
    assert began_earlier, "BEGIN was sent by _start_transaction, before the statement"
    assert notices == [], f"no second BEGIN: {notices}"
