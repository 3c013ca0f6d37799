"""Multi-host URLs and POSTGRES_HOST=h1,h2,h3 (mountaineer_db.settings.multi_host): read, normalised and
checked when the config is built; connections skip hosts that are down or have the wrong role.

The same against a real Patroni cluster (a switchover, standbys): tests/test_patroni.py.
"""

from typing import Any

import pytest
from sqlalchemy import text

from mountaineer_db import DatabaseConfig, DatabaseConfigError, DatabaseUnavailableError
from mountaineer_db.engines.connections import Connector
from mountaineer_db.engines.engine import engine_for
from mountaineer_db.exceptions import describe_target
from mountaineer_db.servers.cluster import free_port

SECRET = "s3cr3t-pw"


def test_a_multi_host_url_is_read_with_every_port_and_defaults_to_read_write() -> None:
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=f"postgresql://app:{SECRET}@db1:5433,db2,[::1]:6000/app")
    url = config.database_url
    assert url.drivername == "postgresql+asyncpg"
    assert (url.host, url.port, url.database) == ("db1:5433,db2:5432,[::1]:6000", None, "app")
    assert url.query["target_session_attrs"] == "read-write"
    assert url.password == SECRET
    # It renders to a URL that reads back the same (SQLAlchemy puts the host list in brackets).
    again = DatabaseConfig(SQLALCHEMY_DATABASE_URI=url.render_as_string(hide_password=False)).database_url
    assert again == url
    assert describe_target(url) == 'database "app" on db1:5433,db2:5432,[::1]:6000 as user "app"'
    error = DatabaseUnavailableError("unreachable", url=url)
    assert (error.host, error.port, error.database) == ("db1:5433,db2:5432,[::1]:6000", None, "app")


def test_postgres_host_takes_a_list_each_host_with_postgres_port_unless_it_names_its_own() -> None:
    config = DatabaseConfig(POSTGRES_HOST="db1, db2:6432,db3", POSTGRES_PORT=5433, POSTGRES_DB="app", POSTGRES_USER="u")
    url = config.database_url
    assert (url.host, url.port) == ("db1:5433,db2:6432,db3:5433", None)
    assert url.query["target_session_attrs"] == "read-write"


def test_a_single_host_url_is_left_as_it_was() -> None:
    url = DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://app@db1:5433/app").database_url
    assert (url.host, url.port, dict(url.query)) == ("db1", 5433, {})


@pytest.mark.parametrize("attrs", ["read-write", "primary"])
def test_the_primary_url_may_ask_for_the_primary(attrs: str) -> None:
    url = DatabaseConfig(SQLALCHEMY_DATABASE_URI=f"postgresql://app@db1,db2/app?target_session_attrs={attrs}").database_url
    assert url.query["target_session_attrs"] == attrs


@pytest.mark.parametrize("attrs", ["prefer-standby", "standby", "read-only", "any"])
def test_a_primary_url_that_could_reach_a_standby_is_refused_when_the_config_is_built(attrs: str) -> None:
    with pytest.raises(DatabaseConfigError) as caught:
        DatabaseConfig(SQLALCHEMY_DATABASE_URI=f"postgresql://app:{SECRET}@db1,db2/app?target_session_attrs={attrs}")
    message = str(caught.value)
    assert (
        f"SQLALCHEMY_DATABASE_URI has target_session_attrs={attrs}, which does not reach the primary; use "
        "read-write or primary (with several hosts the default is read-write)"
    ) in message
    assert SECRET not in message


def test_replica_urls_with_several_hosts_default_to_prefer_standby_and_refuse_read_write() -> None:
    config = DatabaseConfig(
        SQLALCHEMY_DATABASE_URI="postgresql://app:pw@db1,db2,db3/app",
        DATABASE_REPLICA_URLS="postgresql://db2,db3/app,postgresql://db3/app?target_session_attrs=read-only",
    )
    first, second = config.DATABASE_REPLICA_URLS
    assert first.query["target_session_attrs"] == "prefer-standby" and first.username == "app"
    assert second.query["target_session_attrs"] == "read-only"
    with pytest.raises(DatabaseConfigError) as caught:
        DatabaseConfig(
            SQLALCHEMY_DATABASE_URI="postgresql://app:pw@db1/app",
            DATABASE_REPLICA_URLS="postgresql://db2,db3/app?target_session_attrs=read-write",
        )
    assert "DATABASE_REPLICA_URLS[0] has target_session_attrs=read-write, which does not reach a replica; use " \
        "prefer-standby or standby or read-only" in str(caught.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("postgresql://app@db1,,db3/app", "has an empty or malformed host (number 2)"),
        ("postgresql://app@db1,db2:99999/app", "has host number 2 with a port that is not a TCP port (1 to 65535)"),
        ("postgresql://app@db1,db2:x/app", "has host number 2 with a port that is not a TCP port (1 to 65535)"),
        (
            "postgresql://app@db1,db2/app?target_session_attrs=writable",
            "has ?target_session_attrs=writable, which is not one of any, primary, standby, prefer-standby, "
            "read-write, read-only",
        ),
    ],
)
def test_a_bad_host_list_or_session_attribute_is_refused_naming_the_problem(value: str, expected: str) -> None:
    with pytest.raises(DatabaseConfigError) as caught:
        DatabaseConfig(SQLALCHEMY_DATABASE_URI=value.replace("app@", f"app:{SECRET}@"))
    assert expected in str(caught.value)
    assert SECRET not in str(caught.value)


def test_a_bad_postgres_host_list_names_the_setting() -> None:
    with pytest.raises(DatabaseConfigError) as caught:
        DatabaseConfig(POSTGRES_HOST="db1,db2:0", POSTGRES_DB="app", POSTGRES_PASSWORD=SECRET)
    assert "POSTGRES_HOST has host number 2 with a port that is not a TCP port (1 to 65535)" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_the_connector_hands_asyncpg_every_host_its_port_and_the_role() -> None:
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=f"postgresql://app:{SECRET}@db1:5433,db2/app")
    connector = Connector(config, config.database_url, statement_cache_size=0)
    arguments = connector._kwargs
    assert (arguments["host"], arguments["port"]) == (["db1", "db2"], [5433, 5432])
    assert arguments["target_session_attrs"] == "read-write"
    assert SECRET not in repr(connector)


def test_loopback_host_lists_connect_without_ssl_by_default() -> None:
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://app@127.0.0.1:5432,localhost:5433/app")
    assert config.sslmode_for(config.database_url).value == "disable"
    remote = DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://app@127.0.0.1:5432,db.internal:5433/app")
    assert remote.sslmode_for(remote.database_url).value == "prefer"


async def test_a_host_that_is_down_is_skipped_for_the_next_one(pg_server: Any, test_database: str) -> None:
    """A multi-host URL whose first host refuses connections (a node that is down) reaches the
    server behind the second, in one connect."""
    url = pg_server.url(test_database)
    dead = free_port()
    hosts = f"127.0.0.1:{dead},{url.host}:{url.port}"
    rendered = url.render_as_string(hide_password=False).replace(f"{url.host}:{url.port}", hosts, 1)
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=rendered)
    assert config.database_url.host == hosts
    async with engine_for(config).connect() as connection:
        assert await connection.scalar(text("SELECT inet_server_port()")) == url.port
