"""Alembic environment for this app (written by `mountaineer-db migrate init`; edit freely).

`mountaineer-db migrate ...` and the functions in `mountaineer_db.migrations` hand this
file the app's DatabaseConfig, the target metadata and an open connection (holding the
migration lock) through `config.attributes`. Run on its own (the plain `alembic` command),
it finds the config through MOUNTAINEER_DB_CONFIG=module:ClassName or the registered
Mountaineer config, and connects to MIGRATIONS_DATABASE_URI (or the app's URL) itself.

It never configures logging: the host app's logging stays as it is.
"""

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from mountaineer_db.migrations import load_config, load_metadata, migration_engine, migration_lock, render_item

config = context.config
db_config = config.attributes.get("mountaineer_db_config") or load_config()
if "target_metadata" in config.attributes:
    target_metadata = config.attributes["target_metadata"]
else:
    target_metadata = load_metadata(db_config)


def run_migrations_offline() -> None:
    """Write the SQL to stdout (`alembic upgrade --sql`): needs the dialect only, no connection."""
    context.configure(
        dialect_name="postgresql",
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    """Connect to the migrations URL (no pool), take the migration lock, run, dispose."""
    engine = migration_engine(db_config)
    try:
        async with engine.connect() as connection, migration_lock(connection):
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    else:
        asyncio.run(run_async_migrations())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
