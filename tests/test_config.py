"""DatabaseConfig: merging into Mountaineer's ConfigBase, URL handling, secrets, validation."""

from pathlib import Path
from typing import Any

import pytest
from mountaineer import ConfigBase
from mountaineer import config as mountaineer_config
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from mountaineer_db import DatabaseConfig, DatabaseConfigError, MountaineerDBError, PoolType

SECRET = "s3cr@t:/%# pw"


class DbFirstConfig(DatabaseConfig, ConfigBase):
    PACKAGE: str | None = "myapp"
    POSTGRES_DB: str = "myapp"


class ConfigBaseFirst(ConfigBase, DatabaseConfig):
    PACKAGE: str | None = "otherapp"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No stray database variables from the machine, and no stray .env in the working directory."""
    for name in (
        "POSTGRES_HOST",
        "POSTGRES_PORT",
        "POSTGRES_USER",
        "POSTGRES_PASSWORD",
        "POSTGRES_DB",
        "DATABASE_URL",
        "SQLALCHEMY_DATABASE_URI",
        "DATABASE_POOL_TYPE",
        "DATABASE_EMBEDDED",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("config_class", [DbFirstConfig, ConfigBaseFirst])
def test_mixes_into_config_base_in_either_order(config_class: Any) -> None:
    config = config_class(POSTGRES_HOST="db.internal", POSTGRES_DB="app", POSTGRES_USER="app")
    assert mountaineer_config.get_config() is config, "ConfigBase auto-registration must still happen"
    assert config.database_url.host == "db.internal"
    assert config.database_url.drivername == "postgresql+asyncpg"
    with pytest.raises(ValidationError):
        config.POSTGRES_HOST = "elsewhere"  # frozen, as ConfigBase is


def test_reads_environment_and_dotenv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("POSTGRES_HOST=from-dotenv\nPOSTGRES_USER=dotenv_user\nPOSTGRES_PORT=6543\n")
    monkeypatch.setenv("POSTGRES_USER", "env_user")  # the environment wins over .env
    config = DbFirstConfig()
    assert config.POSTGRES_HOST == "from-dotenv"
    assert config.POSTGRES_USER == "env_user"
    assert config.POSTGRES_PORT == 6543
    assert config.POSTGRES_DB == "myapp"  # the app's class default


def test_url_from_parts_round_trips_special_characters() -> None:
    user = "we@ird:us/er%#"
    config = DatabaseConfig(POSTGRES_HOST="h", POSTGRES_DB="d b", POSTGRES_USER=user, POSTGRES_PASSWORD=SECRET)
    rendered = config.database_url.render_as_string(hide_password=False)
    parsed = make_url(rendered)
    assert (parsed.username, parsed.password, parsed.database) == (user, SECRET, "d b")


@pytest.mark.parametrize("scheme", ["postgres://", "postgresql://", "postgresql+asyncpg://"])
def test_url_schemes_normalise_to_asyncpg(scheme: str) -> None:
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=f"{scheme}u:p%40ss@h:5433/db")
    url = config.database_url
    assert url.drivername == "postgresql+asyncpg"
    assert (url.username, url.password, url.host, url.port, url.database) == ("u", "p@ss", "h", 5433, "db")


def test_database_url_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u:pw@heroku-host/herokudb")
    config = DbFirstConfig()  # the class default POSTGRES_DB does not count as a contradiction
    assert config.database_url.host == "heroku-host"
    assert config.database_url.database == "herokudb"


def test_password_is_masked_everywhere_it_is_shown() -> None:
    config = DatabaseConfig(POSTGRES_HOST="h", POSTGRES_DB="d", POSTGRES_USER="u", POSTGRES_PASSWORD=SECRET)
    url_config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=config.database_url.render_as_string(hide_password=False))
    for shown in (
        repr(config),
        str(config),
        repr(url_config),
        str(url_config),
        str(config.database_url),
        repr(config.database_url),
        config.model_dump_json(),
        str(config.model_dump()),
        str(url_config.model_dump()),
    ):
        assert SECRET not in shown
        assert "s3cr%40t" not in shown
    assert config.POSTGRES_PASSWORD is not None
    assert config.POSTGRES_PASSWORD.get_secret_value() == SECRET


def test_application_name_defaults_to_package() -> None:
    config = DbFirstConfig(POSTGRES_HOST="h")
    assert config.application_name == "myapp"
    assert DbFirstConfig.model_construct().DATABASE_APPLICATION_NAME is None
    mountaineer_config.unregister_config()
    assert DbFirstConfig(POSTGRES_HOST="h", DATABASE_APPLICATION_NAME="web").application_name == "web"


FIXED = {"POSTGRES_HOST": "h", "POSTGRES_DB": "d", "DATABASE_POOL_TYPE": "FIXED_PROCESS"}


def _error_text(**values: Any) -> str:
    with pytest.raises(DatabaseConfigError) as caught:
        DatabaseConfig(**values)
    error = caught.value
    # One error that is both a pydantic ValidationError and ours.
    assert isinstance(error, ValidationError)
    assert isinstance(error, MountaineerDBError)
    return str(error)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"POSTGRES_HOST": "h", "POSTGRES_DB": "d", "POSTGRES_PORT": 0},
            "POSTGRES_PORT is 0; use a TCP port from 1 to 65535",
        ),
        ({"POSTGRES_HOST": "h", "POSTGRES_DB": "d", "POSTGRES_PORT": 70000}, "POSTGRES_PORT is 70000"),
        ({"POSTGRES_HOST": "h", "POSTGRES_DB": "d", "DATABASE_POOL_TYPE": "BOGUS"}, "DATABASE_POOL_TYPE"),
        (
            {"POSTGRES_HOST": "h", "POSTGRES_DB": "d", "DATABASE_POOL_TYPE": "FIXED_PROCESS", "DATABASE_POOL_SIZE": -1},
            "DATABASE_POOL_SIZE is -1; use 1 or more connections",
        ),
        ({"SQLALCHEMY_DATABASE_URI": "not a url"}, "SQLALCHEMY_DATABASE_URI"),
        ({"SQLALCHEMY_DATABASE_URI": "mysql://u:p@h/d"}, "needs a PostgreSQL URL"),
        ({"SQLALCHEMY_DATABASE_URI": "postgresql://u:p@h:notaport/d"}, "is not a database URL"),
        ({}, "POSTGRES_HOST and POSTGRES_DB not set"),
        ({"POSTGRES_HOST": "h"}, "POSTGRES_DB not set"),
        (
            {"SQLALCHEMY_DATABASE_URI": "postgresql://u:p@h/d", "POSTGRES_HOST": "other"},
            "Set either SQLALCHEMY_DATABASE_URI or POSTGRES_HOST/POSTGRES_DB, not both.",
        ),
        (
            {"POSTGRES_HOST": "h", "POSTGRES_DB": "d", "DATABASE_POOL_SIZE": 5},
            "DATABASE_POOL_SIZE only apply when DATABASE_POOL_TYPE=FIXED_PROCESS",
        ),
        (
            {**FIXED, "DATABASE_MAX_OVERFLOW": -1},
            "DATABASE_MAX_OVERFLOW is -1; use 0 or more.",
        ),
        (
            {**FIXED, "DATABASE_POOL_TIMEOUT": 0},
            "DATABASE_POOL_TIMEOUT is 0.0; use a number of seconds greater than 0",
        ),
        (
            {"POSTGRES_HOST": "h", "POSTGRES_DB": "d", "DATABASE_STATEMENT_CACHE_SIZE": -1},
            "DATABASE_STATEMENT_CACHE_SIZE must be 0 (no cache) or a positive number.",
        ),
        ({"POSTGRES_HOST": "h", "POSTGRES_DB": "d", "DATABASE_CONNECT_TIMEOUT": 0}, "DATABASE_CONNECT_TIMEOUT is 0"),
        ({"POSTGRES_HOST": "h", "POSTGRES_DB": "d", "DATABASE_STATEMENT_TIMEOUT": -1}, "DATABASE_STATEMENT_TIMEOUT"),
    ],
)
def test_invalid_settings_name_the_field_and_the_fix(values: dict[str, Any], expected: str) -> None:
    assert expected in _error_text(**values)


def test_validation_errors_never_echo_the_password() -> None:
    text = _error_text(SQLALCHEMY_DATABASE_URI=f"mysql://u:{SECRET.replace('@', '%40')}@h/d")
    assert "s3cr" not in text
    text = _error_text(POSTGRES_HOST="h", POSTGRES_DB="d", POSTGRES_PASSWORD=SECRET, POSTGRES_PORT=0)
    assert SECRET not in text


def test_pool_type_and_timeouts_parse_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_POOL_TYPE", "fixed_process")
    monkeypatch.setenv("DATABASE_POOL_SIZE", "7")
    monkeypatch.setenv("DATABASE_STATEMENT_TIMEOUT", "1.5")
    config = DbFirstConfig(POSTGRES_HOST="h")
    assert config.DATABASE_POOL_TYPE is PoolType.FIXED_PROCESS
    assert config.DATABASE_POOL_SIZE == 7
    assert config.DATABASE_STATEMENT_TIMEOUT == 1.5


def test_sslmode_defaults_to_disable_on_loopback_and_prefer_elsewhere() -> None:
    local = DatabaseConfig(POSTGRES_HOST="127.0.0.1", POSTGRES_DB="d")
    remote = DatabaseConfig(POSTGRES_HOST="db.example.com", POSTGRES_DB="d")
    explicit = DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://u@localhost/d?sslmode=require")
    assert local.sslmode_for(local.database_url).value == "disable"
    assert remote.sslmode_for(remote.database_url).value == "prefer"
    assert explicit.sslmode_for(explicit.database_url).value == "require"


def test_the_documented_defaults() -> None:
    """The defaults the docs promise: a bounded connect (5 s), no other timeout, no client pool, and so on."""
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://u@db.example.com/d")
    documented = {
        "POSTGRES_PORT": 5432,
        "DATABASE_POOL_TYPE": PoolType.NULL,
        "DATABASE_CONNECT_TIMEOUT": 5.0,
        "DATABASE_COMMAND_TIMEOUT": None,
        "DATABASE_STATEMENT_TIMEOUT": None,
        "DATABASE_LOCK_TIMEOUT": None,
        "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT": None,
        "DATABASE_ECHO": False,
        "DATABASE_SCRAM_CACHE": True,
        "DATABASE_TAG_REQUESTS": False,
        "DATABASE_SLOW_QUERY_THRESHOLD": None,
        "DATABASE_READ_ROUTING": "primary",
        "DATABASE_REPLICA_MAX_LAG": 5.0,
        "DATABASE_REPLICA_MAX_WAIT": 0.2,
        "MIGRATIONS_LOCK_TIMEOUT": 5.0,
    }
    assert {name: getattr(config, name) for name in documented} == documented


def test_migrations_url_defaults_to_the_app_url() -> None:
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://u:p@bouncer:6432/d")
    assert config.migrations_url == config.database_url
    direct = DatabaseConfig(
        SQLALCHEMY_DATABASE_URI="postgresql://u:p@bouncer:6432/d",
        MIGRATIONS_DATABASE_URI="postgresql://u:p@primary:5432/d",
    )
    assert direct.migrations_url.host == "primary"


# -- Issue 10: shapes users write ------------------------------------------------------


def test_a_copy_with_other_parts_gets_a_url_that_follows_them() -> None:
    """`model_copy(update=...)` (the library copies configs this way) re-derives the URL."""
    config = DatabaseConfig(POSTGRES_HOST="h", POSTGRES_DB="first", POSTGRES_USER="u", POSTGRES_PASSWORD="pw")
    other = config.model_copy(update={"POSTGRES_DB": "other", "POSTGRES_PORT": 6432})
    assert (other.database_url.database, other.database_url.port) == ("other", 6432)
    assert other.database_url == other.SQLALCHEMY_DATABASE_URI
    assert (config.database_url.database, config.database_url.port) == ("first", 5432), "the original is unchanged"
    assert other.database_url.password == "pw"
    explicit = config.model_copy(update={"SQLALCHEMY_DATABASE_URI": make_url("postgresql+asyncpg://x@y/z")})
    assert explicit.model_copy(update={"POSTGRES_DB": "ignored"}).database_url.database == "z", "an explicit URL stays"


class PlainPasswordConfig(DatabaseConfig, ConfigBase):
    """The shape mountaineer.database's docs taught: the password re-declared as a plain str."""

    POSTGRES_HOST: str = "db"
    POSTGRES_DB: str = "app"
    POSTGRES_PASSWORD: str = SECRET  # type: ignore[assignment]


def test_a_password_redeclared_as_str_works_and_stays_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    config = PlainPasswordConfig()
    assert config.database_url.password == SECRET
    for shown in (repr(config), str(config), config.model_dump_json(), str(config.model_dump())):
        assert SECRET not in shown
    mountaineer_config.unregister_config()
    monkeypatch.setenv("POSTGRES_PASSWORD", "from-env")
    from_env = PlainPasswordConfig()
    assert from_env.database_url.password == "from-env"
    assert "from-env" not in repr(from_env)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(
            {"SQLALCHEMY_DATABASE_URI": "postgresql://u@h/d?sslmode=requir"},
            "has ?sslmode=requir, which is not an sslmode; use one of disable, allow, prefer, require, verify-ca, "
            "verify-full",
            id="bad_sslmode_in_the_url",
        ),
        pytest.param(
            {"SQLALCHEMY_DATABASE_URI": "postgresql://u@h/d", "POSTGRES_PORT": 6432},
            "SQLALCHEMY_DATABASE_URI (passed to DatabaseConfig()) and POSTGRES_PORT (passed to DatabaseConfig()) "
            "are both set. Set either SQLALCHEMY_DATABASE_URI or POSTGRES_HOST/POSTGRES_DB, not both.",
            id="url_and_port",
        ),
        pytest.param(
            {"SQLALCHEMY_DATABASE_URI": "postgresql://u@h/d?sslmode=require", "POSTGRES_SSLMODE": "disable"},
            "POSTGRES_SSLMODE (passed to DatabaseConfig()) is disable but the URL says sslmode=require. "
            "Keep one of them.",
            id="url_sslmode_and_setting_disagree",
        ),
        pytest.param(
            {"SQLALCHEMY_DATABASE_URI": "postgresql://u@h/d?host=/var/run/postgresql"},
            "give the socket directory as an absolute path and leave the host part empty",
            id="socket_with_a_host",
        ),
    ],
)
def test_url_contradictions_are_caught_when_the_config_is_built(values: dict[str, Any], expected: str) -> None:
    assert expected in _error_text(**values)


def test_postgres_sslmode_applies_to_a_url_that_does_not_say() -> None:
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://u@db.example.com/d", POSTGRES_SSLMODE="require")
    assert config.sslmode_for(config.database_url).value == "require"


def test_a_unix_socket_url_is_accepted() -> None:
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI="postgresql://app@/appdb?host=/var/run/postgresql")
    assert config.database_url.query["host"] == "/var/run/postgresql"
    assert config.database_url.database == "appdb"
    assert config.sslmode_for(config.database_url).value == "disable"


def test_conflicts_say_where_each_value_came_from(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("POSTGRES_HOST=localhost\nPOSTGRES_USER=myapp\n")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/d")
    with pytest.raises(DatabaseConfigError) as caught:
        DbFirstConfig()
    assert (
        "SQLALCHEMY_DATABASE_URI (from the environment variable DATABASE_URL) and POSTGRES_HOST (from the file "
        ".env), POSTGRES_USER (from the file .env) are both set. Set either SQLALCHEMY_DATABASE_URI or "
        "POSTGRES_HOST/POSTGRES_DB, not both."
    ) in str(caught.value)


# -- Issue 23: numbers that parse but cannot be used ----------------------------------------


def _float_settings() -> list[str]:
    """Every float setting of DatabaseConfig (all in seconds), found from the annotations: a new one is covered too."""
    return sorted(
        name for name, field in DatabaseConfig.model_fields.items() if field.annotation in (float, float | None)
    )


def test_the_float_settings_are_the_timeouts_and_limits() -> None:
    """The introspection finds them all (so the test below checks every one)."""
    assert {
        "DATABASE_CONNECT_TIMEOUT",
        "DATABASE_COMMAND_TIMEOUT",
        "DATABASE_STATEMENT_TIMEOUT",
        "DATABASE_LOCK_TIMEOUT",
        "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT",
        "DATABASE_POOL_TIMEOUT",
        "DATABASE_POOL_RECYCLE",
        "DATABASE_SLOW_QUERY_THRESHOLD",
        "DATABASE_REPLICA_MAX_LAG",
        "DATABASE_REPLICA_MAX_WAIT",
        "MIGRATIONS_LOCK_TIMEOUT",
    } <= set(_float_settings())


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity", "NaN"])
@pytest.mark.parametrize("name", _float_settings())
def test_a_non_finite_number_is_refused_when_the_config_is_built(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`DATABASE_STATEMENT_TIMEOUT=inf` used to pass and crash later (`OverflowError` at the first BEGIN)."""
    monkeypatch.setenv(name, value)
    fixed = (
        {"DATABASE_POOL_TYPE": "FIXED_PROCESS"} if name in ("DATABASE_POOL_TIMEOUT", "DATABASE_POOL_RECYCLE") else {}
    )
    with pytest.raises(DatabaseConfigError) as caught:
        DatabaseConfig(POSTGRES_HOST="h", POSTGRES_DB="d", **fixed)
    shown = float(value)
    assert (
        f"{name} (from the environment variable {name}) is {shown}; use a finite number of seconds, or leave it "
        "unset for the default." in str(caught.value)
    )
    assert str(caught.value).count(name) == 2, "one problem for the setting, not one per check"


@pytest.mark.parametrize(
    "name", ["DATABASE_STATEMENT_TIMEOUT", "DATABASE_LOCK_TIMEOUT", "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT"]
)
def test_a_server_timeout_beyond_postgresqls_range_is_refused(name: str) -> None:
    assert DatabaseConfig(POSTGRES_HOST="h", POSTGRES_DB="d", **{name: 2147483.647})
    text = _error_text(POSTGRES_HOST="h", POSTGRES_DB="d", **{name: 1e12})
    assert f"{name} is 1e+12; PostgreSQL takes at most 2.14748e+06 seconds (2147483647 ms, about 24.8 days)." in text


def test_pool_recycle_must_be_positive() -> None:
    text = _error_text(POSTGRES_HOST="h", POSTGRES_DB="d", DATABASE_POOL_TYPE="FIXED_PROCESS", DATABASE_POOL_RECYCLE=-1)
    assert "DATABASE_POOL_RECYCLE is -1.0; use a number of seconds greater than 0, or leave it unset." in text


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"POSTGRES_HOST": "h", "POSTGRES_DB": "d", "POSTGRES_PASSWORD": "pw\x00secret"},
            "POSTGRES_PASSWORD (passed to DatabaseConfig()) holds a NUL",
        ),
        (
            {"POSTGRES_HOST": "h", "POSTGRES_DB": "d", "POSTGRES_USER": "u\udcff"},
            "POSTGRES_USER (passed to DatabaseConfig()) holds bytes that are not",
        ),
        (
            {"SQLALCHEMY_DATABASE_URI": "postgresql://u:pw%00secret@h/d"},
            "SQLALCHEMY_DATABASE_URI's password holds a NUL",
        ),
        ({"SQLALCHEMY_DATABASE_URI": "postgresql://u%00x:p@h/d"}, "SQLALCHEMY_DATABASE_URI's user holds a NUL"),
        (
            {"POSTGRES_HOST": "h", "POSTGRES_DB": "d", "DATABASE_REPLICA_URLS": "postgresql://u:pw%00secret@r/d"},
            "DATABASE_REPLICA_URLS's password holds a NUL",
        ),
    ],
)
def test_text_no_server_can_be_sent_is_refused_without_showing_it(values: dict[str, Any], expected: str) -> None:
    text = _error_text(**values)
    assert expected in text and "(the value is not shown)" in text
    assert "secret" not in text
