""""Not set up yet": a clear answer when the app's tables do not exist (migrations not applied).

Without this, a page whose table is missing (SQLSTATE 42P01, undefined_table) is a bare 500
with a long traceback, and in development Mountaineer's own error page then fails on top of
it. Instead, request sessions (`session_scope`) turn that error into
`DatabaseNotSetUpError` and log one line naming the fix; `get_db_session` installs, on the
app the request came through, the exception handler that answers it:

- development (Mountaineer's ENVIRONMENT is not "production"): a page that says what to run
  (`mountaineer-db migrate apply`, or `mountaineer-db createdb --create-tables`), or the same
  message as JSON `{"detail": ...}` for an action;
- production: the usual plain "Internal Server Error" 500, naming no table.

The handler goes into the dictionary Starlette's exception middleware consults for this
request (`scope["starlette.exception_handlers"]`, the app's own handlers), and into
`app.exception_handlers` for a rebuilt middleware stack: the same place
`app.add_exception_handler()` would have put it at startup. If a future Starlette no
longer offers it, the error is still an HTTP 500 answered by FastAPI's own handler, with a
generic detail (`tests/test_compat.py` names this dependency).
"""

import html
from typing import Any, Final

from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from sqlalchemy import exc as sa_exc
from starlette.requests import HTTPConnection, Request

from mountaineer_db.exceptions import DatabaseNotSetUpError

__all__ = ["UNDEFINED_TABLE", "install_setup_page", "is_development", "not_set_up_error_for", "setup_page_handler"]

UNDEFINED_TABLE: Final = "42P01"
FIX: Final = (
    "Apply the migrations with `mountaineer-db migrate apply` (or, for an app without migrations, "
    "create the tables with `mountaineer-db createdb --create-tables`)."
)


def not_set_up_error_for(error: BaseException) -> DatabaseNotSetUpError | None:
    """The `DatabaseNotSetUpError` that `error` amounts to (a missing table), or None."""
    if not isinstance(error, sa_exc.DBAPIError) or error.orig is None:
        return None
    code = getattr(error.orig, "sqlstate", None) or getattr(error.orig, "pgcode", None)
    if code != UNDEFINED_TABLE:
        return None
    reason = str(getattr(error.orig, "__cause__", None) or error.orig).splitlines()[0]
    if ": " in reason and reason.startswith("<class"):  # SQLAlchemy 2.0 prefixes the driver's class
        reason = reason.split(": ", 1)[1]
    return DatabaseNotSetUpError(f"The database is not set up yet: {reason} (SQLSTATE {UNDEFINED_TABLE}). {FIX}")


def is_development() -> bool:
    """True unless the registered Mountaineer config says ENVIRONMENT=production."""
    from mountaineer.config import get_config

    try:
        config = get_config()
    except ValueError:  # nothing registered
        config = None
    return getattr(config, "ENVIRONMENT", "development") != "production"


_PAGE = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Database not set up</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 46rem; margin: 4rem auto; line-height: 1.5">
<h1>The database is not set up yet</h1>
<p>{message}</p>
<p>Apply the migrations:</p>
<pre style="background: #f3f3f3; padding: 0.75rem">mountaineer-db migrate apply</pre>
<p>or, for an app without migrations, create the tables:</p>
<pre style="background: #f3f3f3; padding: 0.75rem">mountaineer-db createdb --create-tables</pre>
<p>Then reload this page.</p>
<p><small>Shown in development only; with ENVIRONMENT=production this is a plain 500.</small></p>
</body>
</html>
"""


async def setup_page_handler(request: Request, error: Exception) -> Response:
    """The exception handler for `DatabaseNotSetUpError` (see the module docstring)."""
    if not is_development():
        return PlainTextResponse("Internal Server Error", status_code=500)
    message = str(error)
    if request.method != "GET" or request.url.path.startswith("/internal/api/"):
        return JSONResponse({"detail": message}, status_code=500)
    return HTMLResponse(_PAGE.format(message=html.escape(message)), status_code=500)


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
