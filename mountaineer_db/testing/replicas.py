"""Streaming replicas for an app's tests, and waiting on them.

```python
with postgres_server() as server, streaming_replicas(server, count=2) as replicas, \\
        throwaway_database(server) as database:
    config = replica_config(database, replicas)            # DATABASE_READ_ROUTING=renders
    ...
    await wait_for_replicas(config)                         # replicas have what was committed
```

Replicas only ever see committed data, so tests that read through them commit for real
(`database_session(config)`) rather than in the kit's rolled-back `mdb_session`, and clean up
after themselves. The pytest fixtures `mdb_replicas` and `mdb_replica_config` wrap these.
"""

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any, TypeVar

from sqlalchemy.engine import URL

from mountaineer_db.engines.connections import Connector
from mountaineer_db.exceptions import ConfigurationError, describe_target
from mountaineer_db.replicas.read_your_writes import POSITION_SQL, format_position
from mountaineer_db.replicas.replica_set import REPLAY_SQL
from mountaineer_db.servers.cluster import PostgresCluster
from mountaineer_db.servers.replication import StreamingReplica
from mountaineer_db.servers.replication import streaming_replicas as _streaming_replicas
from mountaineer_db.settings.config import DatabaseConfig
from mountaineer_db.testing.databases import Server, ThrowawayDatabase

__all__ = ["pause_replay", "replica_config", "resume_replay", "streaming_replicas", "wait_for_replicas"]

ConfigT = TypeVar("ConfigT", bound=DatabaseConfig)


@contextlib.contextmanager
def streaming_replicas(server: Server, *, count: int = 2) -> Iterator[list[StreamingReplica]]:
    """`count` hot standbys of `server` (one the kit started), streaming, removed on exit."""
    if not isinstance(server, PostgresCluster):
        raise ConfigurationError(
            f"Streaming replicas need a PostgreSQL server the kit started; {server!r} is an existing one "
            f"(MOUNTAINEER_DB_TEST_URL). Unset MOUNTAINEER_DB_TEST_URL for tests that use replicas."
        )
    with _streaming_replicas(server, count=count) as replicas:
        yield replicas


def replica_config(
    database: ThrowawayDatabase,
    replicas: list[StreamingReplica],
    config_class: type[ConfigT] = DatabaseConfig,  # type: ignore[assignment]
    **overrides: Any,
) -> ConfigT:
    """A config for `database` reading from `replicas`, with DATABASE_READ_ROUTING=renders by default."""
    values: dict[str, Any] = {
        "DATABASE_REPLICA_URLS": [replica.url(database.name) for replica in replicas],
        "DATABASE_READ_ROUTING": "renders",
        **overrides,
    }
    return database.config(config_class, **values)


async def _fetch(config: DatabaseConfig, url: URL, query: str) -> Any:
    connection = await Connector(config, url, statement_cache_size=0).connect()
    try:
        return await connection.fetchval(query)
    finally:
        await connection.close()


async def wait_for_replicas(config: DatabaseConfig, *, timeout: float = 10.0) -> None:
    """Return once every replica of `config` has replayed all that the primary committed so far."""
    target = int(await _fetch(config, config.database_url, POSITION_SQL))
    deadline = time.monotonic() + timeout
    for url in config.DATABASE_REPLICA_URLS:
        while int(await _fetch(config, url, REPLAY_SQL)) < target:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"The replica {describe_target(url, user=False)} did not replay {format_position(target)} "
                    f"within {timeout}s; is its replay paused?"
                )
            await asyncio.sleep(0.01)


async def pause_replay(config: DatabaseConfig, url: URL) -> None:
    """Pause WAL replay on the replica at `url` (it falls behind; a superuser's URL)."""
    await _fetch(config, url, "SELECT pg_wal_replay_pause()")


async def resume_replay(config: DatabaseConfig, url: URL) -> None:
    """Resume WAL replay on the replica at `url`."""
    await _fetch(config, url, "SELECT pg_wal_replay_resume()")
