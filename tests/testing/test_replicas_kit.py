"""`mdb_replicas` / `mdb_replica_config`: streaming replicas of the kit's own server."""

from contextlib import asynccontextmanager

from sqlalchemy import text

from mountaineer_db import DatabaseConfig, DatabaseDependencies, database_session
from mountaineer_db.servers.replication import StreamingReplica
from mountaineer_db.testing import wait_for_replicas
from mountaineer_db.testing.databases import ThrowawayDatabase


async def test_the_kit_reads_committed_rows_from_its_replicas(
    mdb_replica_config: DatabaseConfig, mdb_replicas: list[StreamingReplica], mdb_database: ThrowawayDatabase
) -> None:
    config = mdb_replica_config
    assert [url.port for url in config.DATABASE_REPLICA_URLS] == [replica.port for replica in mdb_replicas]
    assert mdb_database.config().DATABASE_REPLICA_URLS == [], "the plain kit config reads the primary only"
    async with database_session(config) as session:
        connection = await session.connection()
        await connection.execute(text("CREATE TABLE kit_replica_probe (n int)"))
        await connection.execute(text("INSERT INTO kit_replica_probe VALUES (7)"))
        await session.commit()
    try:
        await wait_for_replicas(config)
        read_session = asynccontextmanager(DatabaseDependencies.get_db_read_session)
        engine = await DatabaseDependencies.get_db(config=config)
        async with read_session(engine=engine) as session:
            connection = await session.connection()
            row = (await connection.execute(text("SELECT pg_is_in_recovery(), n FROM kit_replica_probe"))).one()
        assert tuple(row) == (True, 7)
    finally:
        async with database_session(config) as session:
            await (await session.connection()).execute(text("DROP TABLE kit_replica_probe"))
            await session.commit()
