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

from collections.abc import Mapping
from enum import StrEnum
from typing import Any, Self

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import URL

from mountaineer_db.exceptions import DatabaseConfigError
from mountaineer_db.settings.checks import config_problems, deploy_environment
from mountaineer_db.settings.multi_host import host_list, with_session_attrs
from mountaineer_db.settings.sources import collecting_origins, recording_sources
from mountaineer_db.settings.urls import (
    DatabaseURL,
    SSLMode,
    is_loopback,
    resolve_replica_urls,
    split_url_list,
)

__all__ = ["DatabaseConfig", "DatabaseURL", "LazyLoads", "PoolType", "ReadRouting", "SSLMode"]

class PoolType(StrEnum):
    """How engines hold connections."""

    NULL = "NULL"
    """No client-side pool: a connection per session, for use behind PgBouncer (default)."""
    FIXED_PROCESS = "FIXED_PROCESS"
    """A fixed-size pool in each process, sized by the DATABASE_POOL_* settings."""


class ReadRouting(StrEnum):
    """Which requests read from a replica (DATABASE_READ_ROUTING)."""

    PRIMARY = "primary"
    """Every session is on the primary; only `get_db_read_session` reads from a replica (default)."""
    RENDERS = "renders"
    """GET requests (page renders) read from a replica too; actions and re-renders stay on the primary."""


class LazyLoads(StrEnum):
    """What a lazy load of a relationship in a request session does (DATABASE_LAZY_LOADS; docs/loading.md)."""

    RAISE = "raise"
    """Fail at the point of access with `LazyLoadError`, also where it would have worked (development, tests)."""
    WARN = "warn"
    """Load where SQLAlchemy can (log once per model, attribute and controller); explain where it cannot."""
    ALLOW = "allow"
    """SQLAlchemy's own behaviour, nothing added (`MissingGreenlet` in async code)."""


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
    """Server host name, IP address, or a Unix socket directory; several as `db1,db2:6432,db3` (a
    high-availability cluster: connections go to the one accepting writes). Required unless a URL is set."""
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
    unnamed statements), 100 for FIXED_PROCESS or with DATABASE_POOLER_PREPARED_STATEMENTS.
    Set 0 for FIXED_PROCESS behind a PgBouncer without prepared-statement support."""
    DATABASE_POOLER_PREPARED_STATEMENTS: bool = False
    """The pooler supports protocol-level named prepared statements (PgBouncer >= 1.21 with
    max_prepared_statements > 0): use named statements and the statement cache through it, with
    either pool type; checked at the first connection (default off: unnamed statements)."""

    # -- Behaviour -----------------------------------------------------------------
    DATABASE_ECHO: bool = False
    """Log every SQL statement (parameters are never logged)."""
    DATABASE_APPLICATION_NAME: str | None = None
    """application_name shown in pg_stat_activity (default: the app's PACKAGE)."""
    DATABASE_SCRAM_CACHE: bool = True
    """Reuse the SCRAM-derived key for the same password, salt and iteration count, in this process
    only: ~1 ms less CPU per new connection (RFC 5802 §5.1). Default on; false derives it every time."""
    DATABASE_TAG_REQUESTS: bool = False
    """Show each request's controller and action in pg_stat_activity.application_name (default off)."""
    DATABASE_SLOW_QUERY_THRESHOLD: float | None = None
    """Seconds after which a statement is logged as slow, one WARNING each (default: no slow-query log)."""
    DATABASE_LAZY_LOADS: LazyLoads | None = None
    """Lazy loads in request sessions: `raise`, `warn` or `allow` (default raise; warn with ENVIRONMENT=production)."""
    DATABASE_N_PLUS_ONE_THRESHOLD: int | None = None
    """Log an N+1 warning when one statement runs more than this many times in one request (default: off)."""

    # -- Tenants (docs/tenants.md) ----------------------------------------------------
    DATABASE_TENANT_SETTING: str | None = None
    """The PostgreSQL setting that carries the tenant, e.g. `app.tenant_id`: `SET LOCAL` with every
    BEGIN, '' when a transaction serves no tenant (default: unset, tenancy off)."""
    DATABASE_TENANT_BYPASS_ROLE: str | None = None
    """A role with BYPASSRLS the app role may SET ROLE to, for `tenant=ALL_TENANTS` (default: no bypass)."""

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

    # -- Read replicas (docs/replicas.md) -------------------------------------------
    DATABASE_REPLICA_URLS: list[DatabaseURL] = []
    """Streaming replicas to read from: comma-separated or a JSON list of URLs; user, password and
    database default to the primary's (default: none, every read goes to the primary)."""
    DATABASE_READ_ROUTING: ReadRouting = ReadRouting.PRIMARY
    """`primary` (default): only get_db_read_session reads from replicas. `renders`: GET requests too."""
    DATABASE_REPLICA_MAX_LAG: float = 5.0
    """Seconds a replica may fall behind the primary before reads skip it until it catches up (default 5)."""
    DATABASE_REPLICA_MAX_WAIT: float = 0.2
    """Seconds a read may wait for a replica to replay the client's last write, else it reads the primary (0.2)."""
    DATABASE_READ_YOUR_WRITES_KEYS: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("DATABASE_READ_YOUR_WRITES_KEYS", "DATABASE_READ_YOUR_WRITES_SECRET"),
    )
    """Keys signing the read-your-writes cookie, comma-separated, each 16+ characters, the same in every process:
    the first signs, any verifies (rotation). Required in production with replicas; without, a key per process."""

    # -- Migrations and development ------------------------------------------------
    MIGRATIONS_DATABASE_URI: DatabaseURL | None = None
    """Direct URL for migrations and admin commands when the app talks to PgBouncer (default: the app URL)."""
    MIGRATIONS_METADATA: str | None = None
    """`module:attribute` of the MetaData to migrate (default: SQLModel.metadata after importing PACKAGE.models)."""
    MIGRATIONS_LOCK_TIMEOUT: float = 5.0
    """Seconds a migration's DDL may wait for a table lock before it fails and is rolled back (default 5)."""
    DATABASE_EMBEDDED: bool = False
    """Development only: start or reuse a local PostgreSQL under the project folder."""

    _url_from_parts_: bool = PrivateAttr(default=False)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Runs before pydantic builds the subclass's fields and schema, on the very dicts it
        # builds them from. pydantic merges model_config from the bases in order, so in
        # `class AppConfig(DatabaseConfig, ConfigBase)` BaseSettings' defaults (no .env,
        # extra="forbid") inherited through ConfigBase would override ours.
        super().__init_subclass__(**kwargs)
        merged = cls.model_config
        if merged.get("env_file") is None:
            merged["env_file"] = ".env"
            merged["env_file_encoding"] = "utf-8"
        if merged.get("extra") == "forbid":
            merged["extra"] = "ignore"
        merged["hide_input_in_errors"] = True
        merged["populate_by_name"] = True
        # `POSTGRES_PASSWORD: str = "..."`, as mountaineer.database's docs taught: kept secret anyway.
        # The class's own annotations dict, which pydantic reads next (inspect.get_annotations copies).
        annotations = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
        if "POSTGRES_PASSWORD" in annotations and "SecretStr" not in str(annotations["POSTGRES_PASSWORD"]):
            annotations["POSTGRES_PASSWORD"] = SecretStr | None
            default = cls.__dict__.get("POSTGRES_PASSWORD")
            if isinstance(default, str):
                cls.POSTGRES_PASSWORD = SecretStr(default)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """pydantic-settings' sources in its order, noting where each value came from (for errors)."""
        return recording_sources(settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings)

    def __init__(self, **values: Any) -> None:
        try:
            with collecting_origins():
                super().__init__(**values)
        except ValidationError as exc:
            raise DatabaseConfigError.from_exception_data(
                exc.title,
                exc.errors(),  # type: ignore[arg-type]
                hide_input=True,
            ) from None

    @field_validator("DATABASE_REPLICA_URLS", mode="before")
    @classmethod
    def _url_list(cls, value: Any) -> Any:
        return split_url_list(value)

    @field_validator(
        "DATABASE_POOL_TYPE", "POSTGRES_SSLMODE", "DATABASE_READ_ROUTING", "DATABASE_LAZY_LOADS", mode="before"
    )
    @classmethod
    def _enum_any_case(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str) and info.field_name == "DATABASE_POOL_TYPE":
            return value.strip().upper()
        if isinstance(value, str):
            return value.strip().lower()
        return value

    @model_validator(mode="after")
    def _check_and_resolve(self) -> "DatabaseConfig":
        problems = config_problems(self)
        if problems:
            raise ValueError("\n  ".join(problems))
        if self.SQLALCHEMY_DATABASE_URI is None and self.POSTGRES_HOST:  # an empty POSTGRES_HOST= line names no host
            # Frozen model: fill in the derived URL, the way `mountaineer.database` did;
            # `model_copy` derives it again from the copy's parts.
            object.__setattr__(self, "SQLALCHEMY_DATABASE_URI", self._url_from_parts())
            self._url_from_parts_ = True
        if self.SQLALCHEMY_DATABASE_URI is not None and self.DATABASE_REPLICA_URLS:
            replicas = resolve_replica_urls(self.DATABASE_REPLICA_URLS, self.SQLALCHEMY_DATABASE_URI)
            object.__setattr__(self, "DATABASE_REPLICA_URLS", replicas)
        self._resolve_session_attrs()
        return self

    def _resolve_session_attrs(self) -> None:
        """Multi-host URLs (`mountaineer_db.settings.multi_host`): the primary's reach the primary, the replicas'
        a standby; `target_session_attrs` made explicit, a contradiction is a ValueError."""
        primary_setting = "POSTGRES_HOST" if self._url_from_parts_ else "SQLALCHEMY_DATABASE_URI"
        for name, setting in (("SQLALCHEMY_DATABASE_URI", primary_setting), ("MIGRATIONS_DATABASE_URI", None)):
            url = getattr(self, name)
            if url is not None:
                object.__setattr__(self, name, with_session_attrs(url, replica=False, setting=setting or name))
        replicas = [
            with_session_attrs(url, replica=True, setting=f"DATABASE_REPLICA_URLS[{number}]")
            for number, url in enumerate(self.DATABASE_REPLICA_URLS)
        ]
        if replicas:
            object.__setattr__(self, "DATABASE_REPLICA_URLS", replicas)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """pydantic's `model_copy`; a URL derived from the POSTGRES_* parts follows the copy's parts."""
        copy = super().model_copy(update=update, deep=deep)
        if "SQLALCHEMY_DATABASE_URI" in (update or {}) or "DATABASE_URL" in (update or {}):
            copy._url_from_parts_ = False
        elif self._url_from_parts_:
            object.__setattr__(copy, "SQLALCHEMY_DATABASE_URI", copy._url_from_parts())
        return copy

    def _url_from_parts(self) -> URL:
        secret: Any = self.POSTGRES_PASSWORD  # a str too, in a subclass built without our hook
        password = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        host, port = self.POSTGRES_HOST, self.POSTGRES_PORT
        port_or_none: int | None = port
        if host is not None and "," in host:  # db1,db2,db3: each with POSTGRES_PORT unless it names its own
            host, port_or_none = host_list(host, self.POSTGRES_PORT, what="POSTGRES_HOST "), None
        url = URL.create(
            "postgresql+asyncpg",
            username=self.POSTGRES_USER,
            password=password,
            host=host,
            port=port_or_none,
            database=self.POSTGRES_DB,
        )
        return url if port_or_none is not None else with_session_attrs(url, replica=False, setting="POSTGRES_HOST")

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
                                "no database location yet: DATABASE_EMBEDDED is on but the development "
                                "database was not started for this config; pass the config through "
                                "mountaineer_db.servers.embedded.ensure_embedded_database(config) first (the "
                                "request dependencies, database_lifespan, mountaineer_db.migrations.admin and the "
                                "mountaineer-db commands do that for the registered app config)"
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

    @property
    def lazy_loads(self) -> LazyLoads:
        """DATABASE_LAZY_LOADS, else its default: `warn` when ENVIRONMENT is production, `raise` otherwise."""
        if self.DATABASE_LAZY_LOADS is not None:
            return self.DATABASE_LAZY_LOADS
        return LazyLoads.WARN if deploy_environment(self) == "production" else LazyLoads.RAISE

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
        return SSLMode.DISABLE if is_loopback(url.host) else SSLMode.PREFER
