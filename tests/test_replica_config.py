"""The replica settings: how they are read, normalised, checked, and kept secret."""

import re
from pathlib import Path
from typing import Any

import pytest
from mountaineer import ConfigBase
from sqlalchemy.engine import make_url

from mountaineer_db import DatabaseConfig, DatabaseConfigError, ReadRouting
from mountaineer_db.testing.databases import kit_connection_settings

SECRET = "s3cr@t:/%# pw"
PRIMARY = "postgresql://app:s3cr%40t%3A%2F%25%23%20pw@primary.internal:5432/appdb"


class EnvFileConfig(DatabaseConfig, ConfigBase):
    PACKAGE: str | None = "myapp"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "POSTGRES_HOST",
        "POSTGRES_DB",
        "DATABASE_URL",
        "SQLALCHEMY_DATABASE_URI",
        "DATABASE_REPLICA_URLS",
        "DATABASE_READ_ROUTING",
        "DATABASE_REPLICA_MAX_LAG",
        "DATABASE_REPLICA_MAX_WAIT",
        "DATABASE_READ_YOUR_WRITES_KEYS",
        "DATABASE_READ_YOUR_WRITES_SECRET",
        "ENVIRONMENT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


def test_defaults_route_nothing() -> None:
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY)
    assert config.DATABASE_REPLICA_URLS == []
    assert config.DATABASE_READ_ROUTING is ReadRouting.PRIMARY
    assert config.DATABASE_REPLICA_MAX_LAG == 5.0
    assert config.DATABASE_REPLICA_MAX_WAIT == 0.2
    assert config.DATABASE_READ_YOUR_WRITES_KEYS is None


@pytest.mark.parametrize(
    "value",
    [
        "postgres://r1.internal:5433, postgresql+asyncpg://reader:pw@r2.internal/otherdb",
        '["postgres://r1.internal:5433", "postgresql+asyncpg://reader:pw@r2.internal/otherdb"]',
    ],
    ids=["comma_separated", "json_list"],
)
def test_replica_urls_from_the_environment_are_normalised_and_inherit_the_primarys_credentials(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("DATABASE_REPLICA_URLS", value)
    monkeypatch.setenv("DATABASE_READ_ROUTING", "Renders")
    config = DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY)
    first, second = config.DATABASE_REPLICA_URLS
    assert (first.drivername, first.host, first.port) == ("postgresql+asyncpg", "r1.internal", 5433)
    assert first.database == "appdb", "no database given: the primary's"
    assert (first.username, first.password) == ("app", SECRET), "no user given: the primary's credentials"
    assert (second.username, second.password, second.database) == ("reader", "pw", "otherdb"), "given: kept"
    assert config.DATABASE_READ_ROUTING is ReadRouting.RENDERS


def test_replica_urls_from_a_dotenv_file_and_from_parts(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "POSTGRES_HOST=primary.internal\nPOSTGRES_DB=appdb\nPOSTGRES_USER=app\n"
        f"POSTGRES_PASSWORD={SECRET}\nDATABASE_REPLICA_URLS=postgresql://r1.internal\n"
    )
    config = EnvFileConfig()
    (replica,) = config.DATABASE_REPLICA_URLS
    assert (replica.host, replica.username, replica.database) == ("r1.internal", "app", "appdb")
    assert replica.password == SECRET


def test_replica_passwords_are_masked_everywhere() -> None:
    config = DatabaseConfig(
        SQLALCHEMY_DATABASE_URI=PRIMARY,
        DATABASE_REPLICA_URLS=["postgresql://r1.internal/appdb", "postgresql://other:0wn-pw@r2.internal/appdb"],
        DATABASE_READ_YOUR_WRITES_KEYS="cookie-key-material",
    )
    shown = repr(config) + str(config) + config.model_dump_json() + str(config.model_dump())
    shown += str(config.DATABASE_REPLICA_URLS) + repr(config.DATABASE_REPLICA_URLS)
    for secret in (SECRET, "s3cr%40t", "0wn-pw", "cookie-key-material"):
        assert secret not in shown
    assert "postgresql+asyncpg://other:***@r2.internal/appdb" in config.model_dump_json()


def _error(**values: Any) -> str:
    with pytest.raises(DatabaseConfigError) as caught:
        DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY, **values)
    text = str(caught.value)
    assert SECRET not in text and "s3cr%40t" not in text
    return text


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"DATABASE_REPLICA_URLS": ["postgresql://primary.internal:5432/appdb"]},
            "DATABASE_REPLICA_URLS[0] names the primary itself (primary.internal:5432/appdb). List streaming "
            "replicas only; the primary is always used for writes.",
        ),
        (
            {"DATABASE_REPLICA_URLS": "postgresql://r1/appdb,mysql://r2/appdb"},
            "uses the scheme 'mysql'; mountaineer_db needs a PostgreSQL URL",
        ),
        (
            {"DATABASE_REPLICA_URLS": '["postgresql://r1/appdb",'},
            "is not a JSON list of URLs; write it as a comma-separated list (postgresql://HOST1/DB,"
            "postgresql://HOST2/DB) or as a JSON list of strings",
        ),
        (
            {"DATABASE_REPLICA_MAX_LAG": 0},
            "DATABASE_REPLICA_MAX_LAG is 0.0; use a number of seconds greater than 0 (default 5).",
        ),
        (
            {"DATABASE_REPLICA_MAX_WAIT": -1},
            "DATABASE_REPLICA_MAX_WAIT is -1.0; use 0 (never wait) or more seconds (default 0.2).",
        ),
        ({"DATABASE_READ_ROUTING": "everything"}, "DATABASE_READ_ROUTING"),
    ],
    ids=["primary_listed", "bad_scheme", "bad_json", "max_lag", "max_wait", "routing"],
)
def test_bad_replica_settings_are_refused_naming_the_setting(values: dict[str, Any], expected: str) -> None:
    assert expected in _error(**values)


def test_the_index_of_a_bad_replica_url_is_named() -> None:
    text = _error(DATABASE_REPLICA_URLS=["postgresql://r1/appdb", "postgresql://r2/appdb?bogus=1"])
    assert "DATABASE_REPLICA_URLS.1" in text and "unsupported query parameters ['bogus']" in text


def test_the_test_kit_never_reaches_a_developers_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_REPLICA_URLS", "postgresql://developer-replica.internal/appdb")
    assert DatabaseConfig(SQLALCHEMY_DATABASE_URI=PRIMARY).DATABASE_REPLICA_URLS != []
    kit = DatabaseConfig(**kit_connection_settings(make_url("postgresql://kit:pw@127.0.0.1:5999/kitdb")))
    assert kit.DATABASE_REPLICA_URLS == []


def test_the_replica_docs_name_only_real_settings() -> None:
    docs = (Path(__file__).parent.parent / "docs" / "replicas.md").read_text()
    named = set(re.findall(r"`((?:DATABASE|MIGRATIONS)_[A-Z_]+)`", docs))
    assert {"DATABASE_REPLICA_URLS", "DATABASE_READ_ROUTING", "DATABASE_REPLICA_MAX_LAG"} <= named
    assert named <= set(DatabaseConfig.model_fields) | {"DATABASE_URL"}
