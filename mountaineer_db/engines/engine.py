"""Engines: built lazily from a `DatabaseConfig`, cached per process, event loop and settings.

Lifecycle, as deploys actually run (many `asyncio.run()` calls, forks, reloads):

- An engine belongs to the process and the event loop that made it; `engine_for` never
  hands it to another loop or to a forked child.
- When its loop shuts down through `asyncio.run()` / `asyncio.Runner` (scripts, CLI commands,
  job runners, pytest-asyncio, uvicorn stopped with Ctrl-C), the loop's engines are disposed
  while the loop still runs: their connections are closed properly, with no hook to write.
  Servers stopped with SIGTERM (uvicorn, gunicorn's uvicorn workers, so every deploy and
  worker restart) exit right after the app's lifespan ends, before that: pass
  `database_lifespan` as the app's lifespan, or await `dispose_engines()` at the end of yours.
- Engines of a loop that was closed some other way are released at the latest by the next
  `engine_for` or `dispose_engines()`, without the dead loop: their sockets are closed.
- A forked child never closes, terminates or uses its parent's connections: closing them
  would send the server a Terminate on the parent's session, and asyncpg's cleanup would
  remove the parent's socket from the epoll set parent and child share. The child keeps
  them, untouched, for the rest of its life and builds its own engines.
- `dispose_engines()` with sessions in flight: they finish normally; their connections
  are closed when they come back instead of returning to a pool.
"""

import asyncio
import contextlib
import gc
import logging
import os
import threading
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy.ext.asyncio as sqlalchemy_asyncio
from sqlalchemy import event, exc
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from mountaineer_db.engines.connections import Connector, translate_driver_error
from mountaineer_db.engines.failover import install_demoted_primary_recovery
from mountaineer_db.engines.metrics import EngineStats, MeasuredNullPool, MeasuredQueuePool, install_metrics
from mountaineer_db.engines.origins import enable_tagging
from mountaineer_db.engines.pooler_statements import PoolerConnection, PoolerStatements
from mountaineer_db.engines.request_checks import install_request_checks
from mountaineer_db.engines.scram import clear_scram_cache
from mountaineer_db.engines.slow_queries import install_slow_query_log
from mountaineer_db.engines.stale_statements import install_stale_statement_recovery
from mountaineer_db.engines.tenants import forget_on_checkin
from mountaineer_db.exceptions import describe_target
from mountaineer_db.settings.config import DatabaseConfig, PoolType
from mountaineer_db.settings.urls import without_password

__all__ = [
    "cached_engines",
    "describe_target",
    "dispose_engines",
    "engine_for",
    "engines_on_this_loop",
    "on_dispose",
    "on_engine_built",
]

logger = logging.getLogger("mountaineer_db")

_ENGINE_FIELDS = (
    "DATABASE_POOL_TYPE",
    "DATABASE_POOL_SIZE",
    "DATABASE_MAX_OVERFLOW",
    "DATABASE_POOL_TIMEOUT",
    "DATABASE_POOL_RECYCLE",
    "DATABASE_POOL_PRE_PING",
    "DATABASE_STATEMENT_CACHE_SIZE",
    "DATABASE_POOLER_PREPARED_STATEMENTS",
    "DATABASE_ECHO",
    "DATABASE_CONNECT_TIMEOUT",
    "DATABASE_COMMAND_TIMEOUT",
    "DATABASE_STATEMENT_TIMEOUT",
    "DATABASE_LOCK_TIMEOUT",
    "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT",
    "POSTGRES_SSLMODE",
    "DATABASE_SCRAM_CACHE",
    "DATABASE_TAG_REQUESTS",
    "DATABASE_SLOW_QUERY_THRESHOLD",
    "DATABASE_TENANT_SETTING",
    "DATABASE_TENANT_BYPASS_ROLE",
    "DATABASE_N_PLUS_ONE_THRESHOLD",
    "lazy_loads",  # DATABASE_LAZY_LOADS resolved (its default follows ENVIRONMENT)
)
"""Every setting `_build_engine` reads; two configs differing in any of them get two engines."""


def _build_engine(config: DatabaseConfig, url: URL) -> tuple[AsyncEngine, "_Retirement"]:
    fixed = config.DATABASE_POOL_TYPE is PoolType.FIXED_PROCESS
    pooler = config.DATABASE_POOLER_PREPARED_STATEMENTS
    cache_size = config.DATABASE_STATEMENT_CACHE_SIZE
    if cache_size is None:
        cache_size = 100 if fixed or pooler else 0
    if pooler:
        # Named statements through PgBouncer >= 1.21: checked at the first connection, texts
        # renewed after a schema change (mountaineer_db.engines.pooler_statements).
        statements = PoolerStatements(describe_target(url, user=False))
        connector = Connector(
            config,
            url,
            statement_cache_size=cache_size,
            connection_class=PoolerConnection,
            on_connect=statements.on_connect,
        )
    else:
        connector = Connector(config, url, statement_cache_size=cache_size)
    holder: list[AsyncEngine] = []

    def creator() -> Any:
        # SQLAlchemy's asyncpg DBAPI wraps what our coroutine opens in its own adapter; this
        # is how SQLAlchemy's `async_creator` does it, plus the adapter's statement settings.
        return holder[0].sync_engine.dialect.dbapi.connect(  # type: ignore[union-attr]
            async_creator_fn=connector.connect,
            prepared_statement_cache_size=cache_size,
            prepared_statement_name_func=None if cache_size else _unnamed_statement,
        )

    stats = EngineStats(config.DATABASE_POOL_TYPE, config.application_name)
    kwargs: dict[str, Any] = {
        "echo": config.DATABASE_ECHO,
        "hide_parameters": True,
        "creator": stats.timed_creator(creator),  # connect latency (mountaineer_db.engines.metrics)
        # SQLAlchemy's pools, measured: checkouts, waits, timeouts.
        "poolclass": MeasuredQueuePool if fixed else MeasuredNullPool,
    }
    if fixed:
        # Forward only what the user set; SQLAlchemy's defaults stay in force otherwise.
        for setting, argument in (
            ("DATABASE_POOL_SIZE", "pool_size"),
            ("DATABASE_MAX_OVERFLOW", "max_overflow"),
            ("DATABASE_POOL_TIMEOUT", "pool_timeout"),
            ("DATABASE_POOL_RECYCLE", "pool_recycle"),
            ("DATABASE_POOL_PRE_PING", "pool_pre_ping"),
        ):
            value = getattr(config, setting)
            if value is not None:
                kwargs[argument] = value
    # The URL only names the dialect and the target, for logs, reprs and metrics: no password in
    # it (the connector above holds it). Through the module attribute: OpenTelemetry's SQLAlchemy
    # instrumentation hooks it (`tracing`).
    engine = sqlalchemy_asyncio.create_async_engine(without_password(url), **kwargs)
    holder.append(engine)
    retirement = _Retirement(pooled=fixed)
    install_metrics(engine, stats)
    for hook in _built_hooks:  # instrumentation a higher layer registered (tracing)
        hook(engine)
    event.listen(engine.sync_engine, "handle_error", translate_driver_error)
    if connector.tag_prefix is not None:
        enable_tagging(engine.sync_engine)
    if config.DATABASE_SLOW_QUERY_THRESHOLD is not None:  # no listeners (no cost) without a threshold
        install_slow_query_log(engine, config.DATABASE_SLOW_QUERY_THRESHOLD)
    install_stale_statement_recovery(engine)  # statements cached before a migration are never reused
    install_request_checks(engine, config)  # lazy loads, N+1 counts: nothing with `allow` and no threshold
    install_demoted_primary_recovery(engine)  # SQLSTATE 25006 outside read sessions: the primary was demoted
    # Listeners stay with the engine when `dispose()` replaces its pool.
    event.listen(engine.sync_engine.pool, "connect", _remember_pid)
    if config.DATABASE_TENANT_SETTING is not None:  # a tenant staged but never sent stays behind
        event.listen(engine.sync_engine.pool, "checkin", forget_on_checkin)
    if fixed:
        event.listen(engine.sync_engine.pool, "checkout", _check_pooled)
    return engine, retirement


def _unnamed_statement() -> str:
    return ""


_PID = "mountaineer_db.pid"


def _remember_pid(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    record.info[_PID] = os.getpid()


def _check_pooled(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection) -> None:
    """Pool checkout hook: never hand out a connection of another process, or one the server closed.

    - After a fork, a pooled connection made by the parent is set aside untouched (see the
      module docstring) and SQLAlchemy retries the checkout with a fresh connection: the
      recipe SQLAlchemy documents for pools used across `os.fork()`.
    - When a backend is terminated (pg_terminate_backend, a server restart, an idle
      timeout) the server closes the socket and asyncpg notices at once; checking that flag
      costs no I/O, unlike `pool_pre_ping`.
    """
    if record.info.get(_PID) != os.getpid():
        _keep_inherited(dbapi_connection)
        # SQLAlchemy's documented recipe; the pool then makes a new connection for this entry.
        record.dbapi_connection = proxy.dbapi_connection = None  # type: ignore[misc]
        raise exc.DisconnectionError("This pooled connection belongs to the parent process; opening a new one.")
    if dbapi_connection.driver_connection.is_closed():
        raise exc.DisconnectionError("The server closed this pooled connection while it was idle.")


@dataclass(eq=False)
class _Retirement:
    """Set when the engine is disposed: pooled connections still checked out are closed on return.

    The checkin listener that closes them is added only then (`retire`): until its engine is
    disposed, a connection going back to the pool pays nothing for it.
    """

    pooled: bool = False
    retired: bool = False

    def retire(self, engine: AsyncEngine) -> None:
        # On the engine's own loop, or once that loop is closed: no checkin runs meanwhile.
        if self.pooled and not self.retired:
            event.listen(engine.sync_engine.pool, "checkin", self.on_checkin)
        self.retired = True

    def on_checkin(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if self.retired and dbapi_connection is not None and record.info.get(_PID) == os.getpid():
            record.invalidate()


# -- The registry: per process, per event loop ---------------------------------------------


@dataclass(eq=False)
class _LoopEngines:
    """The engines of one event loop in this process."""

    loop: "weakref.ref[asyncio.AbstractEventLoop]"
    pid: int
    engines: dict[Hashable, tuple[AsyncEngine, _Retirement]] = field(default_factory=dict)
    # Per-request fast path: the same config object (and url object) as last time gives the
    # same engine without rebuilding the settings key (hashing a URL renders it, ~40 µs).
    recent: dict[tuple[int, int], tuple[DatabaseConfig, URL | None, AsyncEngine]] = field(default_factory=dict)
    closer: Any = None  # the async generator whose finalisation disposes the engines
    released: bool = False

    def take_engines(self) -> list[AsyncEngine]:
        """Mark this entry released and its engines retired; hand the engines over for closing."""
        self.released = True
        engines = []
        for engine, retirement in self.engines.values():
            retirement.retire(engine)
            engines.append(engine)
        self.engines.clear()
        self.recent.clear()
        return engines


_registry: dict[int, _LoopEngines] = {}
# Callbacks of higher layers (engines import none of them): see on_engine_built, on_dispose.
_built_hooks: list[Callable[[AsyncEngine], None]] = []
_dispose_hooks: list[Callable[[], None]] = []


def on_engine_built(hook: Callable[[AsyncEngine], None]) -> None:
    """Call `hook(engine)` for every engine built from now on (instrumentation of a higher layer)."""
    if hook not in _built_hooks:
        _built_hooks.append(hook)


def on_dispose(hook: Callable[[], None]) -> None:
    """Call `hook()` first thing in every `dispose_engines()` (state a higher layer built on engines)."""
    if hook not in _dispose_hooks:
        _dispose_hooks.append(hook)


_registry_lock = threading.Lock()
_inherited: list[Any] = []  # a forked child's copies of its parent's engines and connections
_RECENT_LIMIT = 16


def engine_for(config: DatabaseConfig, *, url: URL | None = None) -> AsyncEngine:
    """The engine for `config` on the running event loop, created on first use.

    `url` overrides the config's URL (the admin and migration commands pass the
    migrations URL). Engines are never shared between event loops or processes, so a test
    suite that runs each test in its own loop never sees "attached to a different loop".
    """
    loop = asyncio.get_running_loop()
    entry = _registry.get(id(loop))
    # A fork empties the registry in the child (`_after_fork_in_child`), so no pid check here.
    if entry is None or entry.loop() is not loop or len(_registry) > 1:
        entry = _entry_for(loop)
    cached = entry.recent.get((id(config), id(url)))
    if cached is not None and cached[0] is config and cached[1] is url:
        return cached[2]
    target = url or config.database_url
    key = (target, config.application_name, *(getattr(config, name) for name in _ENGINE_FIELDS))
    built = entry.engines.get(key)
    if built is None:
        built = entry.engines[key] = _build_engine(config, target)
        logger.debug("Created engine for %s (%s pool)", describe_target(target), config.DATABASE_POOL_TYPE.value)
    if len(entry.recent) >= _RECENT_LIMIT:
        entry.recent.clear()
    entry.recent[(id(config), id(url))] = (config, url, built[0])
    return built[0]


def _entry_for(loop: asyncio.AbstractEventLoop) -> _LoopEngines:
    """The registry entry of `loop` in this process; releases the entries of closed loops."""
    with _registry_lock:
        dead = _pop_dead_entries()
        entry = _registry.get(id(loop))
        if entry is None or entry.loop() is not loop:
            entry = _registry[id(loop)] = _LoopEngines(weakref.ref(loop), os.getpid())
            entry.closer = _dispose_at_loop_shutdown(entry)
            # Run it to its first `yield` now (nothing before it does I/O): the running loop
            # registers it among its async generators, and `loop.shutdown_asyncgens()` (run
            # by asyncio.run and asyncio.Runner before they close the loop) finalises it,
            # disposing the engines while the loop can still do I/O.
            with contextlib.suppress(StopIteration):
                entry.closer.__anext__().send(None)
    for item in dead:
        _release_without_loop(item)
    return entry


async def _dispose_at_loop_shutdown(entry: _LoopEngines) -> AsyncIterator[None]:
    try:
        yield
    finally:
        if not entry.released:
            with _registry_lock:
                loop = entry.loop()
                if loop is not None and _registry.get(id(loop)) is entry:
                    del _registry[id(loop)]
            for engine in entry.take_engines():
                await engine.dispose()


async def _dispose_on_own_loop(entry: _LoopEngines) -> None:
    """Dispose `entry`'s engines; runs on the entry's own loop."""
    engines = entry.take_engines()
    closer, entry.closer = entry.closer, None
    if closer is not None:
        await closer.aclose()  # released: its `finally` does nothing
    for engine in engines:
        await engine.dispose()


def _pop_dead_entries() -> list[_LoopEngines]:
    """Remove the entries of loops that are closed or gone (caller holds the lock)."""
    dead = []
    for key, entry in list(_registry.items()):
        loop = entry.loop()
        if loop is None or loop.is_closed():
            dead.append(_registry.pop(key))
    return dead


def _release_without_loop(entry: _LoopEngines) -> None:
    """Close the sockets of a closed loop's engines; no I/O is possible on that loop any more.

    The pools let go of their connections, whose sockets garbage collection then closes
    (asyncpg cannot run its graceful close without the loop); the server sees them end.
    asyncpg's and asyncio's "unclosed" warnings are expected here and silenced.
    """
    engines = entry.take_engines()
    closer, entry.closer = entry.closer, None
    if closer is not None:
        # Finished here and now (its `finally` does nothing once released), so the loop's
        # async generator finaliser, which would need the closed loop, never runs.
        with contextlib.suppress(StopIteration, RuntimeError):
            closer.aclose().send(None)
    for engine in engines:
        engine.sync_engine.dispose(close=False)
    del engines
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def _keep_inherited(item: Any) -> None:
    """Keep a parent's engine or connection alive and untouched for the rest of this process.

    Nothing of it may be closed or finalised here: see the module docstring. The list is
    given one extra reference, so not even interpreter shutdown finalises what it holds.
    """
    if not _inherited:
        import ctypes

        ctypes.pythonapi.Py_IncRef(ctypes.py_object(_inherited))
    _inherited.append(item)


def _after_fork_in_child() -> None:
    entries = list(_registry.values())
    _registry.clear()
    for entry in entries:
        entry.released = True  # the inherited loop's shutdown, if it runs here, must not dispose them
        _keep_inherited(entry)


os.register_at_fork(after_in_child=_after_fork_in_child)


async def dispose_engines() -> None:
    """Close every cached engine of this process (and forget its SCRAM cache). Call on shutdown, and in tests.

    Engines of the running loop are disposed here; those of other running loops are
    disposed on their own loop; those of closed loops are released without I/O. Sessions
    still in flight finish normally, and their connections are closed when they come back.
    """
    for hook in _dispose_hooks:  # what higher layers built on these engines (replicas, their probes)
        hook()
    try:
        current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    with _registry_lock:
        entries = list(_registry.values())
        _registry.clear()
    clear_scram_cache()
    for entry in entries:
        loop = entry.loop()
        if loop is None or loop.is_closed():
            _release_without_loop(entry)
        elif loop is current:
            await _dispose_on_own_loop(entry)
        else:
            work = _dispose_on_own_loop(entry)
            try:
                asyncio.run_coroutine_threadsafe(work, loop)
            except RuntimeError:  # closed meanwhile
                work.close()
                _release_without_loop(entry)


def engines_on_this_loop() -> list[AsyncEngine]:
    """The engines cached for the running loop (for tests and diagnostics)."""
    entry = _registry.get(id(asyncio.get_running_loop()))
    return [engine for engine, _ in entry.engines.values()] if entry is not None else []


def cached_engines() -> list[AsyncEngine]:
    """Every engine cached in this process, on any event loop (for metrics and instrumentation)."""
    with _registry_lock:
        entries = list(_registry.values())
    return [engine for entry in entries for engine, _ in list(entry.engines.values())]
