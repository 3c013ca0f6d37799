"""`database_lifespan`: the one line an app adds so its pools close when the server stops.

It also starts the development database (`DATABASE_EMBEDDED=true`) when the app starts. An
app without it still gets that database: the first request (or `database_session()`) starts
it through `with_development_database`.
"""

import contextlib
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

from mountaineer_db.engines.engine import dispose_engines
from mountaineer_db.servers.embedded import (
    DEFAULT_DIRECTORY,
    ensure_embedded_database,
    points_at_embedded_server,
    set_database_preparer,
    stop_embedded_database,
)
from mountaineer_db.settings.config import DatabaseConfig

__all__ = ["database_lifespan", "with_development_database"]

_starting = threading.Lock()
_started: dict[int, tuple[DatabaseConfig, DatabaseConfig]] = {}
"""id(config) -> (config, its copy on the development database); checked against the running servers."""


@contextlib.asynccontextmanager
async def database_lifespan(app: Any) -> AsyncIterator[None]:
    """An app lifespan that closes this process's engines when the server shuts down.

    ```python
    controller = AppController(config=AppConfig(), fastapi_args={"lifespan": database_lifespan})
    ```

    Servers stopped with SIGTERM (uvicorn, gunicorn) exit as soon as the lifespan has ended,
    before their event loop could dispose the engines itself; pooled connections would be
    dropped rather than closed. An app with a lifespan of its own awaits `dispose_engines()`
    at its end instead.

    With `DATABASE_EMBEDDED=true` in the registered app config (development only), it also
    starts or reuses the embedded PostgreSQL at startup (`mountaineer_db.servers.embedded`), and leaves
    it at shutdown: the server stops once no process of the app uses it any more.
    """
    embedded = _registered_embedded_config()
    if embedded is None:
        try:
            yield
        finally:
            await dispose_engines()
        return
    directory = os.path.join(os.getcwd(), DEFAULT_DIRECTORY)
    ensure_embedded_database(embedded, directory=directory)
    try:
        yield
    finally:
        await dispose_engines()
        stop_embedded_database(directory)


def with_development_database(config: DatabaseConfig) -> DatabaseConfig:
    """`config`, or when it asks for the development database, its copy pointing at that database.

    What the request dependencies and `database_session()` use, so an app without
    `database_lifespan` works too: the first call for a config starts (or reuses) the
    embedded PostgreSQL under `.mountaineer_db/` of the working directory and applies the
    migrations, as the lifespan would; a registered config is replaced by the copy, so later
    requests find that one. The server stops when the process exits. Any other config comes
    back as it is (cheap: the request path calls this every time).
    """
    if not config.DATABASE_EMBEDDED or config.SQLALCHEMY_DATABASE_URI is not None:
        return config
    with _starting:  # one start per config, whichever thread or event loop asks first
        found = _started.get(id(config))
        if found is not None and found[0] is config and points_at_embedded_server(found[1]):
            return found[1]
        started = ensure_embedded_database(config, directory=os.path.join(os.getcwd(), DEFAULT_DIRECTORY))
        _started[id(config)] = (config, started)
        return started


def _registered_embedded_config() -> DatabaseConfig | None:
    """The registered app config when it asks for the embedded database and has none yet."""
    from mountaineer import config as mountaineer_config

    registered = mountaineer_config.APP_CONFIG
    if (
        isinstance(registered, DatabaseConfig)
        and registered.DATABASE_EMBEDDED
        and not registered.SQLALCHEMY_DATABASE_URI
    ):
        return registered
    return None


async def _prepare_development_database(
    config: DatabaseConfig, *, create_database: bool, apply_migrations: bool
) -> None:
    # Imported here for import time only: the migrations package loads Alembic (slow), which an app
    # needs only when its development database starts.
    from mountaineer_db.migrations.admin import prepare_development_database

    await prepare_development_database(config, create_database=create_database, apply_migrations=apply_migrations)


set_database_preparer(_prepare_development_database)  # the embedded server (servers/) cannot import migrations
