"""Multi-tenant apps on PostgreSQL row-level security: the tenant rides on every BEGIN.

With `DATABASE_TENANT_SETTING=app.tenant_id`, every transaction our connections begin says
which tenant it serves, in the same round trip as its BEGIN:

    BEGIN; SET LOCAL app.tenant_id = '<tenant>'      -- a session bound to a tenant
    BEGIN; SET LOCAL app.tenant_id = ''              -- any other transaction

`SET LOCAL` ends with the transaction, so nothing outlives it on a server connection that
PgBouncer (transaction mode) hands to another client next, and a value set at session level
by anything else is overridden for every transaction of ours. The tables' policies compare
their tenant column with `nullif(current_setting('app.tenant_id', true), '')`: an empty
setting matches no row (fail closed).

How a session's tenant reaches its BEGIN, for each of its transactions (a handler may commit
several times; the re-render after an action shares the action's session):

1. `bind_tenant(session, tenant)` stores the tenant in the session's `info`;
2. SQLAlchemy's `after_begin` (every transaction a session begins on a connection, before its
   first statement) stages it on the asyncpg connection (`MountaineerConnection`), None
   included, so a staged value never survives into another session's transaction;
3. `MountaineerConnection.transaction()` takes the staged value (and clears it) when it sends
   BEGIN; a connection checked back into its pool forgets any staged value too.

When the session's connection is already inside a server transaction (the test kit's
savepoints, a session bound to a connection the caller began), the setting is sent as its own
statement (`set_config(..., true)`) instead.

`ALL_TENANTS` is the named bypass for admin work: the transaction runs as
DATABASE_TENANT_BYPASS_ROLE (a role with BYPASSRLS that the app role may `SET ROLE` to), with
`application_name` `<app>:all-tenants[:<origin>]`, visible in `pg_stat_activity`.
"""

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final
from uuid import UUID

import sqlalchemy.util
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, SessionTransaction
from sqlmodel.ext.asyncio.session import AsyncSession

from mountaineer_db.engines.origins import application_name_suffix, current_origin
from mountaineer_db.exceptions import ConfigurationError, TenantRequiredError

if TYPE_CHECKING:
    from mountaineer_db.settings.config import DatabaseConfig

__all__ = [
    "ALL_TENANTS",
    "TENANT_INFO_KEY",
    "AllTenants",
    "Tenant",
    "TenantState",
    "apply_now",
    "bind_tenant",
    "bound_tenant",
    "forget_on_checkin",
    "listen_for_tenants",
    "quote_role",
    "require_tenant",
    "stage_for",
    "tenant_state",
    "tenant_text",
    "unbind_tenant",
]


class AllTenants:
    """The type of `ALL_TENANTS`: the explicitly named bypass of row-level security."""

    _instance: "AllTenants | None" = None

    def __new__(cls) -> "AllTenants":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "ALL_TENANTS"

    def __reduce__(self) -> str:
        return "ALL_TENANTS"


ALL_TENANTS: Final = AllTenants()
"""`tenant=ALL_TENANTS`: admin work across tenants, as DATABASE_TENANT_BYPASS_ROLE, tagged in pg_stat_activity."""

Tenant = str | int | UUID | AllTenants
"""What a tenant can be: a string, an int or a UUID (sent as text), or `ALL_TENANTS`."""

TENANT_INFO_KEY: Final = "mountaineer_db.tenant"
"""Key of the session's tenant (its text, or `ALL_TENANTS`) in `Session.info`."""

# Runs a coroutine from sync code inside SQLAlchemy's greenlet (`await_` in 2.1, `await_only` in 2.0).
_await: Callable[[Awaitable[Any]], Any] = getattr(sqlalchemy.util, "await_", None) or sqlalchemy.util.await_only

_BYPASS_LABEL = "all-tenants"


def quote_role(role: str) -> str:
    """`role` as a quoted SQL identifier."""
    return '"' + role.replace('"', '""') + '"'


def _quote_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def tenant_text(tenant: Any) -> str:
    """The text a tenant is sent as, or `ValueError` saying why it cannot be one."""
    if isinstance(tenant, bool) or not isinstance(tenant, str | int | UUID):
        raise TypeError(
            f"A tenant must be a str, an int or a UUID (or ALL_TENANTS), not {type(tenant).__name__}: "
            "return the tenant's id from your tenant dependency."
        )
    text = str(tenant)
    if not text:
        raise ValueError("A tenant cannot be the empty string: that is how transactions without a tenant are marked.")
    if any(ch < " " or ch == "\x7f" or ch == "\\" for ch in text):
        raise ValueError(
            "A tenant id cannot hold control characters or backslashes; use the tenant's id "
            "(a UUID, a number or a slug), not free text."
        )
    return text


class TenantState:
    """One connection's tenancy: the setting, the bypass role and what the next BEGIN carries.

    Held by `MountaineerConnection` when DATABASE_TENANT_SETTING is set (None otherwise).
    """

    __slots__ = ("bypass_role", "empty", "sent", "setting", "staged", "tag_prefix")

    def __init__(self, setting: str, bypass_role: str | None, tag_prefix: str) -> None:
        listen_for_tenants()  # before this connection's first BEGIN
        self.setting = setting
        self.bypass_role = bypass_role
        self.tag_prefix = tag_prefix
        self.empty = f"; SET LOCAL {setting} = ''"
        self.staged: str | AllTenants | None = None  # for the next BEGIN
        self.sent: str | AllTenants | None = None  # what the open transaction's BEGIN carried

    def begin_suffix(self) -> str:
        """What to append to the next BEGIN; the staged tenant is used up (one transaction only)."""
        tenant, self.staged = self.staged, None
        self.sent = tenant
        if tenant is None:
            return self.empty
        if isinstance(tenant, AllTenants):
            return self.bypass_sql(current_origin())
        return f"; SET LOCAL {self.setting} = {_quote_text(tenant)}"

    def bypass_sql(self, origin: str | None) -> str:
        """`SET LOCAL ROLE <bypass role>` and the all-tenants tag, for `ALL_TENANTS`."""
        if self.bypass_role is None:  # refused before a session gets this far (`bind_tenant`)
            raise ConfigurationError("tenant=ALL_TENANTS needs DATABASE_TENANT_BYPASS_ROLE.")
        label = _BYPASS_LABEL if origin is None else f"{_BYPASS_LABEL}:{origin}"
        return (
            f"{self.empty}; SET LOCAL ROLE {quote_role(self.bypass_role)}"
            f"{application_name_suffix(self.tag_prefix, label)}"
        )

    def ended(self) -> None:
        """The transaction ended (COMMIT, ROLLBACK, or the connection went back to its pool)."""
        self.sent = None


def tenant_state(connection: Connection) -> TenantState | None:
    """The tenancy of the asyncpg connection behind `connection` (None: tenancy is off)."""
    try:
        driver = connection.connection.driver_connection
    except Exception:  # noqa: BLE001 - closed or invalidated: nothing to stage on
        return None
    state: TenantState | None = getattr(driver, "_mdb_tenancy", None)
    return state


def bound_tenant(session: AsyncSession | Session) -> str | AllTenants | None:
    """The tenant `session` serves (None: none)."""
    sync_session = session.sync_session if isinstance(session, AsyncSession) else session
    value: str | AllTenants | None = sync_session.info.get(TENANT_INFO_KEY)
    return value


def require_tenant(tenant: Any, config: "DatabaseConfig | None") -> str | AllTenants:
    """Check `tenant` for `config` before any I/O; its text (or `ALL_TENANTS`).

    Raises `TenantRequiredError` (403) for None, `ConfigurationError` when tenancy is off or
    the bypass has no role, `ValueError`/`TypeError` for a value that cannot be a tenant.
    """
    if tenant is None:
        raise TenantRequiredError(
            "No tenant for this session: the tenant dependency returned None, so no statement was run. "
            "Return the tenant's id, or raise your own HTTPException (401/403) for unauthenticated requests.",
            detail="No tenant for this request.",
        )
    if config is not None and config.DATABASE_TENANT_SETTING is None:
        raise ConfigurationError(
            "A tenant was given but DATABASE_TENANT_SETTING is not set, so it could not reach the database. "
            "Set DATABASE_TENANT_SETTING (for example app.tenant_id) to the setting your row-level security "
            "policies read."
        )
    if isinstance(tenant, AllTenants):
        if config is not None and config.DATABASE_TENANT_BYPASS_ROLE is None:
            raise ConfigurationError(
                "tenant=ALL_TENANTS needs DATABASE_TENANT_BYPASS_ROLE: a role with BYPASSRLS that the app's "
                "role is a member of (GRANT tenant_admin TO app_user). See docs/tenants.md."
            )
        return tenant
    return tenant_text(tenant)


def bind_tenant(session: AsyncSession | Session, tenant: Any, config: "DatabaseConfig | None" = None) -> None:
    """Make every transaction of `session` serve `tenant` from its next BEGIN on (no I/O).

    A session serves one tenant: binding another one raises `TenantRequiredError` (the
    re-render after an action resolves the tenant again and must find the action's).
    """
    value = require_tenant(tenant, config)
    listen_for_tenants()  # before the session's next BEGIN
    sync_session = session.sync_session if isinstance(session, AsyncSession) else session
    current = sync_session.info.get(TENANT_INFO_KEY)
    if current is not None and current != value:
        raise TenantRequiredError(
            f"This session already serves tenant {_shown(current)}, not {_shown(value)}: a session serves one "
            "tenant (the re-render after an action must resolve the action's tenant).",
            detail="The tenant changed during the request.",
        )
    sync_session.info[TENANT_INFO_KEY] = value


def unbind_tenant(session: AsyncSession | Session) -> None:
    """Forget `session`'s tenant (from its next transaction on)."""
    sync_session = session.sync_session if isinstance(session, AsyncSession) else session
    sync_session.info.pop(TENANT_INFO_KEY, None)


def _shown(tenant: str | AllTenants) -> str:
    return repr(tenant) if isinstance(tenant, AllTenants) else _quote_text(tenant)


def apply_now(connection: Connection, state: TenantState, tenant: str | AllTenants | None) -> None:
    """Send the tenant as statements inside the transaction `connection` is already in."""
    if tenant is None:
        sql = f"SELECT set_config('{state.setting}', '', true)"
    elif isinstance(tenant, AllTenants):
        sql = state.bypass_sql(current_origin()).removeprefix("; ")
    else:
        sql = f"SELECT set_config('{state.setting}', {_quote_text(tenant)}, true)"
    # The driver's simple protocol: several statements, no prepared statement, and not a
    # statement of the app's (query counts and the slow-query log do not see it).
    _await(connection.connection.driver_connection.execute(sql))  # type: ignore[union-attr]
    state.sent = tenant


def _after_begin(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    """Stage the session's tenant for the BEGIN of the transaction just begun (see the module docstring)."""
    tenant: str | AllTenants | None = session.info.get(TENANT_INFO_KEY)
    state = tenant_state(connection)
    if state is None:
        if tenant is not None:
            raise ConfigurationError(
                "This session serves a tenant but its engine's config has no DATABASE_TENANT_SETTING: "
                "refusing to run it without the tenant. Set DATABASE_TENANT_SETTING on that config."
            )
        return
    driver = connection.connection.driver_connection
    if driver is None or not driver.is_in_transaction():
        state.staged = tenant  # None too: nothing staged earlier outlives this transaction
        return
    if not connection.in_nested_transaction() and state.sent == tenant:
        return  # BEGIN already carried it (a replica's BEGIN is sent when it is chosen)
    apply_now(connection, state, tenant)


_listening = False


def listen_for_tenants() -> None:
    """Register `_after_begin` on every `Session`, once, when tenancy is first used in this process.

    Called before the first transaction that could need it: by the first connection made with
    DATABASE_TENANT_SETTING (`TenantState`) and by the first `bind_tenant`. Until then an app
    without tenants pays nothing for them: no listener runs at its sessions' BEGINs. A listener
    added to the class reaches the sessions that already exist.
    """
    global _listening
    if not _listening:
        event.listen(Session, "after_begin", _after_begin)
        _listening = True


def stage_for(session: Session, connection: Connection) -> None:
    """Stage `session`'s tenant on `connection` before a BEGIN sent outside SQLAlchemy's
    `after_begin` (a replica's, sent when the read picks it)."""
    state = tenant_state(connection)
    if state is not None:
        state.staged = session.info.get(TENANT_INFO_KEY)


def forget_on_checkin(dbapi_connection: Any, record: Any) -> None:
    """Pool `checkin` listener: a connection going back forgets any tenant staged on it."""
    driver = getattr(record, "driver_connection", None)
    state = getattr(driver, "_mdb_tenancy", None)
    if isinstance(state, TenantState):
        state.staged = None
        state.sent = None
