"""PostgreSQL URLs: parsed, checked and normalised to the asyncpg driver when a config is built."""

import ipaddress
import json
import re
from enum import StrEnum
from typing import Annotated, Any

from pydantic import PlainSerializer, PlainValidator, SecretStr, WithJsonSchema
from pydantic.fields import FieldInfo
from pydantic_settings import PydanticBaseSettingsSource
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from mountaineer_db.settings.multi_host import SESSION_ATTRS, HostListError, hosts_of, split_multi_host_url

__all__ = [
    "DatabaseURL",
    "SSLMode",
    "is_loopback",
    "parse_url",
    "plain_text_lists",
    "resolve_replica_urls",
    "split_url_list",
    "without_password",
]

_POSTGRES_SCHEMES = {"postgres", "postgresql", "postgresql+asyncpg"}
_URL_QUERY_KEYS = {"sslmode", "ssl", "application_name", "host", "target_session_attrs"}


class SSLMode(StrEnum):
    """libpq's sslmode values."""

    DISABLE = "disable"
    ALLOW = "allow"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"


_SSL_MODES = tuple(mode.value for mode in SSLMode)


def parse_url(value: Any) -> URL:
    """A SQLAlchemy URL for PostgreSQL with the asyncpg driver, from a string or URL; else ValueError."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, URL):
        url = value
    elif isinstance(value, str):
        try:
            # db1:5432,db2:5432 (a multi-host URL): SQLAlchemy's parser takes one host only.
            text, hosts = split_multi_host_url(value.strip())
            url = make_url(text)
            if hosts is not None:
                url = url.set(host=hosts, port=None)
        except HostListError:
            raise
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
    for key in ("sslmode", "ssl"):
        if key in url.query and _query_value(url, key).lower() not in _SSL_MODES:
            raise ValueError(
                f"has ?{key}={_query_value(url, key)}, which is not an sslmode; use one of {', '.join(_SSL_MODES)}"
            )
    if "target_session_attrs" in url.query and _query_value(url, "target_session_attrs") not in SESSION_ATTRS:
        raise ValueError(
            f"has ?target_session_attrs={_query_value(url, 'target_session_attrs')}, which is not one of "
            f"{', '.join(SESSION_ATTRS)}"
        )
    socket_dir = _query_value(url, "host") if "host" in url.query else None
    if socket_dir is not None and (url.host or not socket_dir.startswith("/")):
        raise ValueError(
            "has ?host= for a Unix socket: give the socket directory as an absolute path and leave the "
            "host part empty, e.g. postgresql://USER@/DBNAME?host=/var/run/postgresql"
        )
    return url.set(drivername="postgresql+asyncpg")


def _query_value(url: URL, key: str) -> str:
    value = url.query[key]
    return str(value[-1] if isinstance(value, tuple) else value)


DatabaseURL = Annotated[
    URL,
    PlainValidator(parse_url),
    # Dumped (and shown) with the password masked; use `render_as_string(hide_password=False)`
    # on the URL object when the real value is needed.
    PlainSerializer(lambda url: url.render_as_string(hide_password=True), return_type=str),
    WithJsonSchema({"type": "string", "format": "uri"}),
]
"""A PostgreSQL URL, validated and normalised to the asyncpg driver (a SQLAlchemy `URL`)."""


def without_password(url: URL) -> URL:
    """`url` with no password at all, for what is shown or kept around (an engine's `url`).

    Rebuilt with `URL.create`: `url.set(password=None)` leaves the password in place in
    SQLAlchemy 2.0 and 2.1 (`set` skips arguments that are None).
    """
    return URL.create(
        url.drivername,
        username=url.username,
        host=url.host,
        port=url.port,
        database=url.database,
        query=url.query,
    )


def is_loopback(host: str | None) -> bool:
    """True for a loopback address, localhost or a Unix socket (every host of a multi-host list)."""
    if host is not None and "," in host:
        return all(is_loopback(name) for name, _ in hosts_of(URL.create("postgresql", host=host)))
    if host is None or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False




_BEFORE_A_URL = re.compile(r",(?=\s*[A-Za-z][A-Za-z0-9+.\-]*://)")


def split_url_list(value: Any) -> Any:
    """A list of URLs from a comma-separated string or a JSON list (as env vars hold them)."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError:
                raise ValueError(
                    "is not a JSON list of URLs; write it as a comma-separated list "
                    "(postgresql://HOST1/DB,postgresql://HOST2/DB) or as a JSON list of strings"
                ) from None
        # Split only before a scheme: a multi-host URL holds commas of its own (db1,db2).
        return [part.strip() for part in _BEFORE_A_URL.split(text) if part.strip()]
    if isinstance(value, URL):
        return [value]
    return value


def resolve_replica_urls(replicas: list[URL], primary: URL) -> list[URL]:
    """Replica URLs with the primary's user and password when they name no user, and its
    database when they name none; a URL that names the primary itself is a ValueError."""
    resolved = []
    for number, replica in enumerate(replicas):
        if replica.username is None and primary.username is not None:
            replica = replica.set(username=primary.username, password=primary.password)
        if not replica.database and primary.database:
            replica = replica.set(database=primary.database)
        # A multi-host URL may list the primary's own hosts: target_session_attrs picks a standby.
        if _address(replica) == _address(primary) and "," not in (replica.host or ""):
            raise ValueError(
                f"DATABASE_REPLICA_URLS[{number}] names the primary itself ({primary.host}:{primary.port or 5432}/"
                f"{primary.database}). List streaming replicas only; the primary is always used for writes."
            )
        resolved.append(replica)
    return resolved


def _address(url: URL) -> tuple[Any, ...]:
    return (url.host, url.port or 5432, url.query.get("host"), url.database)


def plain_text_lists(source: PydanticBaseSettingsSource) -> PydanticBaseSettingsSource:
    """Let the environment and `.env` give DATABASE_REPLICA_URLS as plain comma-separated text.

    pydantic-settings reads list fields as JSON and rejects anything else before validators
    run; the field's validator splits the text instead (pydantic-settings 2.7+ has `NoDecode`
    for this, our floor does not). Every other field is decoded as pydantic-settings does.
    """
    decode = getattr(source, "decode_complex_value", None)
    if decode is None:
        return source

    def decode_complex_value(field_name: str, field: FieldInfo, value: Any) -> Any:
        if field_name == "DATABASE_REPLICA_URLS" and isinstance(value, str):
            return value  # the field's validator reads both forms and names the field in its errors
        return decode(field_name, field, value)

    source.decode_complex_value = decode_complex_value  # type: ignore[method-assign]
    return source
