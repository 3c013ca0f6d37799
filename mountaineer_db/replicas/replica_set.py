"""Read replicas: which one may serve a read, from what each process knows about them.

A config with DATABASE_REPLICA_URLS gets a `ReplicaSet` (one per engine `get_db` hands out).
Each replica has its own engine, built by `engine_for` like the primary's: same pool type,
PgBouncer-safe statements, timeouts and BEGIN. Per process, shared by every event loop and
config that names the same server, one health record per replica holds what was last seen:

- A replica in use has its status (still a standby? replay position, lag, replay paused?)
  read again at most once per `REFRESH_INTERVAL`, as one statement in the transaction of a
  read routed there: no extra connection, no timer, no round trip on other reads.
- A replica that cannot be reached, or cannot begin a transaction, within
  DATABASE_CONNECT_TIMEOUT is down: skipped, and probed in the background after 1 s, then
  2, 4, 8 and every 10 s. No request waits for a replica already known to be down.
- A replica more than DATABASE_REPLICA_MAX_LAG behind, or no standby at all
  (`pg_is_in_recovery()` false: promoted, or the primary's own address), is skipped and
  probed in the background every `REFRESH_INTERVAL` until it is fit again.

Reads spread over the usable replicas in turn. Lag is the age of the last transaction
replayed while WAL is still waiting to be replayed, and 0 once replay has caught up with what
was received (`now() - pg_last_xact_replay_timestamp()` alone grows while the primary is idle).
"""

import asyncio
import contextlib
import itertools
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from mountaineer_db.engines.data_errors import describe_error
from mountaineer_db.engines.engine import engine_for, on_dispose
from mountaineer_db.exceptions import DatabaseUnavailableError, describe_target
from mountaineer_db.replicas.read_your_writes import Signer, format_position, signer_for
from mountaineer_db.settings.config import DatabaseConfig, ReadRouting

__all__ = [
    "REFRESH_INTERVAL",
    "Replica",
    "ReplicaSet",
    "forget_replicas",
    "remember_replicas",
    "replica_status",
    "replicas_of",
]

logger = logging.getLogger("mountaineer_db")

REFRESH_INTERVAL = 1.0
"""Seconds a replica's status is trusted before a read routed there reads it again."""
_RETRY_FIRST = 1.0
_RETRY_MAX = 10.0

STATUS_SQL = (
    "SELECT pg_is_in_recovery(), "
    "COALESCE((pg_last_wal_replay_lsn() - '0/0')::bigint, 0), "
    "(CASE WHEN pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn() "
    "THEN COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - pg_last_xact_replay_timestamp()), 0) "
    "ELSE 0 END)::float8, "
    "CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END"
)
"""standby?, replay position, lag in seconds, replay paused? (one row, cheap functions only)."""
REPLAY_SQL = "SELECT COALESCE((pg_last_wal_replay_lsn() - '0/0')::bigint, 0)"


@dataclass(slots=True)
class _Health:
    """What this process last saw of one replica server."""

    name: str
    checked_at: float = float("-inf")
    standby: bool = True
    replay_position: int = 0
    lag: float = 0.0
    paused: bool = False
    down_until: float = 0.0
    backoff: float = 0.0
    probing: bool = False
    logged: str = ""  # the unfit state last logged as a warning, "" when fit


_health: dict[tuple[Any, ...], _Health] = {}
_probes: set["asyncio.Task[None]"] = set()
_sets: "weakref.WeakKeyDictionary[AsyncEngine, ReplicaSet]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True, eq=False, slots=True)
class Replica:
    """One entry of DATABASE_REPLICA_URLS."""

    url: URL
    name: str
    key: tuple[Any, ...]


def _replica(url: URL) -> Replica:
    key = (url.host, url.port or 5432, url.query.get("host"), url.database)
    return Replica(url, describe_target(url, user=False), key)


def _health_of(replica: Replica) -> _Health:
    health = _health.get(replica.key)
    if health is None:
        health = _health[replica.key] = _Health(replica.name)
    return health


class ReplicaSet:
    """The replicas of one config, and the decisions made from their health."""

    __slots__ = ("_turn", "config", "max_lag", "max_wait", "renders", "replicas", "signer", "timeout")

    def __init__(self, config: DatabaseConfig) -> None:
        self.config = config
        self.replicas = tuple(_replica(url) for url in config.DATABASE_REPLICA_URLS)
        self.renders = config.DATABASE_READ_ROUTING is ReadRouting.RENDERS
        self.max_lag = config.DATABASE_REPLICA_MAX_LAG
        self.max_wait = config.DATABASE_REPLICA_MAX_WAIT
        self.timeout = config.DATABASE_CONNECT_TIMEOUT
        self.signer: Signer = signer_for(config)
        self._turn = itertools.count()

    def engine(self, replica: Replica) -> AsyncEngine:
        """The replica's engine on the running loop (cached like every engine)."""
        return engine_for(self.config, url=replica.url)

    def candidates(self, position: int) -> list[Replica]:
        """The replicas fit to serve a read now, taken in turn; known to have replayed `position` first.

        Replicas due for a background probe get one started here (without waiting for it).
        """
        now = time.monotonic()
        ahead: list[Replica] = []
        behind: list[Replica] = []
        for replica in self.replicas:
            health = _health_of(replica)
            if health.down_until:
                if now >= health.down_until:
                    self._probe(replica, health)
                continue
            if not health.standby or health.lag > self.max_lag:
                if now - health.checked_at >= REFRESH_INTERVAL:
                    self._probe(replica, health)
                continue
            (ahead if health.replay_position >= position else behind).append(replica)
        turn = next(self._turn)
        return _rotated(ahead, turn) + _rotated(behind, turn)

    async def admit(self, replica: Replica, driver: Any, position: int, *, may_wait: bool) -> bool:
        """Whether `replica` may serve a read that must see `position`; runs on the read's own connection.

        Reads the replica's status when it is due (or when `position` is past what is known),
        then, if allowed and the replica is replaying, waits up to DATABASE_REPLICA_MAX_WAIT
        for it to replay `position`.
        """
        health = _health_of(replica)
        now = time.monotonic()
        if now - health.checked_at >= REFRESH_INTERVAL or position > health.replay_position:
            health.checked_at = now  # claimed: concurrent reads keep using what is known meanwhile
            if not self.record(replica, await driver.fetchrow(STATUS_SQL, timeout=self.timeout)):
                return False
        if position <= health.replay_position:
            return True
        if not may_wait or health.paused or self.max_wait <= 0:
            return False
        deadline = time.monotonic() + self.max_wait
        delay = 0.002
        while (remaining := deadline - time.monotonic()) > 0:
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.025)
            replayed = int(await driver.fetchval(REPLAY_SQL, timeout=self.timeout))
            health.replay_position = max(health.replay_position, replayed)
            if replayed >= position:
                return True
        return False

    def record(self, replica: Replica, row: Any) -> bool:
        """Note a status row (STATUS_SQL); True when the replica is fit to serve reads."""
        health = _health_of(replica)
        standby, replayed, lag, paused = row
        health.checked_at = time.monotonic()
        health.standby = bool(standby)
        health.replay_position = int(replayed)
        health.lag = float(lag)
        health.paused = bool(paused)
        health.down_until = health.backoff = 0.0
        if not health.standby:
            self._unfit(
                health,
                "not_standby",
                f"Replica {replica.name} is not a standby (pg_is_in_recovery() is false); reads skip it. "
                "List only streaming replicas in DATABASE_REPLICA_URLS.",
            )
            return False
        if health.lag > self.max_lag:
            self._unfit(
                health,
                "lagging",
                f"Replica {replica.name} is {health.lag:.1f}s behind the primary, more than "
                f"DATABASE_REPLICA_MAX_LAG={self.max_lag:g}s; reads skip it until it catches up.",
            )
            return False
        if health.logged:
            logger.info("Replica %s serves reads again.", replica.name)
            health.logged = ""
        return True

    def mark_down(self, replica: Replica, error: BaseException) -> None:
        """`replica` failed to connect or begin: skip it, and probe it again after a backoff."""
        health = _health_of(replica)
        health.backoff = min(max(health.backoff * 2, _RETRY_FIRST), _RETRY_MAX)
        health.checked_at = time.monotonic()
        health.down_until = health.checked_at + health.backoff
        self._unfit(
            health,
            "down",
            f"Replica {replica.name} is unavailable ({_reason(error)}); reads skip it and go elsewhere. "
            "It is tried again in the background.",
        )

    def _unfit(self, health: _Health, state: str, message: str) -> None:
        if health.logged != state:
            logger.warning(message)
            health.logged = state
        else:
            logger.debug(message)

    def _probe(self, replica: Replica, health: _Health) -> None:
        """Check `replica` in a background task (one at a time); the outcome updates its health."""
        if health.probing:
            return
        health.probing = True
        task = asyncio.get_running_loop().create_task(self._run_probe(replica, health))
        _probes.add(task)
        task.add_done_callback(_probes.discard)

    async def _run_probe(self, replica: Replica, health: _Health) -> None:
        try:
            async with asyncio.timeout(self.timeout), self.engine(replica).connect() as connection:
                raw = await connection.get_raw_connection()
                driver: Any = raw.driver_connection
                try:
                    row = await driver.fetchrow(STATUS_SQL)
                except BaseException:
                    # Interrupted mid-statement (failed, timed out or cancelled): its state is
                    # unknown, so it is dropped rather than pooled, as SQLAlchemy does when one of
                    # its own statements is interrupted. No I/O: a cancelled task must not wait.
                    driver.terminate()
                    raw.invalidate()
                    raise
        except Exception as error:  # noqa: BLE001 - any failure means "still unavailable"
            self.mark_down(replica, error)
        else:
            self.record(replica, row)
        finally:
            health.probing = False


def _rotated(items: list[Replica], turn: int) -> list[Replica]:
    if len(items) < 2:
        return items
    start = turn % len(items)
    return items[start:] + items[:start]


def _reason(error: BaseException) -> str:
    """Why a replica failed, for a log line: never a password (our errors and asyncpg's carry none)."""
    if isinstance(error, DatabaseUnavailableError):
        return error.message
    if isinstance(error, TimeoutError):
        return "no answer within DATABASE_CONNECT_TIMEOUT"
    return describe_error(error)


def remember_replicas(engine: AsyncEngine, config: DatabaseConfig) -> None:
    """Note which replicas reads of `engine`'s sessions may use (called by `get_db`; cheap)."""
    if config.DATABASE_REPLICA_URLS:
        current = _sets.get(engine)
        if current is None or current.config is not config:
            _sets[engine] = ReplicaSet(config)
    elif _sets:
        _sets.pop(engine, None)


def replicas_of(engine: AsyncEngine) -> ReplicaSet | None:
    """The `ReplicaSet` of `engine`, or None when its config has no replicas."""
    return _sets.get(engine) if _sets else None


def forget_replicas() -> None:
    """Forget every replica's health and stop background probes (called by `dispose_engines`)."""
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    for task in list(_probes):
        with contextlib.suppress(RuntimeError):
            if task.get_loop() is loop:
                task.cancel()
    _probes.clear()
    _health.clear()
    _sets.clear()


def replica_status(config: DatabaseConfig) -> list[dict[str, Any]]:
    """What this process knows of `config`'s replicas, for health pages and logs (no I/O).

    One dict per replica: `replica` (host, port, database; never credentials), `state`
    (`unknown`, `ok`, `lagging`, `not_standby` or `down`), `lag` (seconds), `replayed` (the
    replay position, `X/Y`) and `checked_ago` (seconds since its status was read, or None).
    """
    now = time.monotonic()
    report = []
    for replica in (_replica(url) for url in config.DATABASE_REPLICA_URLS):
        health = _health.get(replica.key)
        if health is None or health.checked_at == float("-inf"):
            unknown: dict[str, Any] = {"state": "unknown", "lag": None, "replayed": None, "checked_ago": None}
            report.append({"replica": replica.name, **unknown})
            continue
        if health.down_until:
            state = "down"
        elif not health.standby:
            state = "not_standby"
        elif health.lag > config.DATABASE_REPLICA_MAX_LAG:
            state = "lagging"
        else:
            state = "ok"
        report.append(
            {
                "replica": replica.name,
                "state": state,
                "lag": health.lag,
                "replayed": format_position(health.replay_position),
                "checked_ago": round(now - health.checked_at, 3),
            }
        )
    return report


on_dispose(forget_replicas)  # dispose_engines forgets the replicas' health and stops their probes
