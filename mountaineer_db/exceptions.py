"""Every error this library raises on purpose derives from `MountaineerDBError`.

Messages say what went wrong, which setting or input caused it, and what to do about
it. They never contain a password.
"""

from typing import Any

from fastapi import HTTPException
from pydantic import ValidationError

__all__ = [
    "ConfigurationError",
    "DatabaseConfigError",
    "DatabaseUnavailableError",
    "MountaineerDBError",
    "ResourceAlreadyExistsError",
    "ResourceNotFoundError",
]


class MountaineerDBError(Exception):
    """Base class of every error raised by mountaineer_db."""


class ConfigurationError(MountaineerDBError, ValueError):
    """A setting is missing, invalid or contradicts another one."""


class DatabaseConfigError(ValidationError, ConfigurationError):  # type: ignore[misc]
    """Raised when a `DatabaseConfig` cannot be built from the given values.

    It is a `pydantic.ValidationError` (so code that already catches those keeps
    working) and a `ConfigurationError`. Input values are never echoed back, so a
    password cannot leak through it.
    """


class DatabaseUnavailableError(MountaineerDBError, HTTPException):
    """The database could not be reached, refused us, or went away mid-request.

    It is also an HTTP 503 for FastAPI/Mountaineer: an action that hits it answers
    `503 Service Unavailable` with a `Retry-After` header instead of a bare 500.
    """

    def __init__(
        self,
        message: str,
        *,
        host: str | None = None,
        port: int | None = None,
        database: str | None = None,
        retry_after: int = 1,
    ) -> None:
        HTTPException.__init__(
            self,
            status_code=503,
            detail="The database is unavailable. Try again shortly.",
            headers={"Retry-After": str(retry_after)},
        )
        self.message = message
        self.host = host
        self.port = port
        self.database = database
        self.args = (message,)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __reduce__(self) -> Any:
        return (_rebuild_unavailable, (self.message, self.host, self.port, self.database))


def _rebuild_unavailable(
    message: str, host: str | None, port: int | None, database: str | None
) -> DatabaseUnavailableError:
    return DatabaseUnavailableError(message, host=host, port=port, database=database)


class ResourceNotFoundError(MountaineerDBError, LookupError):
    """Something that was asked for (a database, a revision, a row) does not exist."""


class ResourceAlreadyExistsError(MountaineerDBError):
    """Something that was to be created (a database, a migrations folder) already exists."""
