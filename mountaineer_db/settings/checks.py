"""Validation of a `DatabaseConfig` as a whole: contradictions and values out of range.

Run when the config is built (`DatabaseConfig`'s model validator); each problem names the
setting, where its value came from when that matters, and the fix.
"""

import math
import os
from typing import TYPE_CHECKING, Any

from mountaineer_db.settings.sources import described
from mountaineer_db.settings.tenant_checks import tenant_problems

if TYPE_CHECKING:
    from mountaineer_db.settings.config import DatabaseConfig

__all__ = ["MIN_KEY_LENGTH", "config_problems", "cookie_keys", "deploy_environment"]

_CONNECTION_PARTS = ("POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB")
_OUR_PREFIXES = ("DATABASE_", "MIGRATIONS_", "POSTGRES_")
_SERVER_SETTINGS = ("DATABASE_STATEMENT_TIMEOUT", "DATABASE_LOCK_TIMEOUT", "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT")
"""Sent to the server as `SET LOCAL ... = '<n>ms'` with every BEGIN: bounded by PostgreSQL's int range."""
_SERVER_MAX_SECONDS = 2147483.647


def _not_finite(config: "DatabaseConfig") -> dict[str, float]:
    """Our float settings (all of them seconds) that hold inf, -inf or nan, which Python and
    pydantic accept but nothing downstream can use (`OverflowError`, waits that never end)."""
    found = {}
    for name in type(config).model_fields:
        value = getattr(config, name, None)
        if name.startswith(_OUR_PREFIXES) and isinstance(value, float) and not math.isfinite(value):
            found[name] = value
    return found


def config_problems(config: "DatabaseConfig") -> list[str]:
    """Every contradiction or bad value in `config`, each naming the setting and the fix."""
    problems: list[str] = []
    explicit = config.model_fields_set
    url = config.SQLALCHEMY_DATABASE_URI
    if url is not None and "SQLALCHEMY_DATABASE_URI" in explicit:
        parts = [
            described(name)
            for name in _CONNECTION_PARTS
            if name in explicit and getattr(config, name) is not None
        ]
        if parts:
            problems.append(
                f"{described('SQLALCHEMY_DATABASE_URI')} and {', '.join(parts)} are both set. "
                "Set either SQLALCHEMY_DATABASE_URI or POSTGRES_HOST/POSTGRES_DB, not both. "
                "(The URL carries the port, user and password too.)"
            )
        url_sslmode = url.query.get("sslmode") or url.query.get("ssl")
        if (
            url_sslmode
            and config.POSTGRES_SSLMODE is not None
            and str(url_sslmode).lower() != config.POSTGRES_SSLMODE.value
        ):
            problems.append(
                f"{described('POSTGRES_SSLMODE')} is {config.POSTGRES_SSLMODE.value} but the URL says "
                f"sslmode={url_sslmode}. Keep one of them."
            )
    problems.extend(_embedded_problems(config))
    problems.extend(tenant_problems(config))
    if url is None and not config.DATABASE_EMBEDDED:
        missing = [n for n in ("POSTGRES_HOST", "POSTGRES_DB") if not getattr(config, n)]
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
    ports = [("POSTGRES_PORT", config.POSTGRES_PORT)]
    if url is not None and url.port is not None:
        ports.append(("SQLALCHEMY_DATABASE_URI port", url.port))
    for name, port in ports:
        if not 1 <= port <= 65535:
            problems.append(f"{name} is {port}; use a TCP port from 1 to 65535 (PostgreSQL's default is 5432).")
    not_finite = _not_finite(config)
    problems.extend(
        f"{described(name)} is {value}; use a finite number of seconds, or leave it unset for the default."
        for name, value in not_finite.items()
    )
    problems.extend(_pool_problems(config, explicit, skip=not_finite))
    for name in (
        "DATABASE_CONNECT_TIMEOUT",
        "DATABASE_COMMAND_TIMEOUT",
        "DATABASE_STATEMENT_TIMEOUT",
        "DATABASE_LOCK_TIMEOUT",
        "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT",
        "DATABASE_SLOW_QUERY_THRESHOLD",
    ):
        value = getattr(config, name)
        if value is None or name in not_finite:
            continue
        if not value > 0:
            problems.append(f"{name} is {value}; use a number of seconds greater than 0, or leave it unset.")
        elif name in _SERVER_SETTINGS and value > _SERVER_MAX_SECONDS:
            problems.append(
                f"{name} is {value:g}; PostgreSQL takes at most {_SERVER_MAX_SECONDS:g} seconds (2147483647 ms, "
                "about 24.8 days). Use a smaller number, or leave it unset for no limit."
            )
    if "DATABASE_REPLICA_MAX_LAG" not in not_finite and not config.DATABASE_REPLICA_MAX_LAG > 0:
        problems.append(
            f"DATABASE_REPLICA_MAX_LAG is {config.DATABASE_REPLICA_MAX_LAG}; use a number of seconds greater than 0 "
            "(default 5)."
        )
    if "DATABASE_REPLICA_MAX_WAIT" not in not_finite and not config.DATABASE_REPLICA_MAX_WAIT >= 0:
        problems.append(
            f"DATABASE_REPLICA_MAX_WAIT is {config.DATABASE_REPLICA_MAX_WAIT}; use 0 (never wait) or more seconds "
            "(default 0.2)."
        )
    if "MIGRATIONS_LOCK_TIMEOUT" not in not_finite and not config.MIGRATIONS_LOCK_TIMEOUT > 0:
        problems.append(
            f"MIGRATIONS_LOCK_TIMEOUT is {config.MIGRATIONS_LOCK_TIMEOUT}; use a number of seconds greater than 0 "
            "(default 5)."
        )
    threshold = config.DATABASE_N_PLUS_ONE_THRESHOLD
    if threshold is not None and threshold < 1:
        problems.append(
            f"DATABASE_N_PLUS_ONE_THRESHOLD is {threshold}; use 1 or more (a statement run more than that many "
            "times in one request is logged), or leave it unset for no N+1 warnings."
        )
    if config.DATABASE_STATEMENT_CACHE_SIZE is not None and config.DATABASE_STATEMENT_CACHE_SIZE < 0:
        problems.append("DATABASE_STATEMENT_CACHE_SIZE must be 0 (no cache) or a positive number.")
    if config.DATABASE_POOLER_PREPARED_STATEMENTS and config.DATABASE_STATEMENT_CACHE_SIZE == 0:
        problems.append(
            "DATABASE_POOLER_PREPARED_STATEMENTS is on but DATABASE_STATEMENT_CACHE_SIZE is 0, which means "
            "unnamed statements and no cache. Leave DATABASE_STATEMENT_CACHE_SIZE unset (100) or set it above 0, "
            "or turn DATABASE_POOLER_PREPARED_STATEMENTS off."
        )
    problems.extend(_text_problems(config))
    problems.extend(_cookie_key_problems(config))
    return problems


def _embedded_problems(config: "DatabaseConfig") -> list[str]:
    """DATABASE_EMBEDDED=true while the config also says where a database is: which one wins is a guess.

    An old `.env` that still holds POSTGRES_HOST (docker-compose days) next to a new
    DATABASE_EMBEDDED=true is the usual way to get here. (POSTGRES_DB alone names the database
    on the development server; the advice is to delete it too, so that a command given a
    DATABASE_URL and DATABASE_EMBEDDED=false does not meet it.) The copy
    `ensure_embedded_database` makes carries the embedded URL but is never validated again,
    so it does not trip this.
    """
    if not config.DATABASE_EMBEDDED:
        return []
    named = [
        described(name)
        for name in ("SQLALCHEMY_DATABASE_URI", "MIGRATIONS_DATABASE_URI", "POSTGRES_HOST")
        if getattr(config, name)
    ]
    if not named:
        return []
    return [
        f"{described('DATABASE_EMBEDDED')} is true, but the config also names a database: {', '.join(named)}. "
        "Use one or the other: for the development database delete POSTGRES_HOST, POSTGRES_PORT, POSTGRES_USER, "
        "POSTGRES_PASSWORD and POSTGRES_DB (or DATABASE_URL) from .env and the environment; to use that server "
        "instead, set DATABASE_EMBEDDED=false."
    ]


def deploy_environment(config: "DatabaseConfig") -> str:
    """The app's ENVIRONMENT (Mountaineer's setting, else the environment variable), lower case."""
    value = getattr(config, "ENVIRONMENT", None)
    if not isinstance(value, str):
        value = os.environ.get("ENVIRONMENT", "")
    return value.strip().lower()


MIN_KEY_LENGTH = 16
"""Characters a read-your-writes cookie key needs at least: a short one can be guessed offline from a cookie."""


def cookie_keys(config: "DatabaseConfig") -> list[str]:
    """DATABASE_READ_YOUR_WRITES_KEYS as a list: comma-separated, blanks ignored, the signing key first."""
    secret = config.DATABASE_READ_YOUR_WRITES_KEYS
    text = secret.get_secret_value() if secret is not None else ""
    return [key.strip() for key in text.split(",") if key.strip()]


def _cookie_key_problems(config: "DatabaseConfig") -> list[str]:
    keys = cookie_keys(config)
    if any(len(key) < MIN_KEY_LENGTH for key in keys):
        return [
            f"DATABASE_READ_YOUR_WRITES_KEYS holds a key shorter than {MIN_KEY_LENGTH} characters, which a client "
            "could guess from its cookie. Use random keys, for example from "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'` (the value is not shown)."
        ]
    if config.DATABASE_REPLICA_URLS and not keys and deploy_environment(config) == "production":
        return [
            "DATABASE_REPLICA_URLS is set and ENVIRONMENT is production, but DATABASE_READ_YOUR_WRITES_KEYS is not: "
            "the read-your-writes cookie needs a key that every process of the deploy shares. Set it to a random "
            "value, the same in every process, for example from "
            "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`."
        ]
    return []


def _unusable(text: str) -> str | None:
    """Why `text` cannot reach PostgreSQL (a name, a login, a host), or None when it can."""
    if "\x00" in text:
        return "holds a NUL character, which PostgreSQL cannot take in names, logins or hosts"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "holds bytes that are not UTF-8 text (an unpaired surrogate)"
    return None


def _text_problems(config: "DatabaseConfig") -> list[str]:
    """Names, logins and hosts that no server can be sent (`createdb` and every connection would fail)."""
    found: list[tuple[str, str | None]] = [
        (name, getattr(config, name))
        for name in ("POSTGRES_HOST", "POSTGRES_USER", "POSTGRES_DB", "DATABASE_APPLICATION_NAME")
    ]
    secret: Any = config.POSTGRES_PASSWORD  # a str too, in a subclass built without our hook
    found.append(("POSTGRES_PASSWORD", secret.get_secret_value() if hasattr(secret, "get_secret_value") else secret))
    urls = [
        ("SQLALCHEMY_DATABASE_URI", config.SQLALCHEMY_DATABASE_URI),
        ("MIGRATIONS_DATABASE_URI", config.MIGRATIONS_DATABASE_URI),
    ]
    urls += [("DATABASE_REPLICA_URLS", url) for url in config.DATABASE_REPLICA_URLS]
    for setting, url in urls:
        if url is not None:
            for part in ("host", "username", "password", "database"):
                found.append((f"{setting}'s {'user' if part == 'username' else part}", getattr(url, part)))
    problems = []
    for where, text in found:
        why = _unusable(text) if isinstance(text, str) else None
        if why is not None:
            problems.append(f"{described(where)} {why}; correct it (the value is not shown).")
    return problems


def _pool_problems(config: "DatabaseConfig", explicit: set[str], *, skip: "dict[str, float]") -> list[str]:
    problems: list[str] = []
    pool_fields = (
        "DATABASE_POOL_SIZE",
        "DATABASE_MAX_OVERFLOW",
        "DATABASE_POOL_TIMEOUT",
        "DATABASE_POOL_RECYCLE",
        "DATABASE_POOL_PRE_PING",
    )
    if config.DATABASE_POOL_TYPE == "NULL":  # PoolType.NULL
        stray = [n for n in pool_fields if n in explicit and getattr(config, n) is not None]
        if stray:
            problems.append(
                f"{', '.join(stray)} only apply when DATABASE_POOL_TYPE=FIXED_PROCESS. "
                "Set DATABASE_POOL_TYPE=FIXED_PROCESS, or remove them (with the default NULL "
                "pool, PgBouncer does the pooling)."
            )
    if config.DATABASE_POOL_SIZE is not None and config.DATABASE_POOL_SIZE < 1:
        problems.append(f"DATABASE_POOL_SIZE is {config.DATABASE_POOL_SIZE}; use 1 or more connections.")
    if config.DATABASE_MAX_OVERFLOW is not None and config.DATABASE_MAX_OVERFLOW < 0:
        problems.append(f"DATABASE_MAX_OVERFLOW is {config.DATABASE_MAX_OVERFLOW}; use 0 or more.")
    for name in ("DATABASE_POOL_TIMEOUT", "DATABASE_POOL_RECYCLE"):
        value = getattr(config, name)
        if value is not None and name not in skip and not value > 0:
            problems.append(f"{name} is {value}; use a number of seconds greater than 0, or leave it unset.")
    return problems
