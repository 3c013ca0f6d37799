"""`database_lifespan`: the one line an app adds so its pools close when the server stops."""

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from mountaineer_db.config import DatabaseConfig
from mountaineer_db.engine import dispose_engines

__all__ = ["database_lifespan"]


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
    starts or reuses the embedded PostgreSQL at startup (`mountaineer_db.embedded`), and leaves
    it at shutdown: the server stops once no process of the app uses it any more.
    """
    embedded = _registered_embedded_config()
    if embedded is None:
        try:
            yield
        finally:
            await dispose_engines()
        return
    from mountaineer_db.embedded import DEFAULT_DIRECTORY, ensure_embedded_database, stop_embedded_database

    directory = os.path.join(os.getcwd(), DEFAULT_DIRECTORY)
    ensure_embedded_database(embedded, directory=directory)
    try:
        yield
    finally:
        await dispose_engines()
        stop_embedded_database(directory)


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
