"""Multi-tenant apps on row-level security (DATABASE_TENANT_SETTING), against real PostgreSQL and PgBouncer.

Everything runs as a plain app role (`plain_role`: not superuser, not owner, no BYPASSRLS) on a
database migrated by the sample app's hand-written Alembic revision (RLS enabled, forced, one
policy), with tenant `a` owning 3 notes and tenant `b` 5: a transaction that sees the wrong
tenant, or none, shows up as a wrong row count.
"""

import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mountaineer.config import unregister_config
from sqlalchemy import text
from sqlmodel import func, select

from bench.wire import CountingProxy
from mountaineer_db import (
    ALL_TENANTS,
    AsyncSession,
    ConfigurationError,
    DatabaseConfig,
    DatabaseConfigError,
    TenantRequiredError,
    database_session,
    dispose_engines,
    run_in_transaction,
)
from mountaineer_db import migrations as migrations_api
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.engines.tenants import bind_tenant
from mountaineer_db.servers.pgbouncer import PgBouncer
from mountaineer_db.testing import (
    TenantPolicyError,
    assert_tenant_policies,
    override_app_session,
    plain_role,
    rollback_session,
    use_tenant,
)
from tests.conftest import require_pgbouncer
from tests.sample_apps import server_execute, server_fetch, url_string
from tests.sample_apps.tenant_app.app import SETTING, TenantAppConfig, build_app
from tests.sample_apps.tenant_app.config import MigrationsConfig
from tests.sample_apps.tenant_app.models import Note

EXPECTED = {"a": 3, "b": 5}
BYPASS_ROLE = f"mdb_tenant_admin_{secrets.token_hex(3)}"


@dataclass
class TenantDatabase:
    name: str
    admin_config: DatabaseConfig  # the superuser: the migration role here
    app_config: DatabaseConfig  # a plain role
    bouncer: PgBouncer

    def app(self, **overrides: Any) -> TenantAppConfig:
        """The sample app's config as the plain role, direct; keyword arguments override fields."""
        return TenantAppConfig(**{"SQLALCHEMY_DATABASE_URI": self.app_config.database_url, **overrides})

    def config(self, **overrides: Any) -> DatabaseConfig:
        """A plain DatabaseConfig (not registered) as the plain role, with tenancy on."""
        values = {"SQLALCHEMY_DATABASE_URI": self.app_config.database_url, "DATABASE_TENANT_SETTING": SETTING}
        return DatabaseConfig(**{**values, **overrides})

    def bounced_url(self) -> Any:
        url = self.app_config.database_url
        return self.bouncer.url(self.name, user=url.username or "", password=url.password or "")


def _migrate(admin: DatabaseConfig) -> None:
    async def apply() -> None:
        await migrations_api.apply(config=admin)
        await dispose_engines()

    asyncio.run(apply())


@pytest.fixture(scope="module")
def tenant_db(pg_server: Any) -> Iterator[TenantDatabase]:
    require_pgbouncer()
    name = f"mdb_tenants_{secrets.token_hex(4)}"
    asyncio.run(server_execute(pg_server, f'CREATE DATABASE "{name}"'))
    admin = MigrationsConfig(SQLALCHEMY_DATABASE_URI=pg_server.url(name))
    try:
        _migrate(admin)
        rows = ", ".join(
            f"('{tenant}', 'note {n} of {tenant}')" for tenant, count in EXPECTED.items() for n in range(count)
        )
        asyncio.run(
            server_execute(pg_server, f"INSERT INTO tenant_note (tenant_id, body) VALUES {rows}", database=name)
        )
        with plain_role(admin) as app_config:
            role = app_config.database_url.username
            asyncio.run(
                server_execute(
                    pg_server,
                    f'CREATE ROLE "{BYPASS_ROLE}" NOLOGIN BYPASSRLS',
                    f'GRANT SELECT, INSERT, UPDATE, DELETE ON tenant_note TO "{BYPASS_ROLE}"',
                    f'GRANT "{BYPASS_ROLE}" TO "{role}"',
                    database=name,
                )
            )
            work_dir = Path(tempfile.mkdtemp(prefix="mountaineer-db-tenant-bouncer-"))
            os.chmod(work_dir, 0o755)
            users = {role or "": app_config.database_url.password or "", pg_server.user: pg_server.password}
            bouncer = PgBouncer(
                "127.0.0.1", pg_server.port, users, work_dir=work_dir, settings={"default_pool_size": "2"}
            )
            with bouncer:
                yield TenantDatabase(name, admin, app_config, bouncer)
            asyncio.run(server_execute(pg_server, f'DROP OWNED BY "{BYPASS_ROLE}"', database=name))
    finally:
        asyncio.run(server_execute(pg_server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        asyncio.run(server_execute(pg_server, f'DROP ROLE IF EXISTS "{BYPASS_ROLE}"'))


@pytest.fixture
async def client(tenant_db: TenantDatabase) -> AsyncIterator[Callable[..., httpx.AsyncClient]]:
    """An HTTP client on the sample app, configured as asked (the plain role, direct by default)."""

    def make(**overrides: Any) -> httpx.AsyncClient:
        unregister_config()
        app = build_app(tenant_db.app(**overrides))
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app.app), base_url="http://tenant.test")

    yield make


def _own(tenant: str) -> dict[str, Any]:
    return {"setting": tenant, "tenants": [tenant], "rows": EXPECTED[tenant]}


NONE = {"setting": "", "tenants": [], "rows": 0}


# -- Request sessions --------------------------------------------------------------------------


async def test_every_transaction_of_a_request_serves_its_tenant_only(client: Callable[..., httpx.AsyncClient]) -> None:
    """The handler commits between two transactions: both carry the tenant, both see its rows only."""
    async with client() as http:
        for tenant in ("a", "b", "a"):
            response = await http.get("/probe", headers={"x-tenant": tenant})
            assert response.status_code == 200, response.text
            assert response.json()["transactions"] == [_own(tenant), _own(tenant)]


async def test_a_session_without_a_tenant_sees_no_tenant_rows(client: Callable[..., httpx.AsyncClient]) -> None:
    """A plain session (get_db_session) with tenancy on: the setting is '' and no row is visible."""
    async with client() as http:
        response = await http.get("/probe-plain", headers={"x-tenant": "a"})
    assert response.json()["transactions"] == [NONE, NONE]


async def test_no_tenant_is_a_403_before_any_io(
    client: Callable[..., httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    """The tenant dependency returned None: 403, and nothing was sent, not even a connection
    (the server here is a closed port: any I/O would answer 503). Not logged as a failure."""
    async with client(SQLALCHEMY_DATABASE_URI="postgresql://nobody:x@127.0.0.1:1/none") as http:
        response = await http.get("/probe")
        assert response.status_code == 403
        assert response.json() == {"detail": "No tenant for this request."}
        assert [r.getMessage() for r in caplog.records if r.name == "mountaineer_db" and r.levelname == "ERROR"] == []
        reached = await http.get("/probe", headers={"x-tenant": "a"})
        assert reached.status_code == 503  # the same request with a tenant does reach for the server


async def test_the_rerender_after_an_action_holds_the_tenant(
    client: Callable[..., httpx.AsyncClient], tenant_db: TenantDatabase
) -> None:
    """The action commits; Mountaineer's re-render runs in a new transaction of the shared session."""
    async with client() as http:
        response = await http.post(
            "/internal/api/notes_controller/add_note", json={"body": "added by b"}, headers={"x-tenant": "b"}
        )
    try:
        assert response.status_code == 200, response.text
        render = response.json()["sideeffect"]
        assert render["setting"] == "b"
        assert render["tenants"] == ["b"]
        assert len(render["notes"]) == EXPECTED["b"] + 1
        assert render["notes"][-1] == "added by b"
    finally:
        await _delete_added(tenant_db)


async def _delete_added(tenant_db: TenantDatabase) -> None:
    async with database_session(
        tenant_db.config(DATABASE_TENANT_BYPASS_ROLE=BYPASS_ROLE), tenant=ALL_TENANTS
    ) as session:
        await session.exec(text("DELETE FROM tenant_note WHERE body LIKE 'added by %'"))  # type: ignore[call-overload]
        await session.commit()


async def test_a_session_serves_one_tenant() -> None:
    """Binding a second, different tenant (a re-render resolving another one) is refused."""
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://u@127.0.0.1:1/x", DATABASE_TENANT_SETTING=SETTING)
    async with database_session(config, tenant="a") as session:
        bind_tenant(session, "a", config)  # the same one: fine
        with pytest.raises(TenantRequiredError) as caught:
            bind_tenant(session, "b", config)
    assert str(caught.value) == (
        "This session already serves tenant 'a', not 'b': a session serves one tenant (the re-render after an "
        "action must resolve the action's tenant)."
    )
    assert caught.value.status_code == 403


# -- Through PgBouncer, several processes, both pool types -----------------------------------


def _run_workers(tenant_db: TenantDatabase, pool: str, processes: int, requests: int) -> list[dict[str, Any]]:
    env = {
        **os.environ,
        "WORKER_DATABASE_URL": url_string(tenant_db.bounced_url()),
        "WORKER_POOL_TYPE": pool,
        "WORKER_EXPECTED": json.dumps(EXPECTED),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.tenant_worker", str(requests), "6"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(processes)
    ]
    results = []
    for worker in workers:
        out, err = worker.communicate(timeout=240)
        assert worker.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


@pytest.mark.parametrize("pool", ["NULL", "FIXED_PROCESS"])
def test_interleaved_tenants_through_pgbouncer_never_see_each_other(tenant_db: TenantDatabase, pool: str) -> None:
    """3 processes × 150 requests, 6 at a time each, through PgBouncer (transaction mode, 2 server
    connections): tenants a and b, requests without a tenant, plain sessions, and requests that
    leave a session-level value of the setting on the server connection. No transaction sees
    another tenant's setting or rows."""
    results = _run_workers(tenant_db, pool, processes=3, requests=150)
    assert [result["violations"] for result in results] == [[], [], []]
    assert sum(result["requests"] for result in results) == 450
    # 4 kinds out of 5 answer with two transactions each: 2 × 120 per process.
    assert sum(result["transactions"] for result in results) == 3 * 240


async def test_a_pooled_connection_never_hands_its_tenant_to_the_next_session(tenant_db: TenantDatabase) -> None:
    """FIXED_PROCESS, one connection: a session-level value left behind, and a tenant bound to a
    session that never ran a statement, do not reach the next transaction on that connection."""
    config = tenant_db.config(DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_POOL_SIZE=1, DATABASE_MAX_OVERFLOW=0)
    async with database_session(config, tenant="a") as session:
        await session.exec(select(func.set_config(SETTING, "b", False)))  # session level: outlives the transaction
        await session.commit()
    async with database_session(config, tenant="a") as session:
        await session.commit()  # bound, begun, but nothing sent
    async with database_session(config) as session:
        setting = (await session.exec(select(func.current_setting(SETTING, True)))).one()
        rows = (await session.exec(select(func.count()).select_from(Note))).one()
        pids = (await session.exec(select(func.pg_backend_pid()))).one()
    assert (setting, rows) == ("", 0)
    async with database_session(config, tenant="b") as session:
        assert (await session.exec(select(func.pg_backend_pid()))).one() == pids  # the same server connection
        assert (await session.exec(select(func.count()).select_from(Note))).one() == EXPECTED["b"]


async def test_a_staged_tenant_never_reaches_a_transaction_outside_a_session(tenant_db: TenantDatabase) -> None:
    """A tenant bound to a session that sent nothing is forgotten when its pooled connection goes
    back: the engine's next raw transaction on that connection serves no tenant."""
    config = tenant_db.config(DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_POOL_SIZE=1, DATABASE_MAX_OVERFLOW=0)
    async with database_session(config, tenant="a") as session:
        await session.connection()  # a connection taken and a transaction begun, nothing sent
    async with engine_for(config).connect() as connection:
        setting = (await connection.execute(select(func.current_setting(SETTING, True)))).scalar_one()
        rows = (await connection.execute(select(func.count()).select_from(Note))).scalar_one()
    assert (setting, rows) == ("", 0)


async def test_the_tenant_costs_no_round_trip(tenant_db: TenantDatabase) -> None:
    """Counted on the wire: a request of two transactions takes as many round trips with a tenant as
    without tenancy, and each BEGIN carries the tenant in the same message."""
    url = tenant_db.config().database_url
    async with CountingProxy("127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port)
        base = {"SQLALCHEMY_DATABASE_URI": proxied, "DATABASE_POOL_TYPE": "FIXED_PROCESS", "DATABASE_POOL_SIZE": 1}

        async def round_trips(config: DatabaseConfig, tenant: str | None) -> tuple[int, list[str]]:
            for _ in range(2):  # warm-up, then counted
                proxy.reset()
                async with database_session(config, tenant=tenant) as session:
                    for _ in range(2):
                        await session.exec(select(func.count()).select_from(Note))
                        await session.commit()
            await dispose_engines()
            return sum(log.round_trips for log in proxy.connections), [
                sql for log in proxy.connections for sql in log.sql if sql.startswith("BEGIN")
            ]

        off, _ = await round_trips(DatabaseConfig(**base), None)
        on, begins = await round_trips(DatabaseConfig(**base, DATABASE_TENANT_SETTING=SETTING), "a")
    assert on == off
    assert begins == ["BEGIN; SET LOCAL client_connection_check_interval = '500ms'; SET LOCAL app.tenant_id = 'a'"] * 2


# -- Outside requests --------------------------------------------------------------------------


async def test_database_session_for_a_tenant(tenant_db: TenantDatabase) -> None:
    for tenant in ("a", "b"):
        async with database_session(tenant_db.config(), tenant=tenant) as session:
            notes = (await session.exec(select(Note))).all()
            assert {note.tenant_id for note in notes} == {tenant}
            assert len(notes) == EXPECTED[tenant]


async def test_run_in_transaction_keeps_the_tenant_on_every_attempt(tenant_db: TenantDatabase) -> None:
    """The first attempt fails with a serialization failure; the retry serves the same tenant."""
    seen: list[tuple[str, int]] = []

    async def work(session: AsyncSession) -> None:
        setting = (await session.exec(select(func.current_setting(SETTING, True)))).one()
        rows = (await session.exec(select(func.count()).select_from(Note))).one()
        seen.append((setting, rows))
        if len(seen) == 1:
            await session.exec(text("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$"))  # type: ignore[call-overload]

    await run_in_transaction(work, config=tenant_db.config(), tenant="b")
    assert seen == [("b", EXPECTED["b"]), ("b", EXPECTED["b"])]


async def test_all_tenants_is_the_named_bypass_and_shows_in_pg_stat_activity(
    tenant_db: TenantDatabase, pg_server: Any
) -> None:
    config = tenant_db.config(DATABASE_TENANT_BYPASS_ROLE=BYPASS_ROLE, DATABASE_APPLICATION_NAME="notes")
    async with database_session(config, tenant=ALL_TENANTS) as session:
        rows = (await session.exec(select(func.count()).select_from(Note))).one()
        pid = (await session.exec(select(func.pg_backend_pid()))).one()
        activity = await server_fetch(pg_server, "SELECT application_name FROM pg_stat_activity WHERE pid = $1", pid)
        role = (await session.exec(select(func.current_user()))).one()
    assert rows == sum(EXPECTED.values())
    assert activity[0]["application_name"] == "notes:all-tenants"
    assert role == BYPASS_ROLE
    async with database_session(config) as session:  # the next transaction on that config: back to none
        assert (await session.exec(select(func.count()).select_from(Note))).one() == 0


async def test_all_tenants_without_a_bypass_role_is_refused_before_any_io() -> None:
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://u@127.0.0.1:1/x", DATABASE_TENANT_SETTING=SETTING)
    with pytest.raises(ConfigurationError) as caught:
        async with database_session(config, tenant=ALL_TENANTS):
            pass
    assert str(caught.value) == (
        "tenant=ALL_TENANTS needs DATABASE_TENANT_BYPASS_ROLE: a role with BYPASSRLS that the app's role is a "
        "member of (GRANT tenant_admin TO app_user). See docs/tenants.md."
    )


async def test_a_tenant_without_tenancy_on_is_refused() -> None:
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://u@127.0.0.1:1/x")
    with pytest.raises(ConfigurationError, match="DATABASE_TENANT_SETTING is not set"):
        async with database_session(config, tenant="a"):
            pass


@pytest.mark.parametrize(
    ("tenant", "error"),
    [
        ("", "A tenant cannot be the empty string"),
        ("a\\b", "cannot hold control characters or backslashes"),
        ("a\nb", "cannot hold control characters or backslashes"),
        (True, "A tenant must be a str, an int or a UUID"),
        (1.5, "A tenant must be a str, an int or a UUID"),
    ],
)
async def test_values_that_cannot_be_a_tenant_are_refused(tenant: Any, error: str) -> None:
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://u@127.0.0.1:1/x", DATABASE_TENANT_SETTING=SETTING)
    with pytest.raises((ValueError, TypeError), match=error):
        async with database_session(config, tenant=tenant):
            pass


async def test_quotes_ints_and_uuids_reach_the_server_as_text(tenant_db: TenantDatabase) -> None:
    some = uuid.uuid4()
    for tenant, text_form in (("o'brien", "o'brien"), (42, "42"), (some, str(some))):
        async with database_session(tenant_db.config(), tenant=tenant) as session:
            assert (await session.exec(select(func.current_setting(SETTING, True)))).one() == text_form


# -- Settings ----------------------------------------------------------------------------------


def test_a_setting_name_postgresql_would_not_take_is_refused() -> None:
    with pytest.raises(DatabaseConfigError) as caught:
        DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://u@h/x", DATABASE_TENANT_SETTING="tenant_id")
    assert (
        "DATABASE_TENANT_SETTING (passed to DatabaseConfig()) is 'tenant_id', not a custom PostgreSQL setting "
        "name: use two or more identifiers joined by dots (letters, digits and underscores), for example app.tenant_id."
    ) in str(caught.value)


def test_a_bypass_role_without_tenancy_is_refused() -> None:
    with pytest.raises(
        DatabaseConfigError,
        match=r"DATABASE_TENANT_BYPASS_ROLE \(passed to DatabaseConfig\(\)\) is set but DATABASE_TENANT_SETTING is not",
    ):
        DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://u@h/x", DATABASE_TENANT_BYPASS_ROLE="admin")


# -- The kit ----------------------------------------------------------------------------------


def test_assert_tenant_policies_passes_for_the_migrated_table(tenant_db: TenantDatabase) -> None:
    assert_tenant_policies(tenant_db.config(), Note)


def test_assert_tenant_policies_names_each_problem_and_its_fix(tenant_db: TenantDatabase, pg_server: Any) -> None:
    """A table with RLS enabled but not forced, and an extra permissive policy that ignores the setting."""
    from sqlalchemy import Column, MetaData, String, Table

    asyncio.run(
        server_execute(
            pg_server,
            "CREATE TABLE loose_note (id serial PRIMARY KEY, tenant_id text)",
            "ALTER TABLE loose_note ENABLE ROW LEVEL SECURITY",
            "CREATE POLICY everyone ON loose_note USING (true)",
            database=tenant_db.name,
        )
    )
    try:
        loose = Table("loose_note", MetaData(), Column("id", String, primary_key=True), Column("tenant_id", String))
        with pytest.raises(TenantPolicyError) as caught:
            assert_tenant_policies(tenant_db.config(), Note, loose)
        assert str(caught.value) == (
            "Tenant tables not protected by row-level security:\n"
            "  loose_note: row-level security is not forced, so the table's owner bypasses it "
            "(ALTER TABLE loose_note FORCE ROW LEVEL SECURITY).\n"
            "  loose_note: no policy FOR ALL compares tenant_id with current_setting('app.tenant_id', true) "
            "(CREATE POLICY tenant_isolation ON loose_note USING (tenant_id = "
            "nullif(current_setting('app.tenant_id', true), '')::<type>)).\n"
            "  loose_note: permissive policy 'everyone' does not use app.tenant_id; permissive policies are OR-ed, "
            "so it opens the rows it matches to every tenant. Make it RESTRICTIVE or drop it.\n"
            "Even then, superusers, roles with BYPASSRLS and (without FORCE) the table owner bypass the policies: "
            "run the app, and tests that check isolation, as a plain role (plain_role)."
        )
    finally:
        asyncio.run(server_execute(pg_server, "DROP TABLE loose_note", database=tenant_db.name))


def test_plain_role_is_not_superuser_owner_or_bypassrls(tenant_db: TenantDatabase, pg_server: Any) -> None:
    role = tenant_db.app_config.database_url.username
    rows = asyncio.run(
        server_fetch(
            pg_server,
            "SELECT r.rolsuper, r.rolbypassrls, (SELECT tableowner FROM pg_tables WHERE tablename = 'tenant_note') "
            "AS owner FROM pg_roles AS r WHERE r.rolname = $1",
            role,
            database=tenant_db.name,
        )
    )
    assert [tuple(row) for row in rows] == [(False, False, pg_server.user)]


async def test_the_kits_rollback_session_serves_the_tenant_given_by_use_tenant(tenant_db: TenantDatabase) -> None:
    async with rollback_session(tenant_db.config()) as session:
        assert (await session.exec(select(func.count()).select_from(Note))).one() == 0
        await use_tenant(session, "a")
        assert (await session.exec(select(func.count()).select_from(Note))).one() == EXPECTED["a"]
        session.add(Note(tenant_id="a", body="kit"))
        await session.commit()  # a savepoint: the next one carries the tenant again
        assert (await session.exec(select(func.count()).select_from(Note))).one() == EXPECTED["a"] + 1
        await use_tenant(session, "b")
        assert (await session.exec(select(func.count()).select_from(Note))).one() == EXPECTED["b"]
        await session.rollback()  # back to before the savepoint that set b: each new one sets it again
        assert (await session.exec(select(func.count()).select_from(Note))).one() == EXPECTED["b"]
        with pytest.raises(Exception, match="row-level security"):
            session.add(Note(tenant_id="a", body="written as b"))  # the policy's check refuses it
            await session.commit()


async def test_the_kits_app_session_gives_for_tenant_its_tenant_per_request(tenant_db: TenantDatabase) -> None:
    """override_app_session: each request binds its own tenant on the kit's session, inside the
    test's transaction, and the re-render after an action keeps it; the test's own tenant is
    back after each request."""
    unregister_config()
    app = build_app(tenant_db.app())
    async with rollback_session(tenant_db.config()) as session:
        await use_tenant(session, "b")
        with override_app_session(app, session):
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app.app), base_url="http://tenant.test"
            ) as http:
                probe_a = (await http.get("/probe", headers={"x-tenant": "a"})).json()
                plain = (await http.get("/probe-plain")).json()
                missing = await http.get("/probe")
                action = await http.post(
                    "/internal/api/notes_controller/add_note", json={"body": "kit a"}, headers={"x-tenant": "a"}
                )
        assert (await session.exec(select(func.count()).select_from(Note))).one() == EXPECTED["b"]
    assert probe_a["transactions"] == [_own("a"), _own("a")]
    assert plain["transactions"] == [NONE, NONE]
    assert missing.status_code == 403
    render = action.json()["sideeffect"]
    assert (render["setting"], render["tenants"], render["notes"][-1]) == ("a", ["a"], "kit a")


# -- Migrations --------------------------------------------------------------------------------


async def test_the_revision_enables_and_forces_rls_with_its_policy(tenant_db: TenantDatabase, pg_server: Any) -> None:
    rows = await server_fetch(
        pg_server,
        "SELECT c.relrowsecurity, c.relforcerowsecurity, p.policyname FROM pg_class AS c "
        "JOIN pg_policies AS p ON p.tablename = c.relname WHERE c.relname = 'tenant_note'",
        database=tenant_db.name,
    )
    assert [tuple(row) for row in rows] == [(True, True, "tenant_isolation")]


# -- The documented setup ------------------------------------------------------------------


def _statements(sql: str) -> list[str]:
    """The statements of a SQL block, one by one (CREATE DATABASE cannot share a round trip)."""
    lines = [line.split("--")[0] for line in sql.splitlines()]
    return [statement.strip() for statement in "\n".join(lines).split(";") if statement.strip()]


async def test_the_documented_roles_and_policy_work(pg_server: Any) -> None:
    """docs/tenants.md "Setup": its SQL, run as written (names made unique), gives an owner held to
    the policy, an app role that sees one tenant at a time and a bypass role for ALL_TENANTS."""
    from tests.docs_code import FENCE, section

    page = (Path(__file__).parent.parent / "docs" / "tenants.md").read_text()
    setup, policy = [
        block.group("body")
        for block in FENCE.finditer(section(page, "## Setup: roles and policies"))
        if block.group("lang") == "sql"
    ]
    suffix = secrets.token_hex(3)
    setup = setup.replace("myapp", f"myapp{suffix}")
    before, _, after = setup.partition(f"\\connect myapp{suffix}\n")
    database = f"myapp{suffix}"
    roles = [f"myapp{suffix}_{name}" for name in ("app", "admin", "owner")]
    try:
        await server_execute(pg_server, *_statements(before))
        await server_execute(pg_server, *_statements(after), database=database)
        owner = pg_server.url(database, user=roles[2], password="change-me-owner")
        app = pg_server.url(database, user=roles[0], password="change-me-app")
        tenants = [uuid.uuid4(), uuid.uuid4()]
        async with database_session(DatabaseConfig(SQLALCHEMY_DATABASE_URI=owner)) as session:
            await session.exec(text("CREATE TABLE note (id serial PRIMARY KEY, tenant_id uuid NOT NULL)"))  # type: ignore[call-overload]
            for statement in _statements(policy):
                await session.exec(text(statement))  # type: ignore[call-overload]
            await session.commit()
        owner_config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=owner, DATABASE_TENANT_SETTING="app.tenant_id")
        for count, tenant in enumerate(tenants, start=1):
            async with database_session(owner_config, tenant=tenant) as session:
                for _ in range(count):
                    await session.exec(text("INSERT INTO note (tenant_id) VALUES (:t)").bindparams(t=tenant))  # type: ignore[call-overload]
                await session.commit()
        async with database_session(owner_config) as session:  # FORCE: the owner sees nothing without a tenant
            assert (await session.exec(text("SELECT count(*) FROM note"))).one() == (0,)  # type: ignore[call-overload]
        app_config = DatabaseConfig(
            SQLALCHEMY_DATABASE_URI=app, DATABASE_TENANT_SETTING="app.tenant_id", DATABASE_TENANT_BYPASS_ROLE=roles[1]
        )
        seen = []
        for tenant in [*tenants, ALL_TENANTS]:
            async with database_session(app_config, tenant=tenant) as session:
                seen.append((await session.exec(text("SELECT count(*) FROM note"))).one()[0])  # type: ignore[call-overload]
        assert seen == [1, 2, 3]
    finally:
        await dispose_engines()
        await server_execute(pg_server, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await server_execute(pg_server, *(f'DROP ROLE IF EXISTS "{role}"' for role in roles))


def test_an_app_without_tenants_runs_no_tenant_listener_until_tenancy_is_first_used() -> None:
    """No cost when off: importing the package registers nothing on `Session`; the first
    `bind_tenant` does, and the listener then reaches a session made before it."""
    program = """
from sqlalchemy import create_engine, event, text
from sqlalchemy.orm import Session
import mountaineer_db
from mountaineer_db.engines import tenants

assert not event.contains(Session, "after_begin", tenants._after_begin), "registered at import"
engine = create_engine("sqlite://")
session = Session(engine)
session.execute(text("SELECT 1"))
session.commit()
assert not event.contains(Session, "after_begin", tenants._after_begin), "registered by a plain session"
tenants.bind_tenant(session, "a")
assert event.contains(Session, "after_begin", tenants._after_begin), "bind_tenant did not register it"
try:
    session.execute(text("SELECT 1"))  # an engine without tenancy: the listener refuses the tenant
except mountaineer_db.ConfigurationError as error:
    print("refused:", error)
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    refusal = "refused: This session serves a tenant but its engine's config has no DATABASE_TENANT_SETTING"
    assert refusal in result.stdout
