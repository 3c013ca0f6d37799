"""The test kit for multi-tenant apps: check the policies, run as a plain role, pick a tenant.

```python
from mountaineer_db.testing import assert_tenant_policies, plain_role, rollback_session, use_tenant

assert_tenant_policies(config, SQLModel.metadata)          # RLS enabled, forced, a policy on the setting

with plain_role(config) as app_config:                      # not the owner, not a superuser
    async with rollback_session(app_config) as session:
        await use_tenant(session, tenant_a)
        ...                                                 # only tenant A's rows
```

Row-level security does not apply to superusers, to roles with BYPASSRLS, nor to a table's
owner unless the table has `FORCE ROW LEVEL SECURITY`: tests that prove isolation must run as
a plain role, which the kit's default (the server's superuser) is not.
"""

import contextlib
import json
import secrets
from collections.abc import Iterable, Iterator
from typing import Any

import asyncpg
from sqlalchemy import MetaData, Table
from sqlalchemy.engine import URL, Connection
from sqlmodel.ext.asyncio.session import AsyncSession

from mountaineer_db.engines.tenants import (
    Tenant,
    apply_now,
    bind_tenant,
    bound_tenant,
    quote_role,
    tenant_state,
    unbind_tenant,
)
from mountaineer_db.exceptions import ConfigurationError
from mountaineer_db.servers._blocking import run_coroutine
from mountaineer_db.settings.config import DatabaseConfig

__all__ = ["TenantPolicyError", "assert_tenant_policies", "plain_role", "use_tenant"]


class TenantPolicyError(AssertionError):
    """A table with the tenant column is not protected by row-level security as it must be."""


def _tables(targets: Iterable[Any]) -> list[Table]:
    tables: list[Table] = []
    for target in targets:
        if isinstance(target, MetaData):
            tables.extend(target.sorted_tables)
        elif isinstance(target, Table):
            tables.append(target)
        elif isinstance(getattr(target, "__table__", None), Table):
            tables.append(target.__table__)
        else:
            raise TypeError(
                f"assert_tenant_policies takes table models, Tables or a MetaData, not {type(target).__name__}."
            )
    return tables


_CATALOG = """
SELECT c.relrowsecurity AS enabled, c.relforcerowsecurity AS forced,
       coalesce((SELECT json_agg(json_build_object(
                   'name', p.polname, 'permissive', p.polpermissive, 'cmd', p.polcmd,
                   'qual', pg_get_expr(p.polqual, p.polrelid), 'check', pg_get_expr(p.polwithcheck, p.polrelid)))
                 FROM pg_policy AS p WHERE p.polrelid = c.oid), '[]') AS policies
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2
"""


def _uses(expression: str | None, setting: str, column: str) -> bool:
    if not expression:
        return False
    lowered = expression.lower()
    return f"current_setting('{setting.lower()}'" in lowered and column.lower() in lowered


def _fix(table: str, column: str, setting: str) -> str:
    return (
        f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY; ALTER TABLE {table} FORCE ROW LEVEL SECURITY; "
        f"CREATE POLICY tenant_isolation ON {table} USING ({column} = "
        f"nullif(current_setting('{setting}', true), '')::<type of {column}>)"
    )


def _problems(row: Any, table: str, column: str, setting: str) -> list[str]:
    if row is None:
        return [f"{table}: no such table in the database (run the migrations first)."]
    found: list[str] = []
    if not row["enabled"]:
        found.append(f"{table}: row-level security is not enabled (ALTER TABLE {table} ENABLE ROW LEVEL SECURITY).")
    if not row["forced"]:
        found.append(
            f"{table}: row-level security is not forced, so the table's owner bypasses it "
            f"(ALTER TABLE {table} FORCE ROW LEVEL SECURITY)."
        )
    policies = json.loads(row["policies"])
    guarding = [
        policy
        for policy in policies
        if policy["permissive"]
        and policy["cmd"] == "*"
        and _uses(policy["qual"], setting, column)
        and (policy["check"] is None or _uses(policy["check"], setting, column))
    ]
    if not guarding:
        found.append(
            f"{table}: no policy FOR ALL compares {column} with current_setting('{setting}', true) "
            f"(CREATE POLICY tenant_isolation ON {table} USING ({column} = "
            f"nullif(current_setting('{setting}', true), '')::<type>))."
        )
    for policy in policies:
        if policy["permissive"] and not (
            _uses(policy["qual"], setting, column) or _uses(policy["check"], setting, column)
        ):
            found.append(
                f"{table}: permissive policy {policy['name']!r} does not use {setting}; permissive policies are "
                "OR-ed, so it opens the rows it matches to every tenant. Make it RESTRICTIVE or drop it."
            )
    return found


def assert_tenant_policies(config: DatabaseConfig, *models: Any, column: str = "tenant_id") -> None:
    """Assert that every table with `column` among `models` is protected by row-level security.

    `models` are table models, `Table`s or a `MetaData` (all its tables); tables without
    `column` are skipped, and at least one must have it. For each: RLS enabled *and forced*
    (else the owner bypasses it), a permissive policy FOR ALL whose USING (and WITH CHECK,
    if any) compares `column` with `current_setting('<DATABASE_TENANT_SETTING>', true)`, and
    no other permissive policy that ignores the setting. Raises `TenantPolicyError` listing
    every problem with the SQL that fixes it. Reads the catalog through `config` (any role).
    """
    setting = config.DATABASE_TENANT_SETTING
    if setting is None:
        raise ConfigurationError("assert_tenant_policies needs a config with DATABASE_TENANT_SETTING set.")
    tables = [table for table in _tables(models) if column in table.columns]
    if not tables:
        raise TenantPolicyError(f"None of the given tables has a {column!r} column: nothing to check.")

    async def read() -> list[str]:
        problems: list[str] = []
        connection = await _connect(config, config.database_url)
        try:
            for table in tables:
                row = await connection.fetchrow(_CATALOG, table.schema or "public", table.name)
                problems += _problems(row, table.fullname, column, setting)
        finally:
            await connection.close()
        return problems

    problems = run_coroutine(read, thread_name="mountaineer-db-tenant-policies")
    if problems:
        raise TenantPolicyError(
            "Tenant tables not protected by row-level security:\n  "
            + "\n  ".join(problems)
            + "\nEven then, superusers, roles with BYPASSRLS and (without FORCE) the table owner bypass the "
            "policies: run the app, and tests that check isolation, as a plain role (plain_role)."
        )


async def _connect(config: DatabaseConfig, url: URL) -> asyncpg.Connection:
    """A plain asyncpg connection (no engine: the kit's helpers run on an event loop of their own)."""
    return await asyncpg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        password=url.password,
        database=url.database,
        ssl=False if config.sslmode_for(url).value in ("disable", "allow") else None,
    )


@contextlib.contextmanager
def plain_role(config: DatabaseConfig, *, name: str | None = None) -> Iterator[DatabaseConfig]:
    """A login role that is neither superuser, nor owner, nor BYPASSRLS, and a config using it.

    Made through `config` (a role allowed to create roles: the kit's superuser), granted
    CONNECT, USAGE on the public schema, SELECT/INSERT/UPDATE/DELETE on its tables and USAGE
    on its sequences: what an app role needs, and what row-level security applies to. The
    copy of `config` connects as it (same host, port and database; migrations keep the
    original's URL). Dropped on exit. Through PgBouncer, add the role to its auth file.
    """
    role = name or f"mdb_app_{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(24)
    url = config.database_url
    quoted = quote_role(role)
    database = url.database or "postgres"

    async def create() -> None:
        connection = await _connect(config, config.migrations_url)
        try:
            await connection.execute(
                f"CREATE ROLE {quoted} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD '{password}'"
            )
            await connection.execute(
                f'GRANT CONNECT ON DATABASE "{database}" TO {quoted}; '
                f"GRANT USAGE ON SCHEMA public TO {quoted}; "
                f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {quoted}; "
                f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {quoted}"
            )
        finally:
            await connection.close()

    async def drop() -> None:
        connection = await _connect(config, config.migrations_url)
        try:
            await connection.execute(f"DROP OWNED BY {quoted}; DROP ROLE IF EXISTS {quoted}")
        finally:
            await connection.close()

    run_coroutine(create, thread_name="mountaineer-db-plain-role")
    try:
        yield config.model_copy(
            update={
                "SQLALCHEMY_DATABASE_URI": url.set(username=role, password=password),
                "MIGRATIONS_DATABASE_URI": config.migrations_url,
            }
        )
    finally:
        run_coroutine(drop, thread_name="mountaineer-db-plain-role")


async def use_tenant(session: AsyncSession, tenant: Tenant | None) -> None:
    """Make `session` (the kit's `rollback_session`, or any) serve `tenant` from now on; None: no tenant.

    Unlike request sessions, the kit's session is already inside the test's transaction, so
    the setting is sent at once, as a statement, and again at the start of each of its
    savepoints (commits in the code under test).
    """
    unbind_tenant(session)  # the kit's session may switch tenants between steps of a test
    if tenant is not None:
        bind_tenant(session, tenant)
    if not session.in_transaction():
        return
    connection = await session.connection()

    def apply(sync_connection: Connection) -> None:
        state = tenant_state(sync_connection)
        if state is None:
            raise ConfigurationError("use_tenant needs a session on a config with DATABASE_TENANT_SETTING set.")
        driver = sync_connection.connection.driver_connection
        if driver is not None and driver.is_in_transaction():
            apply_now(sync_connection, state, bound_tenant(session))
        else:
            state.staged = bound_tenant(session)

    await connection.run_sync(apply)
