"""What the generated `env.py` uses: the migrations engine, the migration lock, a render hook.

Kept apart from the commands so an app's `env.py` imports only these small pieces.
"""

from typing import Any, Literal

from alembic.autogenerate.api import AutogenContext
from sqlalchemy.ext.asyncio import AsyncEngine

from mountaineer_db.engines.engine import engine_for
from mountaineer_db.migrations.lock import MIGRATION_LOCK_KEY, migration_lock
from mountaineer_db.settings.config import DatabaseConfig, PoolType

__all__ = ["MIGRATION_LOCK_KEY", "migration_engine", "migration_lock", "migration_settings", "render_item"]


def migration_settings(config: DatabaseConfig) -> DatabaseConfig:
    """`config` as migrations and admin commands use it: no client pool, no app timeouts.

    A migration (or a process waiting for the migration lock) may legitimately take longer
    than any request; DATABASE_CONNECT_TIMEOUT still bounds connecting. Waiting for a lock
    is different: DDL queued behind a long transaction makes every request on that table
    queue behind it. So each transaction gets `lock_timeout` = MIGRATIONS_LOCK_TIMEOUT
    (sent with its BEGIN). Statements in Alembic's `autocommit_block()` (CREATE INDEX
    CONCURRENTLY) run outside any transaction and so without it: they wait for older
    transactions by design, without blocking the app, and a timeout would leave an
    invalid index behind.
    """
    return config.model_copy(
        update={
            "DATABASE_POOL_TYPE": PoolType.NULL,
            "DATABASE_COMMAND_TIMEOUT": None,
            "DATABASE_STATEMENT_TIMEOUT": None,
            "DATABASE_LOCK_TIMEOUT": config.MIGRATIONS_LOCK_TIMEOUT,
            "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT": None,
        }
    )


def migration_engine(config: DatabaseConfig) -> AsyncEngine:
    """An engine on `config.migrations_url` with `migration_settings`; dispose it after use."""
    return engine_for(migration_settings(config), url=config.migrations_url)


def render_item(kind: str, item: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Autogenerate hook: import the module of every non-SQLAlchemy column type a script uses.

    Alembic renders such a type as `module.Type()` but does not import `module`; this adds
    the `import module` line, so scripts using SQLModel's `AutoString` or an app's own types
    run as generated. Returns False: Alembic's default rendering is kept.
    """
    if kind == "type":
        module = type(item).__module__
        if module != "builtins" and not module.startswith("sqlalchemy"):
            autogen_context.imports.add(f"import {module}")
    return False
