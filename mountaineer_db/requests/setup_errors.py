""""Not set up yet": a clear answer when the app's tables do not exist (migrations not applied).

Without this, a page whose table is missing (SQLSTATE 42P01, undefined_table) is a bare 500
with a long traceback, and in development Mountaineer's own error page then fails on top of
it. Instead, request sessions (`session_scope`) turn that error into
`DatabaseNotSetUpError` and log one line naming the fix; `get_db_session` installs, on the
app the request came through, the exception handler that answers it:

- development (Mountaineer's ENVIRONMENT is not "production"): a page that says what to run,
  once: `mountaineer-db migrate apply` for an app with migrations, else
  `mountaineer-db createdb --create-tables`, with the `--config module:Class` of the registered
  config unless MOUNTAINEER_DB_CONFIG names it; or the same message as JSON `{"detail": ...}`
  for an action;
- production: the usual plain "Internal Server Error" 500, naming no table.

The handler goes into the dictionary Starlette's exception middleware consults for this
request (`scope["starlette.exception_handlers"]`, the app's own handlers), and into
`app.exception_handlers` for a rebuilt middleware stack: the same place
`app.add_exception_handler()` would have put it at startup. If a future Starlette no
longer offers it, the error is still an HTTP 500 answered by FastAPI's own handler, with a
generic detail (`tests/test_compat.py` names this dependency).
"""

import html
import importlib.util
import os
from pathlib import Path
from typing import Any, Final

from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from sqlalchemy import exc as sa_exc
from starlette.requests import HTTPConnection, Request

from mountaineer_db.exceptions import DatabaseNotSetUpError

__all__ = [
    "UNDEFINED_TABLE",
    "install_setup_page",
    "is_development",
    "not_set_up_error_for",
    "setup_commands",
    "setup_page_handler",
]

UNDEFINED_TABLE: Final = "42P01"
CONFIG_ENV_VAR: Final = "MOUNTAINEER_DB_CONFIG"  # as mountaineer_db.migrations reads it


def _registered_config() -> Any:
    from mountaineer.config import get_config

    try:
        return get_config()
    except ValueError:  # nothing registered
        return None


def _has_migrations(config: Any) -> bool | None:
    """Whether the app's package has revisions in `migrations/versions/`; None when unknown."""
    package = getattr(config, "PACKAGE", None)
    if not isinstance(package, str) or not package:
        return None
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        return None
    versions = Path(locations[0]) / "migrations" / "versions"
    return versions.is_dir() and any(versions.glob("*.py"))


def setup_commands(config: Any = None) -> tuple[str, ...]:
    """The `mountaineer-db` command(s) that create the tables of the app `config` belongs to.

    With `--config module:Class` naming the config's class unless MOUNTAINEER_DB_CONFIG
    already names it (the command cannot find an app config otherwise); `migrate apply` when
    the app has migrations, `createdb --create-tables` when it has none, both when unknown.
    """
    command = "mountaineer-db"
    cls = type(config)
    if config is not None and cls.__module__ not in {"__main__", "builtins"}:
        spec = f"{cls.__module__}:{cls.__qualname__}"
        if os.environ.get(CONFIG_ENV_VAR) != spec:
            command += f" --config {spec}"
    migrations = _has_migrations(config)
    if migrations is True:
        return (f"{command} migrate apply",)
    if migrations is False:
        return (f"{command} createdb --create-tables",)
    return (f"{command} migrate apply", f"{command} createdb --create-tables")


def _advice(commands: tuple[str, ...]) -> str:
    if len(commands) == 1:
        verb = "Apply the migrations" if commands[0].endswith("migrate apply") else "Create the tables"
        return f"{verb}: {commands[0]}"
    return f"Apply the migrations ({commands[0]}) or, for an app without migrations, create the tables ({commands[1]})."


def not_set_up_error_for(error: BaseException) -> DatabaseNotSetUpError | None:
    """The `DatabaseNotSetUpError` that `error` amounts to (a missing table), or None.

    Its advice names the commands for the registered app config (`setup_commands`).
    """
    if not isinstance(error, sa_exc.DBAPIError) or error.orig is None:
        return None
    code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    if code != UNDEFINED_TABLE:
        return None
    reason = str(getattr(error.orig, "__cause__", None) or error.orig).splitlines()[0]
    if ": " in reason and reason.startswith("<class"):  # SQLAlchemy 2.0 prefixes the driver's class
        reason = reason.split(": ", 1)[1]
    commands = setup_commands(_registered_config())
    not_set_up = DatabaseNotSetUpError(
        f"The database is not set up yet: {reason} (SQLSTATE {UNDEFINED_TABLE}). {_advice(commands)}"
    )
    not_set_up.reason = reason
    not_set_up.commands = commands
    return not_set_up


def is_development() -> bool:
    """True unless the registered Mountaineer config says ENVIRONMENT=production."""
    return getattr(_registered_config(), "ENVIRONMENT", "development") != "production"


_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Database not set up</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 46rem; margin: 4rem auto; line-height: 1.5">
<h1>The database is not set up yet</h1>
<p>PostgreSQL says: {reason} (SQLSTATE {code}).</p>
{steps}<p>Then reload this page.</p>
<p><small>Shown in development only; with ENVIRONMENT=production this is a plain 500.</small></p>
</body>
</html>
"""
_PRE: Final = '<pre style="background: #f3f3f3; padding: 0.75rem">{}</pre>\n'


def _page(error: DatabaseNotSetUpError) -> str:
    commands = error.commands or setup_commands(None)
    if len(commands) == 1:
        verb = "Apply the migrations" if commands[0].endswith("migrate apply") else "Create the tables"
        steps = f"<p>{verb}, in the project folder:</p>\n" + _PRE.format(html.escape(commands[0]))
    else:
        steps = (
            "<p>Apply the migrations, in the project folder:</p>\n"
            + _PRE.format(html.escape(commands[0]))
            + "<p>or, for an app without migrations, create the tables:</p>\n"
            + _PRE.format(html.escape(commands[1]))
        )
    reason = error.reason or str(error)
    return _PAGE.format(reason=html.escape(reason), code=UNDEFINED_TABLE, steps=steps)


async def setup_page_handler(request: Request, error: Exception) -> Response:
    """The exception handler for `DatabaseNotSetUpError` (see the module docstring)."""
    if not is_development():
        return PlainTextResponse("Internal Server Error", status_code=500)
    message = str(error)
    if request.method != "GET" or request.url.path.startswith("/internal/api/"):
        return JSONResponse({"detail": message}, status_code=500)
    page = _page(error) if isinstance(error, DatabaseNotSetUpError) else html.escape(message)
    return HTMLResponse(page, status_code=500)


def install_setup_page(request: HTTPConnection | None) -> None:
    """Make the app serving `request` answer `DatabaseNotSetUpError` with `setup_page_handler`."""
    if request is None:
        return
    handlers: Any = request.scope.get("starlette.exception_handlers")
    if isinstance(handlers, tuple) and handlers and isinstance(handlers[0], dict):
        handlers[0].setdefault(DatabaseNotSetUpError, setup_page_handler)
    app: Any = request.scope.get("app")
    registered = getattr(app, "exception_handlers", None)
    if isinstance(registered, dict):
        registered.setdefault(DatabaseNotSetUpError, setup_page_handler)
