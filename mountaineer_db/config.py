"""`DatabaseConfig`: the database settings, as a mixin for a Mountaineer `ConfigBase`.

```python
from mountaineer import ConfigBase
from mountaineer_db import DatabaseConfig

class AppConfig(DatabaseConfig, ConfigBase):
    PACKAGE: str | None = "myapp"
    POSTGRES_DB: str = "myapp"
```

Every field reads the environment variable of the same name (and `.env`). Building the
config does no I/O beyond reading those; it validates every value and raises
`DatabaseConfigError` naming the field and the fix.
"""

import ipaddress
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    AliasChoices,
    Field,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from mountaineer_db.exceptions import DatabaseConfigError

__all__ = ["DatabaseConfig", "DatabaseURL", "PoolType", "SSLMode"]

_POSTGRES_SCHEMES = {"postgres", "postgresql", "postgresql+asyncpg"}
_URL_QUERY_KEYS = {"sslmode", "ssl", "application_name"}


class PoolType(StrEnum):
    """How engines hold connections."""

    NULL = "NULL"
    """No client-side pool: a connection per session, for use behind PgBouncer (default)."""
    FIXED_PROCESS = "FIXED_PROCESS"
    """A fixed-size pool in each process, sized by the DATABASE_POOL_* settings."""


class SSLMode(StrEnum):
    """libpq's sslmode values."""

    DISABLE = "disable"
    ALLOW = "allow"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"


def _parse_url(value: Any) -> URL:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, URL):
        url = value
    elif isinstance(value, str):
        try:
            url = make_url(value.strip())
        except (ArgumentError, ValueError):
            raise ValueError(
                "is not a database URL; expected postgresql://USER:PASSWORD@HOST:PORT/DBNAME "
                "(percent-encode special characters in the user and password)"
            ) from None
    else:
        raise ValueError("must be a postgresql:// URL string")
    if url.drivername not in _POSTGRES_SCHEMES:
        raise ValueError(
            f"uses the scheme {url.drivername!r}; mountaineer_db needs a PostgreSQL URL "
            "starting with postgresql://, postgres:// or postgresql+asyncpg://"
        )
    unknown = set(url.query) - _URL_QUERY_KEYS
    if unknown:
        raise ValueError(
            f"has unsupported query parameters {sorted(unknown)}; supported: "
            f"{sorted(_URL_QUERY_KEYS)}. Use the DATABASE_* settings for the rest"
        )
    try:
        url.port  # noqa: B018 - make_url parses the port lazily; surface errors now
    except ValueError:
        raise ValueError("has a port that is not a number") from None
    return url.set(drivername="postgresql+asyncpg")


DatabaseURL = Annotated[
    URL,
    PlainValidator(_parse_url),
    # Dumped (and shown) with the password masked; use `render_as_string(hide_password=False)`
    # on the URL object when the real value is needed.
    PlainSerializer(lambda url: url.render_as_string(hide_password=True), return_type=str),
    WithJsonSchema({"type": "string", "format": "uri"}),
]
"""A PostgreSQL URL, validated and normalised to the asyncpg driver (a SQLAlchemy `URL`)."""


def _is_loopback(host: str | None) -> bool:
    if host is None or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DatabaseConfig(BaseSettings):
    """PostgreSQL settings. Mix into the app's config: `class AppConfig(DatabaseConfig, ConfigBase)`."""

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
        populate_by_name=True,
        use_attribute_docstrings=True,
    )

    # -- Connection -----------------------------------------------------------------
    POSTGRES_HOST: str | None = None
    """Server host name, IP address, or a Unix socket directory. Required unless a URL is set."""
    POSTGRES_PORT: int = 5432
    """Server port (default 5432)."""
    POSTGRES_USER: str | None = None
    """Role to log in as (default: the server's default, usually the OS user name)."""
    POSTGRES_PASSWORD: SecretStr | None = None
    """Password for POSTGRES_USER; kept secret in reprs, logs and errors (default: none)."""
    POSTGRES_DB: str | None = None
    """Database name. Required unless a URL is set."""
    POSTGRES_SSLMODE: SSLMode | None = None
    """libpq sslmode. Default: `disable` for localhost/loopback/socket hosts, else `prefer`."""
    SQLALCHEMY_DATABASE_URI: DatabaseURL | None = Field(
        default=None,
        validation_alias=AliasChoices("SQLALCHEMY_DATABASE_URI", "DATABASE_URL"),
    )
    """Full URL instead of the POSTGRES_* parts (alias DATABASE_URL). After validation it
    always holds the effective URL (asyncpg driver), password masked when shown."""

    # -- Pooling -------------------------------------------------------------------
    DATABASE_POOL_TYPE: PoolType = PoolType.NULL
    """NULL (default): no client pool, an external pooler is assumed. FIXED_PROCESS: a pool per process."""
    DATABASE_POOL_SIZE: int | None = None
    """FIXED_PROCESS only: connections kept open (SQLAlchemy default 5)."""
    DATABASE_MAX_OVERFLOW: int | None = None
    """FIXED_PROCESS only: extra connections allowed above the pool size (SQLAlchemy default 10)."""
    DATABASE_POOL_TIMEOUT: float | None = None
    """FIXED_PROCESS only: seconds to wait for a free connection (SQLAlchemy default 30)."""
    DATABASE_POOL_RECYCLE: float | None = None
    """FIXED_PROCESS only: seconds after which a pooled connection is replaced (default never)."""
    DATABASE_POOL_PRE_PING: bool | None = None
    """FIXED_PROCESS only: test each connection when it is checked out (default off)."""
    DATABASE_STATEMENT_CACHE_SIZE: int | None = None
    """Prepared statements cached per connection. Default: 0 for NULL (PgBouncer-safe
    unnamed statements), 100 for FIXED_PROCESS. Set 0 for FIXED_PROCESS behind PgBouncer."""

    # -- Behaviour -----------------------------------------------------------------
    DATABASE_ECHO: bool = False
    """Log every SQL statement (parameters are never logged)."""
    DATABASE_APPLICATION_NAME: str | None = None
    """application_name shown in pg_stat_activity (default: the app's PACKAGE)."""

    # -- Timeouts (seconds) --------------------------------------------------------
    DATABASE_CONNECT_TIMEOUT: float = 5.0
    """Seconds allowed to open a connection, TCP and authentication included (default 5)."""
    DATABASE_COMMAND_TIMEOUT: float | None = None
    """Client-side limit on any one statement, BEGIN and COMMIT included (default none)."""
    DATABASE_STATEMENT_TIMEOUT: float | None = None
    """Server statement_timeout, set per transaction so it holds through PgBouncer (default none)."""
    DATABASE_LOCK_TIMEOUT: float | None = None
    """Server lock_timeout, set per transaction (default none)."""
    DATABASE_IDLE_IN_TRANSACTION_TIMEOUT: float | None = None
    """Server idle_in_transaction_session_timeout, set per transaction (default none)."""

    # -- Migrations and development ------------------------------------------------
    MIGRATIONS_DATABASE_URI: DatabaseURL | None = None
    """Direct URL for migrations and admin commands when the app talks to PgBouncer (default: the app URL)."""
    MIGRATIONS_METADATA: str | None = None
    """`module:attribute` of the MetaData to migrate (default: SQLModel.metadata after importing PACKAGE.models)."""
    MIGRATIONS_LOCK_TIMEOUT: float = 5.0
    """Seconds a migration's DDL may wait for a table lock before it fails and is rolled back (default 5)."""
    DATABASE_EMBEDDED: bool = False
    """Development only: start or reuse a local PostgreSQL under the project folder."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # pydantic merges model_config from the bases in order, so in
        # `class AppConfig(DatabaseConfig, ConfigBase)` BaseSettings' defaults (no .env,
        # extra="forbid") inherited through ConfigBase would override ours. This runs before
        # pydantic builds the subclass's schema, on the very dict it builds from.
        super().__init_subclass__(**kwargs)
        merged = cls.model_config
        if merged.get("env_file") is None:
            merged["env_file"] = ".env"
            merged["env_file_encoding"] = "utf-8"
        if merged.get("extra") == "forbid":
            merged["extra"] = "ignore"
        merged["hide_input_in_errors"] = True
        merged["populate_by_name"] = True

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise DatabaseConfigError.from_exception_data(
                exc.title,
                exc.errors(),  # type: ignore[arg-type]
                hide_input=True,
            ) from None

    @field_validator("DATABASE_POOL_TYPE", "POSTGRES_SSLMODE", mode="before")
    @classmethod
    def _enum_any_case(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and info.field_name == "DATABASE_POOL_TYPE":
            return value.strip().upper()
        if isinstance(value, str):
            return value.strip().lower()
        return value

    @model_validator(mode="after")
    def _check_and_resolve(self) -> "DatabaseConfig":
        problems = self._problems()
        if problems:
            raise ValueError("\n  ".join(problems))
        if self.SQLALCHEMY_DATABASE_URI is None and self.POSTGRES_HOST is not None:
            # Frozen model: fill in the derived URL once, the way `mountaineer.database` did.
            object.__setattr__(self, "SQLALCHEMY_DATABASE_URI", self._url_from_parts())
        return self

    def _problems(self) -> list[str]:
        problems: list[str] = []
        explicit = self.model_fields_set
        url = self.SQLALCHEMY_DATABASE_URI
        parts = [
            name
            for name in ("POSTGRES_HOST", "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")
            if name in explicit and getattr(self, name) is not None
        ]
        if url is not None and "SQLALCHEMY_DATABASE_URI" in explicit and parts:
            problems.append(
                f"SQLALCHEMY_DATABASE_URI (or DATABASE_URL) and {', '.join(parts)} are both set. "
                "Set either SQLALCHEMY_DATABASE_URI or POSTGRES_HOST/POSTGRES_DB, not both."
            )
        if url is None and not self.DATABASE_EMBEDDED:
            missing = [n for n in ("POSTGRES_HOST", "POSTGRES_DB") if not getattr(self, n)]
            if missing:
                problems.append(
                    f"{' and '.join(missing)} not set. Set POSTGRES_HOST and POSTGRES_DB "
                    "(plus POSTGRES_USER/POSTGRES_PASSWORD), or SQLALCHEMY_DATABASE_URI / "
                    "DATABASE_URL, or DATABASE_EMBEDDED=true for local development."
                )
        if url is not None and not url.database:
            problems.append(
                "SQLALCHEMY_DATABASE_URI has no database name; add it after the host: "
                "postgresql://USER:PASSWORD@HOST:PORT/DBNAME"
            )
        ports = [("POSTGRES_PORT", self.POSTGRES_PORT)]
        if url is not None and url.port is not None:
            ports.append(("SQLALCHEMY_DATABASE_URI port", url.port))
        for name, port in ports:
            if not 1 <= port <= 65535:
                problems.append(f"{name} is {port}; use a TCP port from 1 to 65535 (PostgreSQL's default is 5432).")
        problems.extend(self._pool_problems(explicit))
        for name in (
            "DATABASE_CONNECT_TIMEOUT",
            "DATABASE_COMMAND_TIMEOUT",
            "DATABASE_STATEMENT_TIMEOUT",
            "DATABASE_LOCK_TIMEOUT",
            "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT",
        ):
            value = getattr(self, name)
            if value is not None and not value > 0:
                problems.append(f"{name} is {value}; use a number of seconds greater than 0, or leave it unset.")
        if not self.MIGRATIONS_LOCK_TIMEOUT > 0:
            problems.append(
                f"MIGRATIONS_LOCK_TIMEOUT is {self.MIGRATIONS_LOCK_TIMEOUT}; use a number of seconds greater than 0 "
                "(default 5)."
            )
        if self.DATABASE_STATEMENT_CACHE_SIZE is not None and self.DATABASE_STATEMENT_CACHE_SIZE < 0:
            problems.append("DATABASE_STATEMENT_CACHE_SIZE must be 0 (no cache) or a positive number.")
        return problems

    def _pool_problems(self, explicit: set[str]) -> list[str]:
        problems: list[str] = []
        pool_fields = (
            "DATABASE_POOL_SIZE",
            "DATABASE_MAX_OVERFLOW",
            "DATABASE_POOL_TIMEOUT",
            "DATABASE_POOL_RECYCLE",
            "DATABASE_POOL_PRE_PING",
        )
        if self.DATABASE_POOL_TYPE is PoolType.NULL:
            stray = [n for n in pool_fields if n in explicit and getattr(self, n) is not None]
            if stray:
                problems.append(
                    f"{', '.join(stray)} only apply when DATABASE_POOL_TYPE=FIXED_PROCESS. "
                    "Set DATABASE_POOL_TYPE=FIXED_PROCESS, or remove them (with the default NULL "
                    "pool, PgBouncer does the pooling)."
                )
        if self.DATABASE_POOL_SIZE is not None and self.DATABASE_POOL_SIZE < 1:
            problems.append(f"DATABASE_POOL_SIZE is {self.DATABASE_POOL_SIZE}; use 1 or more connections.")
        if self.DATABASE_MAX_OVERFLOW is not None and self.DATABASE_MAX_OVERFLOW < 0:
            problems.append(f"DATABASE_MAX_OVERFLOW is {self.DATABASE_MAX_OVERFLOW}; use 0 or more.")
        if self.DATABASE_POOL_TIMEOUT is not None and self.DATABASE_POOL_TIMEOUT <= 0:
            problems.append("DATABASE_POOL_TIMEOUT must be a number of seconds greater than 0.")
        return problems

    def _url_from_parts(self) -> URL:
        password = self.POSTGRES_PASSWORD.get_secret_value() if self.POSTGRES_PASSWORD else None
        return URL.create(
            "postgresql+asyncpg",
            username=self.POSTGRES_USER,
            password=password,
            host=self.POSTGRES_HOST,
            port=self.POSTGRES_PORT,
            database=self.POSTGRES_DB,
        )

    # -- Derived values ------------------------------------------------------------
    @property
    def database_url(self) -> URL:
        """The effective connection URL (asyncpg driver). `str()` of it masks the password."""
        if self.SQLALCHEMY_DATABASE_URI is None:
            raise DatabaseConfigError.from_exception_data(
                type(self).__name__,
                [
                    {
                        "type": "value_error",
                        "loc": ("POSTGRES_HOST",),
                        "input": None,
                        "ctx": {
                            "error": ValueError(
                                "no database location yet: DATABASE_EMBEDDED is on but the embedded "
                                "server has not been started; call mountaineer_db.embedded.ensure_embedded_database()"
                            )
                        },
                    }
                ],
                hide_input=True,
            )
        return self.SQLALCHEMY_DATABASE_URI

    @property
    def migrations_url(self) -> URL:
        """URL for migrations and admin commands: MIGRATIONS_DATABASE_URI, else the app URL."""
        return self.MIGRATIONS_DATABASE_URI or self.database_url

    @property
    def application_name(self) -> str | None:
        """DATABASE_APPLICATION_NAME, else the app's PACKAGE."""
        package = getattr(self, "PACKAGE", None)
        return self.DATABASE_APPLICATION_NAME or (package if isinstance(package, str) else None)

    def sslmode_for(self, url: URL) -> SSLMode:
        """The sslmode used for `url`: the URL's own `sslmode`, POSTGRES_SSLMODE, or the default."""
        raw = url.query.get("sslmode") or url.query.get("ssl")
        if isinstance(raw, tuple):
            raw = raw[-1]
        if raw:
            try:
                return SSLMode(str(raw).lower())
            except ValueError:
                raise DatabaseConfigError.from_exception_data(
                    type(self).__name__,
                    [
                        {
                            "type": "value_error",
                            "loc": ("SQLALCHEMY_DATABASE_URI",),
                            "input": None,
                            "ctx": {"error": ValueError(f"sslmode must be one of {[m.value for m in SSLMode]}")},
                        }
                    ],
                    hide_input=True,
                ) from None
        if self.POSTGRES_SSLMODE is not None:
            return self.POSTGRES_SSLMODE
        return SSLMode.DISABLE if _is_loopback(url.host) else SSLMode.PREFER
