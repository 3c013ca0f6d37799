"""Test kit for apps built on mountaineer_db: context managers first, pytest fixtures over them.

```python
from mountaineer_db.testing import (
    create_schema, override_app_session, postgres_server, rollback_session, throwaway_database,
)

with postgres_server() as server, throwaway_database(server) as database:
    config = database.config()
    create_schema(config, SQLModel.metadata)      # or a hook that runs your migrations

    async def test_it() -> None:
        async with rollback_session(config) as session:
            with override_app_session(app, session):
                ...  # requests against app.app; everything rolls back at the end
```

With pytest, the same as fixtures (this module's plugin is registered automatically):
`mdb_server`, `mdb_database`, `mdb_schema`, `mdb_config`, `mdb_session`, `mdb_app`,
`mdb_app_session`, `mdb_client`, `mdb_pgbouncer`, `mdb_captured_on_commit`,
`mdb_assert_num_queries`, `mdb_assert_max_queries`, `mdb_assert_no_n_plus_one`,
`mdb_replicas`, `mdb_replica_config`. See docs/testing.md
and docs/transactions.md.
"""

from mountaineer_db.servers.pgbouncer import PgBouncer
from mountaineer_db.testing.commit_hooks import captured_on_commit
from mountaineer_db.testing.databases import (
    KIT_COMMENT,
    TEST_URL_ENV,
    Schema,
    Server,
    ThrowawayDatabase,
    apply_migrations,
    create_schema,
    pgbouncer_for,
    postgres_server,
    throwaway_database,
)
from mountaineer_db.testing.n_plus_one import StatementsByOrigin, assert_no_n_plus_one
from mountaineer_db.testing.queries import QueryLog, assert_max_queries, assert_num_queries, counted_queries
from mountaineer_db.testing.replicas import (
    pause_replay,
    replica_config,
    resume_replay,
    streaming_replicas,
    wait_for_replicas,
)
from mountaineer_db.testing.sessions import (
    override_app_session,
    render_controller,
    rollback_session,
    session_provider,
)
from mountaineer_db.testing.tenants import TenantPolicyError, assert_tenant_policies, plain_role, use_tenant

__all__ = [
    "KIT_COMMENT",
    "TEST_URL_ENV",
    "PgBouncer",
    "QueryLog",
    "Schema",
    "Server",
    "StatementsByOrigin",
    "TenantPolicyError",
    "ThrowawayDatabase",
    "apply_migrations",
    "assert_max_queries",
    "assert_no_n_plus_one",
    "assert_num_queries",
    "assert_tenant_policies",
    "captured_on_commit",
    "counted_queries",
    "create_schema",
    "override_app_session",
    "pause_replay",
    "pgbouncer_for",
    "plain_role",
    "postgres_server",
    "render_controller",
    "replica_config",
    "resume_replay",
    "rollback_session",
    "session_provider",
    "streaming_replicas",
    "throwaway_database",
    "use_tenant",
    "wait_for_replicas",
]
